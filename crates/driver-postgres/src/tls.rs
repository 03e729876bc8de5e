//! TLS of every PostgreSQL connection the kernel opens: the pool, the LISTEN connection,
//! migrations and `kernelctl migrate` all get their connector from [`PgTls`], so they honour
//! the same `sslmode`, `sslrootcert` and settings.
//!
//! libpq's `sslmode` and `sslrootcert` are read from the URL here (tokio-postgres knows only
//! `disable` / `prefer` / `require` and no root certificate) and removed before tokio-postgres
//! parses the rest. The modes:
//!
//! | `sslmode` | TLS | certificate chain | host name |
//! |---|---|---|---|
//! | `disable` (or absent, without `tls_ca_file`) | never | - | - |
//! | `prefer` | if the server offers it, else plain | checked | checked |
//! | `require`, `verify-full` (or absent, with `tls_ca_file`) | always | checked | checked |
//! | `verify-ca` | always | checked | not checked |
//!
//! Unlike libpq, `prefer` and `require` verify the certificate: a URL that asks for TLS gets
//! `verify-full` unless it says `verify-ca`, because an unverified TLS connection is open to
//! anyone in the path and gives a false sense of safety. A certificate failure never falls
//! back to plain text, even under `prefer` (only a server that offers no TLS does).
//!
//! rustls runs with the ring provider, handed to every `ClientConfig` explicitly, so no
//! process-level `CryptoProvider` must be installed by the application.

use std::error::Error as StdError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kernel_core::{Error, Result};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::PostgresConfig;
use crate::error::BACKEND;

/// How strictly a connection uses TLS (libpq's `sslmode`; see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plain text only.
    Disable,
    /// TLS when the server offers it (verified like `VerifyFull`), plain text otherwise.
    Prefer,
    /// TLS always; the chain is checked, the host name is not.
    VerifyCa,
    /// TLS always; the chain and the host name are checked (`require` means this too).
    VerifyFull,
}

impl SslMode {
    /// Whether TLS is attempted at all.
    pub fn uses_tls(self) -> bool {
        self != SslMode::Disable
    }
}

/// The TLS connector of one driver (or one `kernelctl` run), built from a [`PostgresConfig`].
/// Cheap to clone: the rustls configuration is shared.
#[derive(Clone)]
pub struct PgTls {
    mode: SslMode,
    connector: MakeRustlsConnect,
}

impl fmt::Debug for PgTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTls").field("mode", &self.mode).finish()
    }
}

impl PgTls {
    /// The mode in force.
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// The connector to hand to `tokio_postgres::Config::connect` or deadpool's `Manager`.
    pub fn connector(&self) -> MakeRustlsConnect {
        self.connector.clone()
    }
}

/// The URL's TLS parameters, taken out of it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct UrlTls {
    pub(crate) sslmode: Option<String>,
    pub(crate) sslrootcert: Option<String>,
}

/// Splits `sslmode` and `sslrootcert` off a connection string (URL or key=value form); returns
/// the rest, for tokio-postgres to parse, and the two values.
pub(crate) fn split_url(url: &str) -> (String, UrlTls) {
    let mut tls = UrlTls::default();
    let trimmed = url.trim();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        let Some((base, query)) = trimmed.split_once('?') else {
            return (trimmed.to_owned(), tls);
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "sslmode" => tls.sslmode = Some(percent_decode(value)),
                "sslrootcert" => tls.sslrootcert = Some(percent_decode(value)),
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        (rest, tls)
    } else {
        // key=value form: tokens separated by spaces, values possibly single-quoted.
        let mut kept = Vec::new();
        for token in kv_tokens(trimmed) {
            let (key, value) = token.split_once('=').unwrap_or((&token, ""));
            let unquoted = value
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .map(|v| v.replace("\\'", "'").replace("\\\\", "\\"))
                .unwrap_or_else(|| value.to_owned());
            match key.trim() {
                "sslmode" => tls.sslmode = Some(unquoted),
                "sslrootcert" => tls.sslrootcert = Some(unquoted),
                _ => kept.push(token.clone()),
            }
        }
        (kept.join(" "), tls)
    }
}

/// Splits a key=value connection string into `key=value` tokens, keeping quoted values whole
/// (and `key = value` with spaces around `=` as one token).
fn kv_tokens(s: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut chars = s.chars().peekable();
    let mut in_quote = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' if in_quote => {
                current.push(c);
                if let Some(n) = chars.next() {
                    current.push(n);
                }
            }
            '\'' => {
                in_quote = !in_quote;
                current.push(c);
            }
            c if c.is_whitespace() && !in_quote => {
                // `key = value`: glue the pieces around a lone `=`.
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                let next_is_eq = chars.peek() == Some(&'=');
                if current.ends_with('=') || next_is_eq || current.is_empty() {
                    continue;
                }
                tokens.push(std::mem::take(&mut current));
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    tokens
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads the TLS settings of `config` (with the URL's `sslmode` / `sslrootcert` already split
/// off into `url_tls`), applies the mode to `pg` and builds the connector.
pub(crate) fn configure(
    config: &PostgresConfig,
    url_tls: &UrlTls,
    pg: &mut tokio_postgres::Config,
) -> Result<PgTls> {
    let mode = match url_tls.sslmode.as_deref() {
        None if config.tls_ca_file.is_some() => SslMode::VerifyFull,
        None => SslMode::Disable,
        Some("disable") => SslMode::Disable,
        Some("prefer") => SslMode::Prefer,
        Some("require") | Some("verify-full") => SslMode::VerifyFull,
        Some("verify-ca") => SslMode::VerifyCa,
        Some("allow") => {
            return Err(tls_config_error(
                "postgres.url",
                "sslmode=allow (TLS only if the server insists) is not supported: use prefer, \
                 require, verify-ca or verify-full"
                    .to_owned(),
            ));
        }
        Some(other) => {
            return Err(tls_config_error(
                "postgres.url",
                format!(
                    "unknown sslmode `{other}` in the connection string: use disable, prefer, \
                     require, verify-ca or verify-full"
                ),
            ));
        }
    };
    if mode == SslMode::Disable && (config.tls_ca_file.is_some() || url_tls.sslrootcert.is_some()) {
        return Err(tls_config_error(
            "postgres.tls_ca_file",
            "a CA file is set (postgres.tls_ca_file or sslrootcert) but the connection string \
             says sslmode=disable: remove one of them"
                .to_owned(),
        ));
    }
    pg.ssl_mode(match mode {
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
    });
    let client = if mode.uses_tls() {
        // The URL's sslrootcert names the CA for this connection; it wins over the setting.
        let ca = match (&url_tls.sslrootcert, &config.tls_ca_file) {
            (Some(path), _) if path == "system" => None,
            (Some(path), _) => Some((PathBuf::from(path), "sslrootcert in postgres.url")),
            (None, Some(path)) => Some((path.clone(), "postgres.tls_ca_file")),
            (None, None) => None,
        };
        let system = config.tls_system_roots || url_tls.sslrootcert.as_deref() == Some("system");
        let roots = root_store(
            ca.as_ref().map(|(p, s)| (p.as_path(), *s)),
            system,
            "postgres.tls_system_roots",
        )?;
        client_config(roots, mode == SslMode::VerifyCa)?
    } else {
        // Never used for a handshake (tokio-postgres skips TLS under Disable), but the pool's
        // type is one connector whatever the mode.
        client_config(RootCertStore::empty(), false)?
    };
    Ok(PgTls {
        mode,
        connector: MakeRustlsConnect::new(client),
    })
}

/// The trust roots: the CA file's certificates and / or the system's.
pub(crate) fn root_store(
    ca: Option<(&Path, &str)>,
    system: bool,
    system_setting: &str,
) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    if let Some((path, setting)) = ca {
        let pem = std::fs::read(path).map_err(|e| {
            tls_config_error(
                setting,
                format!("cannot read the CA file {}: {e}", path.display()),
            )
        })?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| {
                tls_config_error(
                    setting,
                    format!("the CA file {} is not valid PEM: {e}", path.display()),
                )
            })?;
        if certs.is_empty() {
            return Err(tls_config_error(
                setting,
                format!(
                    "the CA file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                    path.display()
                ),
            ));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| {
                tls_config_error(
                    setting,
                    format!(
                        "the CA file {} holds a certificate rustls cannot use: {e}",
                        path.display()
                    ),
                )
            })?;
        }
    }
    if system {
        let found = rustls_native_certs::load_native_certs();
        let (added, _ignored) = roots.add_parsable_certificates(found.certs);
        if added == 0 && roots.is_empty() {
            return Err(tls_config_error(
                system_setting,
                "no trusted CA certificate could be loaded from the system store; set a CA file"
                    .to_owned(),
            ));
        }
    }
    if roots.is_empty() {
        return Err(tls_config_error(
            system_setting,
            "TLS is asked for but no CA is trusted: set a CA file or turn the system roots on"
                .to_owned(),
        ));
    }
    Ok(roots)
}

/// A rustls client configuration on the ring provider (no process default needed); with
/// `skip_name`, the chain is still verified but the host name is not (`verify-ca`).
pub(crate) fn client_config(roots: RootCertStore, skip_name: bool) -> Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| {
            Error::internal(format!("rustls refused its default protocol versions: {e}"))
        })?;
    let config = if skip_name {
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| tls_config_error("postgres.tls_ca_file", format!("{e}")))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
            .with_no_client_auth()
    } else {
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(config)
}

/// `verify-ca`: webpki checks the chain before the name, so a name error means the chain was
/// good; only that error is forgiven.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn tls_config_error(setting: &str, message: String) -> Error {
    Error::config(setting, message).with_context("backend", BACKEND)
}

/// What went wrong in a TLS handshake, if the error chain shows one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFailure {
    /// The certificate chain ends at no trusted CA.
    UnknownCa,
    /// The certificate is not valid for the host connected to.
    NameMismatch,
    /// The certificate is otherwise invalid (expired, not yet valid, revoked, bad signature).
    BadCertificate,
    /// The server answered without TLS (`sslmode=require` and stricter against a plain server).
    NotOffered,
    /// Any other TLS failure.
    Other,
}

/// Finds the TLS failure in an error chain (rustls errors travel inside `io::Error`s, whose
/// `source()` skips them, hence the `get_ref` walk).
pub fn classify(err: &(dyn StdError + 'static)) -> Option<TlsFailure> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(classify_rustls(r));
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(r) = inner.downcast_ref::<rustls::Error>() {
                    return Some(classify_rustls(r));
                }
            }
        }
        let text = e.to_string();
        if text.contains("server does not support TLS") {
            return Some(TlsFailure::NotOffered);
        }
        current = e.source();
    }
    None
}

fn classify_rustls(e: &rustls::Error) -> TlsFailure {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => TlsFailure::UnknownCa,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                TlsFailure::NameMismatch
            }
            _ => TlsFailure::BadCertificate,
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            // Bytes that are no TLS record: something else answers on that port.
            TlsFailure::NotOffered
        }
        _ => TlsFailure::Other,
    }
}

/// Turns a failed connect into the error to report: a TLS failure is `Config` (a certificate
/// or setting problem a retry will not fix) saying which case, naming the host; anything else
/// is `None` (the caller maps it as before). The message holds no secret: only the host and
/// the setting names.
pub fn connect_error(err: &(dyn StdError + 'static), host: &str) -> Option<Error> {
    let failure = classify(err)?;
    let message = match failure {
        TlsFailure::UnknownCa => format!(
            "TLS to postgres at {host} failed: the server's certificate is not trusted (signed by \
             an unknown CA); set postgres.tls_ca_file or sslrootcert to the CA that signed it"
        ),
        TlsFailure::NameMismatch => format!(
            "TLS to postgres at {host} failed: the server's certificate is not valid for the \
             name `{host}` (host name mismatch); connect with a name the certificate lists, or \
             use sslmode=verify-ca to check the chain only"
        ),
        TlsFailure::BadCertificate => format!(
            "TLS to postgres at {host} failed: the server's certificate is invalid ({})",
            first_tls_detail(err)
        ),
        TlsFailure::NotOffered => format!(
            "postgres at {host} does not offer TLS but the connection string requires it \
             (sslmode); turn ssl on in the server or use sslmode=prefer / disable"
        ),
        TlsFailure::Other => format!(
            "TLS to postgres at {host} failed: {}",
            first_tls_detail(err)
        ),
    };
    Some(
        Error::config("postgres.url", message)
            .with_context("backend", BACKEND)
            .with_context("tls", format!("{failure:?}")),
    )
}

fn first_tls_detail(err: &(dyn StdError + 'static)) -> String {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    let mut last = err.to_string();
    while let Some(e) = current {
        last = e.to_string();
        current = e.source();
    }
    last
}

/// The first host of a tokio-postgres configuration, for messages.
pub(crate) fn host_of(pg: &tokio_postgres::Config) -> String {
    match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "?".to_owned(),
    }
}

/// Opens one connection outside the pool, with the URL's own session settings (no statement
/// timeout added: migrations may run long) and the configured TLS; `kernelctl migrate` uses it.
/// The connection runs on a spawned task, which ends when the client is dropped.
pub async fn connect_single(
    config: &PostgresConfig,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> {
    let redacted = config.redacted_url();
    let (rest, url_tls) = split_url(&config.url);
    let mut pg: tokio_postgres::Config = rest.parse().map_err(|e: tokio_postgres::Error| {
        Error::config(
            "postgres.url",
            format!("not a valid connection string ({redacted}): {e}"),
        )
        .with_context("backend", BACKEND)
    })?;
    if pg.get_user().is_none() {
        if let Ok(user) = std::env::var("USER") {
            pg.user(user);
        }
    }
    pg.connect_timeout(config.connect_timeout);
    let tls = configure(config, &url_tls, &mut pg)?;
    let (client, connection) = pg.connect(tls.connector()).await.map_err(|e| {
        connect_error(&e, &host_of(&pg)).unwrap_or_else(|| {
            Error::unavailable(format!("cannot connect to {redacted}: {e}"))
                .with_context("backend", BACKEND)
        })
    })?;
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended with an error");
        }
    });
    Ok((client, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_tls_parameters_are_split_off() {
        let (rest, tls) = split_url(
            "postgres://u:p@h:5432/db?sslmode=verify-full&application_name=x&sslrootcert=%2Ftmp%2Fca.pem",
        );
        assert_eq!(rest, "postgres://u:p@h:5432/db?application_name=x");
        assert_eq!(tls.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(tls.sslrootcert.as_deref(), Some("/tmp/ca.pem"));
        let (rest, tls) = split_url("postgres://h/db?sslmode=require");
        assert_eq!(rest, "postgres://h/db");
        assert_eq!(tls.sslmode.as_deref(), Some("require"));
        let (rest, tls) =
            split_url("host=h dbname=db sslmode = verify-ca sslrootcert='/a b/ca.pem' user=u");
        assert_eq!(rest, "host=h dbname=db user=u");
        assert_eq!(tls.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(tls.sslrootcert.as_deref(), Some("/a b/ca.pem"));
    }

    fn mode_of(url: &str, ca: Option<&str>) -> Result<SslMode> {
        let config = PostgresConfig {
            tls_ca_file: ca.map(PathBuf::from),
            tls_system_roots: true,
            ..PostgresConfig::new(url)
        };
        let (rest, url_tls) = split_url(url);
        let mut pg: tokio_postgres::Config = rest.parse().unwrap();
        configure(&config, &url_tls, &mut pg).map(|t| t.mode())
    }

    #[test]
    fn modes_default_to_verify_full_when_tls_is_asked() {
        assert_eq!(mode_of("postgres://h/db", None).unwrap(), SslMode::Disable);
        assert_eq!(
            mode_of("postgres://h/db?sslmode=require", None).unwrap(),
            SslMode::VerifyFull
        );
        assert_eq!(
            mode_of("postgres://h/db?sslmode=verify-ca", None).unwrap(),
            SslMode::VerifyCa
        );
        assert_eq!(
            mode_of("postgres://h/db?sslmode=prefer", None).unwrap(),
            SslMode::Prefer
        );
        let err = mode_of("postgres://h/db?sslmode=sometimes", None).unwrap_err();
        assert_eq!(err.code(), kernel_core::ErrorCode::Config);
        let err = mode_of(
            "postgres://h/db?sslmode=require",
            Some("/nonexistent/ca.pem"),
        )
        .unwrap_err();
        assert_eq!(err.context_value("setting"), Some("postgres.tls_ca_file"));
        assert!(err.to_string().contains("cannot read the CA file"), "{err}");
        let err = mode_of("postgres://h/db?sslmode=disable&sslrootcert=/x.pem", None).unwrap_err();
        assert_eq!(err.code(), kernel_core::ErrorCode::Config);
    }

    #[test]
    fn a_ca_file_that_is_not_pem_is_refused() {
        let dir = std::env::temp_dir().join(format!("kernel-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("not.pem");
        std::fs::write(&path, "hello").unwrap();
        let err = mode_of(
            "postgres://h/db?sslmode=verify-full",
            Some(path.to_str().unwrap()),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
