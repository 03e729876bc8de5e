//! The line formats: an event and an entry as one JSON object each, times in RFC 3339 with
//! nanoseconds (UTC), so a line reads well and round-trips exactly.

use std::time::SystemTime;

use kernel_core::{Entry, Metadata, NewEvent, RecordedEvent, Uuid, Value};
use serde::{Deserialize, Serialize};

/// One event of an export: everything [`RecordedEvent`] holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventLine {
    pub(crate) position: u64,
    pub(crate) stream: String,
    pub(crate) version: u64,
    pub(crate) id: Uuid,
    #[serde(rename = "type")]
    pub(crate) event_type: String,
    pub(crate) payload: Value,
    #[serde(default)]
    pub(crate) metadata: Metadata,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) causation_id: Option<String>,
    #[serde(with = "rfc3339")]
    pub(crate) recorded_at: SystemTime,
}

impl From<RecordedEvent> for EventLine {
    fn from(e: RecordedEvent) -> EventLine {
        EventLine {
            position: e.position,
            stream: e.stream,
            version: e.version,
            id: e.id,
            event_type: e.event_type,
            payload: e.payload,
            metadata: e.metadata,
            correlation_id: e.correlation_id,
            causation_id: e.causation_id,
            recorded_at: e.recorded_at,
        }
    }
}

impl EventLine {
    /// The event to append for this line: same id, content and recording time.
    pub(crate) fn to_new_event(&self) -> NewEvent {
        let mut e = NewEvent::new(self.event_type.clone(), self.payload.clone())
            .with_id(self.id)
            .with_metadata(self.metadata.clone())
            .with_recorded_at(self.recorded_at);
        e.correlation_id = self.correlation_id.clone();
        e.causation_id = self.causation_id.clone();
        e
    }
}

/// One document.
#[derive(Debug, Serialize)]
pub(crate) struct EntryLine<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) key: &'a str,
    pub(crate) value: &'a Value,
    pub(crate) metadata: &'a Metadata,
    pub(crate) version: u64,
    #[serde(with = "rfc3339")]
    pub(crate) created_at: SystemTime,
    #[serde(with = "rfc3339")]
    pub(crate) updated_at: SystemTime,
    #[serde(with = "rfc3339_opt", skip_serializing_if = "Option::is_none")]
    pub(crate) expires_at: Option<SystemTime>,
}

impl<'a> From<&'a Entry> for EntryLine<'a> {
    fn from(e: &'a Entry) -> EntryLine<'a> {
        EntryLine {
            namespace: &e.namespace,
            key: &e.key,
            value: &e.value,
            metadata: &e.metadata,
            version: e.version,
            created_at: e.created_at,
            updated_at: e.updated_at,
            expires_at: e.expires_at,
        }
    }
}

/// A time as RFC 3339 text.
pub(crate) fn time_text(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_nanos(*t))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339(&text).map_err(|e| {
            serde::de::Error::custom(format!("{text:?} is not an RFC 3339 UTC time: {e}"))
        })
    }
}

mod rfc3339_opt {
    use std::time::SystemTime;

    use serde::Serializer;

    pub(crate) fn serialize<S: Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::rfc3339::serialize(t, s),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn an_event_line_round_trips_exactly() {
        let line = EventLine {
            position: 7,
            stream: "order-1".into(),
            version: 2,
            id: Uuid::now_v7(),
            event_type: "Placed".into(),
            payload: serde_json::json!({"n": 1.5, "big": u64::MAX}),
            metadata: Metadata::new(),
            correlation_id: Some("c".into()),
            causation_id: None,
            recorded_at: UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
        };
        let text = serde_json::to_string(&line).unwrap();
        assert!(
            text.contains("\"recorded_at\":\"2023-11-14T22:13:20.123456789Z\""),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<EventLine>(&text).unwrap(), line);
    }

    #[test]
    fn unknown_fields_and_bad_times_are_refused() {
        let e = serde_json::from_str::<EventLine>(r#"{"position": 1, "oops": 2}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}
