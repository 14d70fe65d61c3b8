//! `REDIS_URL`: parsing and redaction. The URL is never echoed as given: it may hold the
//! password.

use super::Password;
use crate::error::{invalid, ConfigError};

pub(super) struct ParsedUrl {
    pub(super) tls: bool,
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) username: Option<String>,
    pub(super) password: Option<Password>,
    pub(super) db: Option<i64>,
}

pub(super) fn parse_url(raw: &str) -> Result<ParsedUrl, ConfigError> {
    let shown = redact_url(raw);
    let url = url::Url::parse(raw).map_err(|e| {
        invalid(
            "REDIS_URL",
            &shown,
            format!("{e}; use redis://[user:password@]host:port/db or rediss://… for TLS, and percent-encode special characters in the password"),
        )
    })?;
    let tls = match url.scheme() {
        "redis" => false,
        "rediss" => true,
        other => {
            return Err(invalid(
                "REDIS_URL",
                &shown,
                format!("scheme {other:?} is not supported; use redis:// or rediss://"),
            ))
        }
    };
    let host = match url.host() {
        Some(url::Host::Domain(d)) if !d.is_empty() => d.to_owned(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        _ => {
            return Err(invalid(
                "REDIS_URL",
                &shown,
                "the URL has no host; use redis://host:port",
            ))
        }
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let username = Some(url.username()).filter(|u| !u.is_empty()).map(decode);
    let password = url.password().map(|p| Password::new(decode(p)));
    let path = url.path().trim_start_matches('/');
    let db = if path.is_empty() {
        None
    } else {
        match path.parse::<i64>() {
            Ok(db) if db >= 0 => Some(db),
            _ => {
                return Err(invalid(
                    "REDIS_URL",
                    &shown,
                    "the path must be a database number, e.g. /0",
                ))
            }
        }
    };
    Ok(ParsedUrl {
        tls,
        host,
        port: url.port().unwrap_or(6379),
        username,
        password,
        db,
    })
}

/// Replaces the password of a URL-like string with `***` (best effort, also for unparsable input).
pub fn redact_url(raw: &str) -> String {
    let Some(scheme_end) = raw.find("://") else {
        return raw.to_owned();
    };
    let rest = &raw[scheme_end + 3..];
    let Some(at) = rest.rfind('@') else {
        return raw.to_owned();
    };
    let userinfo = &rest[..at];
    let user = userinfo.split(':').next().unwrap_or("");
    if userinfo.contains(':') {
        format!("{}{user}:***@{}", &raw[..scheme_end + 3], &rest[at + 1..])
    } else {
        raw.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redact_url_handles_odd_input() {
        assert_eq!(redact_url("redis://u:p@h:1"), "redis://u:***@h:1");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        assert_eq!(redact_url("garbage"), "garbage");
        assert_eq!(redact_url("redis://:p@w@h"), "redis://:***@h");
    }
}
