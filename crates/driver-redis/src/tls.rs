//! TLS of `rediss://` connections: fred's rustls connector, built here on the ring provider
//! (handed to the `ClientConfig` explicitly, so no process-level `CryptoProvider` is needed)
//! with the roots of [`RedisConfig::tls_ca_file`] and / or the system store. Always
//! `verify-full`: the chain and the host name are checked.

use std::path::Path;
use std::sync::Arc;

use fred::types::config::{TlsConfig, TlsConnector, TlsHostMapping};
use kernel_core::{Error, Result};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{CertificateError, ClientConfig, RootCertStore};

use crate::config::RedisConfig;

/// Whether the URL's scheme asks for TLS (`rediss://`, `valkeys://` and their variants).
pub(crate) fn url_wants_tls(url: &str) -> bool {
    let scheme = url.trim().split("://").next().unwrap_or("");
    scheme.starts_with("rediss") || scheme.starts_with("valkeys")
}

/// The URL with its TLS scheme replaced by the plain one, so fred does not build its own
/// connector (which would read the system store and ignore the settings); ours replaces it.
pub(crate) fn plain_scheme(url: &str) -> String {
    let url = url.trim();
    for (tls, plain) in [("rediss", "redis"), ("valkeys", "valkey")] {
        if let Some(rest) = url.strip_prefix(tls) {
            return format!("{plain}{rest}");
        }
    }
    url.to_owned()
}

/// fred's TLS settings for `config`, or `None` for a clear-text URL. A CA file with a
/// clear-text URL is refused: the setting could not be honoured.
pub(crate) fn fred_tls(config: &RedisConfig) -> Result<Option<TlsConfig>> {
    if !url_wants_tls(&config.url) {
        if config.tls_ca_file.is_some() {
            return Err(Error::config(
                "redis.tls_ca_file",
                "a CA file is set but the Redis URL is clear text (redis://): use rediss:// to \
                 connect with TLS, or remove the CA file",
            ));
        }
        return Ok(None);
    }
    let roots = root_store(config)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format!("rustls refused its default protocol versions: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(TlsConfig {
        connector: TlsConnector::from(client),
        hostnames: TlsHostMapping::None,
    }))
}

fn root_store(config: &RedisConfig) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    if let Some(path) = &config.tls_ca_file {
        add_ca_file(&mut roots, path)?;
    }
    if config.tls_system_roots {
        let found = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(found.certs);
    }
    if roots.is_empty() {
        return Err(Error::config(
            "redis.tls_ca_file",
            "rediss:// asks for TLS but no CA is trusted: set redis.tls_ca_file, or turn \
             redis.tls_system_roots on (the system store had no usable certificate)",
        ));
    }
    Ok(roots)
}

fn add_ca_file(roots: &mut RootCertStore, path: &Path) -> Result<()> {
    let pem = std::fs::read(path).map_err(|e| {
        Error::config(
            "redis.tls_ca_file",
            format!("cannot read the CA file {}: {e}", path.display()),
        )
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| {
            Error::config(
                "redis.tls_ca_file",
                format!("the CA file {} is not valid PEM: {e}", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(Error::config(
            "redis.tls_ca_file",
            format!(
                "the CA file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ),
        ));
    }
    for cert in certs {
        roots.add(cert).map_err(|e| {
            Error::config(
                "redis.tls_ca_file",
                format!(
                    "the CA file {} holds a certificate rustls cannot use: {e}",
                    path.display()
                ),
            )
        })?;
    }
    Ok(())
}

/// Turns fred's text of a failed TLS handshake into the error to report, or `None` when the
/// text shows no TLS failure. fred keeps only the `Debug` text of rustls' error, so the
/// variants are matched by name. `Config`: a retry will not fix a certificate.
pub(crate) fn handshake_error(details: &str, host: &str) -> Option<Error> {
    let why = if details.contains(&format!("{:?}", CertificateError::UnknownIssuer)) {
        "the server's certificate is not trusted (signed by an unknown CA); set \
         redis.tls_ca_file to the CA that signed it"
            .to_owned()
    } else if details.contains("NotValidForName") {
        format!(
            "the server's certificate is not valid for the name `{host}` (host name mismatch); \
             connect with a name the certificate lists"
        )
    } else if details.contains("InvalidCertificate") {
        "the server's certificate is invalid (expired, not yet valid or badly signed)".to_owned()
    } else if details.contains("InvalidContentType")
        || details.contains("InvalidMessage")
        || details.contains("CorruptMessage")
        || details.contains("InappropriateMessage")
    {
        "the server does not offer TLS on that port (it answered in clear text); use redis:// \
         or the server's TLS port"
            .to_owned()
    } else {
        return None;
    };
    Some(
        Error::config("redis.url", format!("TLS to Redis at {host} failed: {why}"))
            .with_context("backend", "redis"),
    )
}

/// Whether the server of a `rediss://` URL answers a clear-text `PING` (`+PONG`, or an error
/// such as `-NOAUTH`): then a failed handshake means it offers no TLS on that port. A plain
/// Redis waits for a line end that a TLS ClientHello never sends, so the handshake itself only
/// times out; this probe, run after a failure only, tells the two apart.
pub(crate) async fn speaks_clear_text(url: &str, timeout: std::time::Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = host_of(url);
    let after_scheme = url.split_once("://").map_or(url, |(_, r)| r);
    let after_auth = after_scheme
        .rsplit_once('@')
        .map_or(after_scheme, |(_, r)| r);
    let end = after_auth.find(['/', '?']).unwrap_or(after_auth.len());
    let port = after_auth[..end]
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .unwrap_or(6379);
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let probe = async move {
        let mut stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut first = [0u8; 1];
        stream.read_exact(&mut first).await?;
        Ok::<bool, std::io::Error>(matches!(first[0], b'+' | b'-'))
    };
    matches!(tokio::time::timeout(timeout, probe).await, Ok(Ok(true)))
}

/// The error for a `rediss://` server that answered in clear text.
pub(crate) fn not_offered(host: &str) -> Error {
    Error::config(
        "redis.url",
        format!(
            "TLS to Redis at {host} failed: the server does not offer TLS on that port (it \
             answers in clear text); use redis:// or the server's TLS port"
        ),
    )
    .with_context("backend", "redis")
}

/// The host of a Redis URL, for messages (never the credentials).
pub(crate) fn host_of(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, r)| r);
    let after_auth = after_scheme
        .rsplit_once('@')
        .map_or(after_scheme, |(_, r)| r);
    let end = after_auth.find(['/', '?']).unwrap_or(after_auth.len());
    let host_port = &after_auth[..end];
    match host_port.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.is_empty() => h.to_owned(),
        _ => host_port.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_and_hosts() {
        assert!(url_wants_tls("rediss://h:6380"));
        assert!(!url_wants_tls("redis://h:6379"));
        assert_eq!(plain_scheme("rediss://u:p@h:1/0"), "redis://u:p@h:1/0");
        assert_eq!(
            host_of("rediss://u:p@cache.example:6380/0"),
            "cache.example"
        );
        assert_eq!(host_of("rediss://127.0.0.1"), "127.0.0.1");
    }

    #[test]
    fn a_ca_file_needs_a_tls_url() {
        let config = RedisConfig {
            tls_ca_file: Some("/x.pem".into()),
            ..RedisConfig::new("redis://127.0.0.1:6379")
        };
        let err = fred_tls(&config).unwrap_err();
        assert_eq!(err.context_value("setting"), Some("redis.tls_ca_file"));
        let config = RedisConfig {
            tls_ca_file: Some("/nonexistent/ca.pem".into()),
            ..RedisConfig::new("rediss://127.0.0.1:6380")
        };
        let err = fred_tls(&config).unwrap_err();
        assert!(err.to_string().contains("cannot read the CA file"), "{err}");
    }
}
