//! Parsers of setting values, one per kind of value: each takes the variable's name (for
//! the message) and the raw text, and says how to fix a bad value.

use std::path::PathBuf;
use std::time::Duration;

use super::{CertReqs, ClusterMode, NodeAddr, Password};
use crate::codec::CodecKind;
use crate::error::{invalid, ConfigError};

type Parsed<T> = Result<T, ConfigError>;

pub(super) fn text(_: &'static str, value: &str) -> Parsed<String> {
    Ok(value.trim().to_owned())
}

/// Passwords may legitimately have surrounding spaces: taken verbatim.
pub(super) fn password(_: &'static str, value: &str) -> Parsed<Password> {
    Ok(Password::new(value))
}

pub(super) fn path(_: &'static str, value: &str) -> Parsed<PathBuf> {
    Ok(PathBuf::from(value.trim()))
}

pub(super) fn boolean(var: &'static str, value: &str) -> Parsed<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(invalid(var, value, "use true or false")),
    }
}

pub(super) fn port(var: &'static str, value: &str) -> Parsed<u16> {
    match value.trim().parse::<u32>() {
        Ok(p) if (1..=65_535).contains(&p) => Ok(p as u16),
        _ => Err(invalid(
            var,
            value,
            "use a TCP port between 1 and 65535 (Redis Cloud shows it after the host name)",
        )),
    }
}

/// A whole number in `MIN..=MAX`.
pub(super) fn count<const MIN: u64, const MAX: u64>(var: &'static str, value: &str) -> Parsed<u64> {
    match value.trim().parse::<u64>() {
        Ok(n) if (MIN..=MAX).contains(&n) => Ok(n),
        _ => Err(invalid(
            var,
            value,
            format!("use a whole number between {MIN} and {MAX}"),
        )),
    }
}

pub(super) fn size<const MIN: u64, const MAX: u64>(
    var: &'static str,
    value: &str,
) -> Parsed<usize> {
    count::<MIN, MAX>(var, value).and_then(|n| {
        usize::try_from(n).map_err(|_| invalid(var, value, "too large for this platform"))
    })
}

/// Seconds as a number, fractions allowed: `5`, `0.5`. At most a day.
pub(super) fn seconds(var: &'static str, value: &str) -> Parsed<Duration> {
    match value.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(invalid(
            var,
            value,
            "use a number of seconds greater than 0, e.g. 5 or 0.5",
        )),
    }
}

/// A number of seconds (`30`, `0.5`) or a duration (`2h`, `1m30s`, `300ms`); zero allowed.
pub(super) fn duration(var: &'static str, value: &str) -> Parsed<Duration> {
    let value = value.trim();
    if let Ok(s) = value.parse::<f64>() {
        if s.is_finite() && (0.0..=31_536_000.0).contains(&s) {
            return Ok(Duration::from_secs_f64(s));
        }
    }
    cache_grammar::parse_duration(value)
        .ok()
        .filter(|d| d.as_secs() <= 31_536_000)
        .ok_or_else(|| {
            invalid(
                var,
                value,
                "use seconds (e.g. 30) or a duration (e.g. \"2h\", \"1m30s\", \"300ms\"), at most a year",
            )
        })
}

/// Whole seconds in `MIN..=MAX`.
pub(super) fn whole_seconds<const MIN: u64, const MAX: u64>(
    var: &'static str,
    value: &str,
) -> Parsed<Duration> {
    count::<MIN, MAX>(var, value).map(Duration::from_secs)
}

pub(super) fn cert_reqs(var: &'static str, value: &str) -> Parsed<CertReqs> {
    match value.trim().to_ascii_lowercase().as_str() {
        "required" | "cert_required" => Ok(CertReqs::Required),
        "optional" | "cert_optional" => Ok(CertReqs::Optional),
        "none" | "cert_none" => Ok(CertReqs::None),
        _ => Err(invalid(
            var,
            value,
            "use required (verify chain and host name), optional (verify chain only) or none (verify nothing)",
        )),
    }
}

pub(super) fn cluster_mode(var: &'static str, value: &str) -> Parsed<ClusterMode> {
    match value.trim().to_ascii_lowercase().as_str() {
        "auto" => Ok(ClusterMode::Auto),
        "1" | "true" | "yes" | "on" => Ok(ClusterMode::Enabled),
        "0" | "false" | "no" | "off" => Ok(ClusterMode::Disabled),
        _ => Err(invalid(
            var,
            value,
            "use auto (ask the server at connect), true (a Redis Cluster) or false (a standalone server)",
        )),
    }
}

/// `host:port,host:port` (IPv6 as `[::1]:7000`).
pub(super) fn node_list(var: &'static str, value: &str) -> Parsed<Vec<NodeAddr>> {
    let fix = "use host:port pairs separated by commas, e.g. 10.0.0.1:6379,10.0.0.2:6379 (IPv6: [::1]:6379)";
    value
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|node| {
            let (host, port) = node
                .rsplit_once(':')
                .ok_or_else(|| invalid(var, value, fix))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = port.parse::<u16>().ok().filter(|p| *p > 0);
            match port {
                Some(port) if !host.is_empty() && !host.contains(['/', '@', ' ']) => Ok(NodeAddr {
                    host: host.to_owned(),
                    port,
                }),
                _ => Err(invalid(var, value, fix)),
            }
        })
        .collect()
}

pub(super) fn codec(var: &'static str, value: &str) -> Parsed<CodecKind> {
    CodecKind::from_name(value.trim()).ok_or_else(|| {
        invalid(
            var,
            value,
            "use bincode (default, compact), json (readable) or json-plain (bare JSON shared with other services)",
        )
    })
}
