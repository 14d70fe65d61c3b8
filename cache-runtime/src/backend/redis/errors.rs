//! Turning driver errors into [`CacheError`]s that say what to do.
//!
//! By the driver's kind and code wherever it gives one (`ErrorKind`, server error codes,
//! the `io::ErrorKind` of a connection error, the `rustls::Error` of a failed handshake);
//! the error text is only read for TLS failures whose cause the driver does not expose.
//! Never includes the password: the driver's messages do not carry it, and we add only
//! host and port.

use std::error::Error as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::error::{AuthCause, CacheError};

/// How long the check for plain Redis on a TLS port may take (connect, PING, reply).
const PLAIN_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// What a classification needs to know about the connection.
#[derive(Clone)]
pub(crate) struct Classifier {
    endpoint: Arc<str>,
    host: Arc<str>,
    port: u16,
    tls: bool,
    socket_timeout: Duration,
    /// Set when the server refused our credentials. A refusal on a connection that is
    /// open (a proxy after a credential rotation, say) is not an I/O error, so its lane
    /// would stay: the pool replaces its connections when it sees this, so that each
    /// authenticates afresh.
    credentials_refused: Arc<AtomicBool>,
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
            credentials_refused: Arc::new(AtomicBool::new(false)),
        }
    }

    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub(crate) fn tls(&self) -> bool {
        self.tls
    }

    /// Whether the server refused our credentials since the last call (see
    /// `credentials_refused`).
    pub(crate) fn take_credentials_refused(&self) -> bool {
        // A load first: the common case (nothing refused) writes nothing.
        self.credentials_refused.load(Ordering::Relaxed)
            && self.credentials_refused.swap(false, Ordering::AcqRel)
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
        // AuthenticationFailed: AUTH (or HELLO AUTH) refused while connecting;
        // WRONGPASS: "invalid username-password pair or user is disabled"; NOAUTH: no
        // credentials given to a server that needs them.
        if e.kind() == ErrorKind::AuthenticationFailed || has("WRONGPASS") || has("NOAUTH") {
            self.credentials_refused.store(true, Ordering::Release);
            return CacheError::Auth {
                detail: e.to_string(),
                cause: AuthCause::Credentials,
            };
        }
        // An ACL refusing one command or key: the connection and other requests work.
        if has("NOPERM") || e.kind() == ErrorKind::Server(ServerErrorKind::NoPerm) {
            return CacheError::Auth {
                detail: e.to_string(),
                cause: AuthCause::Permission,
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

    /// The error for a TLS port that answered a plain-text `PING` the way plain Redis
    /// does, or `None` when it did not (a TLS server ignores it or answers with an alert;
    /// an unreachable one cannot answer).
    ///
    /// Why a check of our own: plain Redis reads a TLS ClientHello as the start of an
    /// inline command and waits for its end of line, which never comes, so the handshake
    /// only ever times out, and a timeout alone cannot tell a plain port from a slow
    /// network. The reply to a `PING` can: `+PONG`, or an error such as `-NOAUTH` or
    /// `-DENIED`, is plain RESP, which no TLS server sends.
    pub(crate) async fn plain_redis_on_tls_port(&self) -> Option<CacheError> {
        let check = async {
            let mut stream = tokio::net::TcpStream::connect((&*self.host, self.port))
                .await
                .ok()?;
            stream.write_all(b"PING\r\n").await.ok()?;
            let mut reply = [0u8; 128];
            let mut len = 0;
            // Until an end of line, the buffer is full, or the server closes.
            while len < reply.len() {
                let n = stream.read(&mut reply[len..]).await.ok()?;
                if n == 0 {
                    break;
                }
                len += n;
                if reply[..len].windows(2).any(|w| w == b"\r\n") {
                    break;
                }
            }
            Some(is_plain_reply(&reply[..len]))
        };
        let plain = tokio::time::timeout(PLAIN_CHECK_TIMEOUT, check)
            .await
            .ok()
            .flatten()
            .unwrap_or(false);
        plain.then(|| CacheError::Tls {
            endpoint: self.endpoint.to_string(),
            detail: "the port serves plain Redis, not TLS: it answered a plain-text PING; use a redis:// URL (and REDIS_SSL=false), or the server's TLS port".to_owned(),
        })
    }

    /// A connect that timed out: with TLS on, a server that accepts TCP but never answers
    /// the handshake is most likely plain Redis on this port.
    pub(crate) async fn connect_timed_out(&self, timeout: Duration) -> CacheError {
        if self.tls {
            if let Some(plain) = self.plain_redis_on_tls_port().await {
                return plain;
            }
            let probe = tokio::net::TcpStream::connect((&*self.host, self.port));
            if let Ok(Ok(_)) = tokio::time::timeout(PLAIN_CHECK_TIMEOUT, probe).await {
                return CacheError::Tls {
                    endpoint: self.endpoint.to_string(),
                    detail: format!(
                        "TCP connected but the TLS handshake got no answer within {timeout:?}: is this port plain Redis (then use a redis:// URL) or a TLS port behind a slow network (then raise REDIS_SOCKET_CONNECT_TIMEOUT)?"
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

/// Whether a reply to `PING` is plain RESP: a simple string (`+PONG`) or an error
/// (`-NOAUTH …`, `-DENIED …`), ending its line. A TLS server's alert starts with 0x15.
fn is_plain_reply(reply: &[u8]) -> bool {
    matches!(reply.first(), Some(b'+' | b'-')) && reply.windows(2).any(|w| w == b"\r\n")
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

/// Whether the server refused one of `commands` itself (an ACL without it, a renamed or
/// unknown command), as opposed to a key of it (an ACL by key pattern): callers then stop
/// using those commands for the process.
pub(super) fn refuses_command(e: &CacheError, commands: &[&str]) -> bool {
    match e {
        CacheError::Auth {
            cause: AuthCause::Permission,
            detail,
        } => {
            let detail = detail.to_ascii_lowercase();
            commands.iter().any(|c| detail.contains(&format!("'{c}'")))
        }
        CacheError::Server { detail, .. } => detail.contains("unknown command"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classifier() -> Classifier {
        Classifier::new(
            "127.0.0.1",
            6380,
            "127.0.0.1:6380".to_owned(),
            false,
            Duration::from_secs(5),
        )
    }

    #[test]
    fn refused_credentials_and_acl_refusals_are_told_apart() {
        let c = classifier();
        let refused: RedisError = (ErrorKind::AuthenticationFailed, "refused").into();
        let e = c.classify(&refused);
        assert!(e.is_authentication_failure() && e.trips_breaker(), "{e:?}");
        assert!(c.take_credentials_refused(), "the pool is told");
        assert!(!c.take_credentials_refused(), "once");

        let noperm: RedisError = (ErrorKind::Server(ServerErrorKind::NoPerm), "no").into();
        let e = c.classify(&noperm);
        assert!(
            matches!(
                e,
                CacheError::Auth {
                    cause: AuthCause::Permission,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(!e.trips_breaker(), "an ACL refusal is a reply, not a fault");
        assert!(!c.take_credentials_refused());
        assert!(e.to_string().contains("ACL rules"), "{e}");
    }

    #[test]
    fn a_plain_reply_is_resp_and_a_tls_alert_is_not() {
        assert!(is_plain_reply(b"+PONG\r\n"));
        assert!(is_plain_reply(b"-NOAUTH Authentication required.\r\n"));
        assert!(is_plain_reply(
            b"-DENIED Redis is running in protected mode\r\n"
        ));
        // A TLS alert record (handshake failure), an HTTP server, a cut-off line, nothing.
        assert!(!is_plain_reply(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]));
        assert!(!is_plain_reply(b"HTTP/1.1 400 Bad Request\r\n"));
        assert!(!is_plain_reply(b"+PON"));
        assert!(!is_plain_reply(b""));
    }
}
