//! Building the driver's client from a [`RedisConfig`]: address, credentials, database,
//! TCP settings, and TLS (custom CA, mutual TLS, the three `REDIS_SSL_CERT_REQS` modes).

use std::time::Duration;

use redis::{Client, ConnectionAddr, IntoConnectionInfo};

use super::errors::Classifier;
use crate::config::{CertReqs, RedisConfig};
use crate::error::CacheError;
use crate::error::ConfigError;

/// rustls needs a process-wide crypto provider; ring keeps the build free of cmake.
pub(crate) fn install_crypto_provider() {
    // Err means one is installed already (by us or by the application): keep it.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Warns once per cache about certificate checks that are switched off.
pub(crate) fn warn_insecure_tls(config: &RedisConfig) {
    let Some(tls) = &config.tls else { return };
    match tls.cert_reqs {
        CertReqs::Required => {}
        CertReqs::Optional => tracing::warn!(
            target: "cache_runtime::connection",
            endpoint = %config.endpoint(),
            "REDIS_SSL_CERT_REQS=optional: the certificate chain is verified but the host name is NOT; use required in production"
        ),
        CertReqs::None => tracing::warn!(
            target: "cache_runtime::connection",
            endpoint = %config.endpoint(),
            "REDIS_SSL_CERT_REQS=none: TLS certificates are NOT verified, anyone on the path can impersonate the server; never use this in production"
        ),
    }
}

fn read_file(var: &'static str, path: &std::path::Path) -> Result<Vec<u8>, CacheError> {
    std::fs::read(path).map_err(|e| {
        CacheError::Config(ConfigError::Unreadable {
            var,
            path: path.to_owned(),
            reason: e.to_string(),
        })
    })
}

/// Keepalive and a TCP user timeout, so a silently dead connection (NAT timeout, failover)
/// errors out and is replaced instead of hanging until the kernel gives up.
pub(crate) fn tcp_settings(config: &RedisConfig) -> redis::io::tcp::TcpSettings {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(15))
        .with_interval(Duration::from_secs(5));
    redis::io::tcp::TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive)
        .set_user_timeout(config.socket_timeout.max(Duration::from_secs(10)) * 3)
}

/// The credentials and database of every connection.
pub(crate) fn redis_settings(config: &RedisConfig) -> redis::RedisConnectionInfo {
    let mut info = redis::RedisConnectionInfo::default().set_db(config.db);
    if let Some(user) = &config.username {
        info = info.set_username(user);
    }
    if let Some(password) = &config.password {
        info = info.set_password(password.expose());
    }
    info
}

/// The certificates of a TLS configuration (custom CA, client certificate), checked.
pub(crate) fn tls_certificates(
    config: &RedisConfig,
) -> Result<Option<redis::TlsCertificates>, CacheError> {
    let Some(tls) = &config.tls else {
        return Ok(None);
    };
    let client_tls = match (&tls.certfile, &tls.keyfile) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read_file("REDIS_SSL_CERTFILE", cert)?,
            client_key: read_file("REDIS_SSL_KEYFILE", key)?,
        }),
        _ => None,
    };
    let root_cert = tls
        .ca_certs
        .as_deref()
        .map(|p| read_file("REDIS_SSL_CA_CERTS", p))
        .transpose()?;
    if let (Some(pem), Some(path)) = (&root_cert, &tls.ca_certs) {
        use rustls::pki_types::pem::PemObject as _;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
            .filter(Result::is_ok)
            .count();
        if certs == 0 {
            return Err(CacheError::Config(ConfigError::Invalid {
                var: "REDIS_SSL_CA_CERTS",
                value: path.display().to_string(),
                fix: "the file holds no PEM certificate (-----BEGIN CERTIFICATE-----); point it at the CA file, e.g. Redis Cloud's redis_ca.pem".to_owned(),
            }));
        }
    }
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// The client of one standalone server.
pub(crate) fn build_client(
    config: &RedisConfig,
    classifier: &Classifier,
) -> Result<Client, CacheError> {
    let addr = match &config.tls {
        None => ConnectionAddr::Tcp(config.host.clone(), config.port),
        Some(tls) => ConnectionAddr::TcpTls {
            host: config.host.clone(),
            port: config.port,
            insecure: tls.cert_reqs == CertReqs::None,
            tls_params: None,
        },
    };
    let info = addr
        .into_connection_info()
        .map_err(|e| classifier.classify(&e))?
        .set_redis_settings(redis_settings(config))
        .set_tcp_settings(tcp_settings(config));
    let Some(certs) = tls_certificates(config)? else {
        return Client::open(info).map_err(|e| classifier.classify(&e));
    };
    let client = Client::build_with_tls(info, certs).map_err(|e| CacheError::Tls {
        endpoint: config.endpoint(),
        detail: format!("{e}; check that REDIS_SSL_CA_CERTS, REDIS_SSL_CERTFILE and REDIS_SSL_KEYFILE are PEM files"),
    })?;
    if config
        .tls
        .as_ref()
        .is_some_and(|t| t.cert_reqs == CertReqs::Optional)
    {
        // Optional: verify the chain, accept any host name.
        let info = client.get_connection_info().clone();
        let mut addr = info.addr().clone();
        addr.set_danger_accept_invalid_hostnames(true);
        return Client::open(info.set_addr(addr)).map_err(|e| classifier.classify(&e));
    }
    Ok(client)
}
