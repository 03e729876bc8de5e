//! `kv` and `ns`: documents and namespaces, JSON in and out.

use std::io::Write as _;

use kernel_core::{
    DeleteCondition, Error, Filter, ListOptions, Metadata, OperationId, PutOptions, Query, Result,
    StorageDriver, Value, Write,
};
use tokio::io::AsyncReadExt;

use crate::cli::{KvCommand, NsCommand, PutFlags};
use crate::ndjson::{EntryLine, time_text};
use crate::{Outcome, print_json};

pub(crate) async fn kv(store: &dyn StorageDriver, command: KvCommand) -> Result<Outcome> {
    match command {
        KvCommand::Get { namespace, key } => match store.get(&namespace, &key).await? {
            Some(entry) => {
                print_json(&EntryLine::from(&entry))?;
                Ok(Outcome::Done)
            }
            None => {
                eprintln!("no live entry at key {key:?} in namespace {namespace:?}");
                Ok(Outcome::Failed)
            }
        },
        KvCommand::Put {
            namespace,
            key,
            value,
            write,
        } => {
            let value = match value.as_deref() {
                None | Some("-") => read_stdin_json("the value").await?,
                Some(text) => parse_json(text, "the value")?,
            };
            let (options, id) = put_options(write)?;
            let entry = match id {
                Some(id) => {
                    let applied = store
                        .write_once(&namespace, &id, Write::put(&key, value, options))
                        .await?;
                    if applied.replayed {
                        eprintln!("operation {id} was already applied; printing its first outcome");
                    }
                    applied.outcome.into_entry()?
                }
                None => store.put(&namespace, &key, value, options).await?,
            };
            print_json(&EntryLine::from(&entry))?;
            Ok(Outcome::Done)
        }
        KvCommand::Delete {
            namespace,
            key,
            if_version,
            operation_id,
        } => {
            let condition = match if_version {
                Some(v) => DeleteCondition::IfVersion(v),
                None => DeleteCondition::Always,
            };
            let deleted = match operation_id {
                Some(id) => {
                    let id = OperationId::new(id)?;
                    store
                        .write_once(&namespace, &id, Write::delete(&key, condition))
                        .await?
                        .outcome
                        .into_deleted()?
                }
                None => store.delete(&namespace, &key, condition).await?,
            };
            print_json(&serde_json::json!({ "deleted": deleted }))?;
            Ok(Outcome::Done)
        }
        KvCommand::List {
            namespace,
            prefix,
            pattern,
            after,
            limit,
            all,
            keys_only,
        } => {
            if limit == 0 {
                return Err(Error::invalid_input("--limit must be at least 1"));
            }
            let mut cursor = after;
            loop {
                let mut options = ListOptions::new().limit(limit);
                if let Some(p) = &prefix {
                    options = options.prefix(p.clone());
                }
                if let Some(p) = &pattern {
                    options = options.pattern(p.clone());
                }
                if let Some(c) = &cursor {
                    options = options.after(c.clone());
                }
                let page = store.list(&namespace, &options).await?;
                let mut out = std::io::stdout().lock();
                for entry in &page.entries {
                    if keys_only {
                        writeln!(out, "{}", entry.key).map_err(stdout_error)?;
                    } else {
                        let line = serde_json::to_string(&EntryLine::from(entry)).map_err(|e| {
                            Error::internal("cannot encode an entry").with_source(e)
                        })?;
                        writeln!(out, "{line}").map_err(stdout_error)?;
                    }
                }
                drop(out);
                match page.next_cursor {
                    Some(next) if all => cursor = Some(next),
                    Some(next) => {
                        eprintln!("more entries follow: add --after {}", shell_word(&next));
                        break;
                    }
                    None => break,
                }
            }
            Ok(Outcome::Done)
        }
        KvCommand::Query {
            namespace,
            filter,
            query,
        } => {
            let query = match (filter, query) {
                (Some(f), _) => Query::new().filter(parse_filter(&f)?),
                (None, Some(q)) => serde_json::from_str::<Query>(&q)
                    .map_err(|e| Error::invalid_input(format!("--query is not a query: {e}")))?,
                (None, None) => Query::new(),
            };
            for entry in store.query(&namespace, &query).await? {
                print_json(&EntryLine::from(&entry))?;
            }
            Ok(Outcome::Done)
        }
        KvCommand::Count { namespace, filter } => {
            let filter = filter.as_deref().map(parse_filter).transpose()?;
            let n = store.count(&namespace, filter.as_ref()).await?;
            print_json(&serde_json::json!({ "count": n }))?;
            Ok(Outcome::Done)
        }
    }
}

pub(crate) async fn ns(store: &dyn StorageDriver, command: NsCommand) -> Result<Outcome> {
    match command {
        NsCommand::List => {
            for info in store.list_namespaces().await? {
                print_json(&serde_json::json!({
                    "name": info.name,
                    "metadata": info.metadata,
                    "created_at": time_text(info.created_at),
                }))?;
            }
        }
        NsCommand::Create {
            namespace,
            metadata,
        } => {
            let metadata = match metadata {
                Some(m) => parse_object(&m, "--metadata")?,
                None => Metadata::new(),
            };
            let info = store.create_namespace(&namespace, metadata).await?;
            print_json(&serde_json::json!({
                "name": info.name,
                "metadata": info.metadata,
                "created_at": time_text(info.created_at),
            }))?;
        }
        NsCommand::Drop {
            namespace,
            recursive,
        } => {
            let dropped = store.drop_namespace(&namespace, recursive).await?;
            print_json(&serde_json::json!({ "dropped": dropped }))?;
        }
    }
    Ok(Outcome::Done)
}

fn put_options(flags: PutFlags) -> Result<(PutOptions, Option<OperationId>)> {
    let mut options = PutOptions::new();
    if flags.if_absent {
        options = options.if_absent();
    }
    if let Some(v) = flags.if_version {
        options = options.if_version(v);
    }
    if let Some(ttl) = flags.ttl {
        options = options.ttl(ttl);
    }
    if let Some(m) = flags.metadata {
        options = options.metadata(parse_object(&m, "--metadata")?);
    }
    let id = flags.operation_id.map(OperationId::new).transpose()?;
    Ok((options, id))
}

fn parse_json(text: &str, what: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| Error::invalid_input(format!("{what} is not JSON: {e}")))
}

fn parse_object(text: &str, what: &str) -> Result<Metadata> {
    match parse_json(text, what)? {
        Value::Object(m) => Ok(m),
        other => Err(Error::invalid_input(format!(
            "{what} must be a JSON object, got {other}"
        ))),
    }
}

fn parse_filter(text: &str) -> Result<Filter> {
    serde_json::from_str(text).map_err(|e| {
        Error::invalid_input(format!(
            "--filter is not a filter ({e}); e.g. {{\"field\": {{\"path\": \"age\", \"op\": \
             \"gte\", \"value\": 18}}}}, {{\"and\": [...]}}, {{\"not\": ...}}"
        ))
    })
}

async fn read_stdin_json(what: &str) -> Result<Value> {
    let mut text = String::new();
    tokio::io::stdin()
        .read_to_string(&mut text)
        .await
        .map_err(|e| {
            Error::invalid_input(format!("cannot read {what} from stdin")).with_source(e)
        })?;
    parse_json(&text, what)
}

fn stdout_error(e: std::io::Error) -> Error {
    Error::internal("cannot write to stdout").with_source(e)
}

/// `s` quoted for a shell when it needs it.
fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/@".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}
