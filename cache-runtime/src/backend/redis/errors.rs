//! Turning driver errors into [`CacheError`]s that say what to do.
//!
//! By the driver's kind and code wherever it gives one (`ErrorKind`, server error codes,
//! the `io::ErrorKind` of a connection error, the `rustls::Error` of a failed handshake);
//! the error text is only read for TLS failures whose cause the driver does not expose.
//! Never includes the password: the driver's messages do not carry it, and we add only
//! host and port.

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::error::CacheError;

/// What a classification needs to know about the connection.
#[derive(Clone)]
pub(crate) struct Classifier {
    endpoint: Arc<str>,
    host: Arc<str>,
    port: u16,
    tls: bool,
    socket_timeout: Duration,
}

impl Classifier {
    pub(crate) fn new(
        host: &str,
        port: u16,
        endpoint: String,
        tls: bool,
        socket_timeout: Duration,
    ) -> Self {
        Self {
            endpoint: endpoint.into(),
            host: host.into(),
            port,
            tls,
            socket_timeout,
        }
    }

    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The server error codes of an error (every reply's, for a pipeline).
    fn codes(e: &RedisError) -> Vec<String> {
        let mut codes: Vec<String> = e
            .clone()
            .into_server_errors()
            .map(|errs| errs.iter().map(|(_, se)| se.code().to_owned()).collect())
            .unwrap_or_default();
        if let Some(code) = e.code() {
            codes.insert(0, code.to_owned());
        }
        codes
    }

    /// Classifies a driver error.
    pub(crate) fn classify(&self, e: &RedisError) -> CacheError {
        let codes = Self::codes(e);
        let has = |code: &str| codes.iter().any(|c| c == code);
        if e.kind() == ErrorKind::AuthenticationFailed || has("WRONGPASS") || has("NOAUTH") {
            return CacheError::Auth {
                detail: e.to_string(),
            };
        }
        if has("NOPERM") || e.kind() == ErrorKind::Server(ServerErrorKind::NoPerm) {
            return CacheError::Auth {
                detail: e.to_string(),
            };
        }
        if has("WRONGTYPE") {
            return CacheError::WrongType;
        }
        if self.tls {
            if let Some(detail) = tls_failure(e, &self.host) {
                return CacheError::Tls {
                    endpoint: self.endpoint.to_string(),
                    detail,
                };
            }
        }
        if e.is_timeout() {
            return CacheError::Timeout(self.socket_timeout);
        }
        if e.is_io_error()
            || e.is_connection_refusal()
            || e.is_connection_dropped()
            || e.kind() == ErrorKind::ClusterConnectionNotFound
        {
            let mut detail = e.to_string();
            // A TLS-only port resets a plaintext client: the classic Redis Cloud mistake.
            if !self.tls && e.is_connection_dropped() && !e.is_connection_refusal() {
                detail.push_str(" (the server closed the connection: if it requires TLS, as Redis Cloud does, use a rediss:// URL)");
            }
            return CacheError::Unreachable {
                endpoint: self.endpoint.to_string(),
                detail,
            };
        }
        CacheError::Server {
            code: codes.into_iter().next().unwrap_or_default(),
            detail: e.to_string(),
        }
    }

    /// A connect that timed out: with TLS on, a server that accepts TCP but never answers
    /// the handshake is most likely plain Redis on this port.
    pub(crate) async fn connect_timed_out(&self, timeout: Duration) -> CacheError {
        if self.tls {
            let probe = tokio::net::TcpStream::connect((&*self.host, self.port));
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), probe).await {
                return CacheError::Tls {
                    endpoint: self.endpoint.to_string(),
                    detail: format!(
                        "TCP connected but the TLS handshake got no answer within {timeout:?}: the port serves plain Redis, not TLS; use a redis:// URL, or the server's TLS port"
                    ),
                };
            }
        }
        CacheError::Unreachable {
            endpoint: self.endpoint.to_string(),
            detail: format!("no connection within REDIS_SOCKET_CONNECT_TIMEOUT ({timeout:?})"),
        }
    }
}

/// The rustls error behind a failed handshake, when the driver kept it.
fn rustls_error(e: &RedisError) -> Option<&rustls::Error> {
    let mut source = e.source();
    while let Some(s) = source {
        let io = s.downcast_ref::<std::io::Error>().or_else(|| {
            s.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>()
                .and_then(|inner| inner.downcast_ref::<std::io::Error>())
        });
        if let Some(tls) = io
            .and_then(std::io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        if let Some(tls) = s.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        source = s.source();
    }
    None
}

/// What went wrong in a TLS handshake, and what to do, or `None` when `e` is not a TLS
/// failure.
fn tls_failure(e: &RedisError, host: &str) -> Option<String> {
    use rustls::{AlertDescription, CertificateError as C, Error as T};
    let advice = |what: &str| Some(format!("{what} ({e})"));
    match rustls_error(e) {
        Some(T::InvalidCertificate(C::UnknownIssuer | C::BadSignature)) => advice(
            "the server's certificate is signed by a CA this client does not trust: point REDIS_SSL_CA_CERTS at the server's CA file (Redis Cloud: redis_ca.pem)",
        ),
        Some(T::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. })) => advice(&format!(
            "the server's certificate is not valid for the host name {host:?}: connect with a name the certificate lists, or set REDIS_SSL_CERT_REQS=optional to check the chain only"
        )),
        Some(T::InvalidCertificate(C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. })) => advice(
            "the server's certificate is expired or not yet valid: renew it, or check this machine's clock",
        ),
        Some(T::AlertReceived(AlertDescription::CertificateRequired | AlertDescription::HandshakeFailure | AlertDescription::BadCertificate)) => advice(
            "the server refused the handshake; if it requires a client certificate (mutual TLS), set REDIS_SSL_CERTFILE and REDIS_SSL_KEYFILE to one its CA signed",
        ),
        Some(T::InvalidMessage(_) | T::InappropriateMessage { .. } | T::InappropriateHandshakeMessage { .. }) => advice(
            "the server did not answer in TLS: the port probably serves plain Redis; use a redis:// URL, or the server's TLS port",
        ),
        Some(other) => advice(&format!("TLS error: {other}")),
        None => {
            // The driver did not keep the cause: read its text.
            let t = e.to_string().to_ascii_lowercase();
            let tls_words = ["certificate", "tls", "ssl", "handshake", "invalid peer"];
            tls_words
                .iter()
                .any(|w| t.contains(w))
                .then(|| format!("TLS error: {e}"))
        }
    }
}
