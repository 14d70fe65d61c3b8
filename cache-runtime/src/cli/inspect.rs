//! `cachectl inspect KEY` and `cachectl keys (--user ID | --namespace NS)`.
//!
//! `inspect` reads the value's own bytes (`codec::stored_form`): the caller's type is not
//! known here, so "accepted" means what this build's decoder checks before the type:
//! envelope format, codec, and the shape tag a type must have.

use std::time::Duration;

use serde::Serialize;

use super::{fail, print_json, utc, Io, EXIT_FAILURE, EXIT_OK, EXIT_USAGE};
use crate::backend::{KeyList, KeyTtl, ScanBudget, Store};
use crate::codec::{stored_form, StoredForm, FORMAT_TIMED};
use crate::{Cache, CacheError, CodecKind};

/// Most keys one `keys --namespace` pass examines.
const SCAN_BUDGET_KEYS: u64 = 1_000_000;
/// Longest one `keys --namespace` pass runs.
const SCAN_BUDGET_TIME: Duration = Duration::from_secs(5);

/// What `inspect` found (also its `--json`).
#[derive(Debug, Serialize)]
struct Inspection {
    ok: bool,
    key: String,
    size_bytes: usize,
    /// As Redis' PTTL: milliseconds, -1 without an expiry.
    ttl_ms: i64,
    /// `envelope`, `timed envelope`, `integer`, `json` or `foreign`.
    form: &'static str,
    /// The envelope's first byte (`0xc2`, or `0xc3` for a timed one).
    envelope_format: Option<String>,
    /// The codec the envelope records (`unknown (0x..)` for an id this build lacks).
    codec: Option<String>,
    shape_tag: Option<String>,
    compressed: Option<bool>,
    payload_bytes: Option<usize>,
    /// Timed envelopes: when the value stops being fresh (Unix ms), and whether it still is.
    fresh_until_ms: Option<u64>,
    fresh: Option<bool>,
    /// Integers: the value.
    integer: Option<serde_json::Value>,
    /// Whether this build (with this configuration's codec) would read it.
    accepted: bool,
    /// Why, in words.
    verdict: String,
}

fn describe(
    key: &str,
    bytes: &[u8],
    ttl: KeyTtl,
    configured: CodecKind,
    now_ms: u64,
) -> Inspection {
    let mut report = Inspection {
        ok: true,
        key: key.to_owned(),
        size_bytes: bytes.len(),
        ttl_ms: match ttl {
            KeyTtl::ExpiresIn(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            KeyTtl::Persistent => -1,
            KeyTtl::Missing => -2,
        },
        form: "foreign",
        envelope_format: None,
        codec: None,
        shape_tag: None,
        compressed: None,
        payload_bytes: None,
        fresh_until_ms: None,
        fresh: None,
        integer: None,
        accepted: false,
        verdict: String::new(),
    };
    let read_as = format!("this configuration reads {configured} (CACHE_CODEC)");
    match stored_form(bytes) {
        StoredForm::Envelope {
            codec,
            shape_tag,
            payload_bytes,
            fresh_until_ms,
            compressed,
        } => {
            let first = bytes.first().copied().unwrap_or_default();
            report.form = if first == FORMAT_TIMED {
                "timed envelope"
            } else {
                "envelope"
            };
            report.envelope_format = Some(format!("{first:#04x}"));
            report.codec = Some(codec.map_or_else(
                || {
                    format!(
                        "unknown ({:#04x})",
                        bytes.get(1).copied().unwrap_or_default()
                    )
                },
                |c| c.name().to_owned(),
            ));
            report.compressed = Some(compressed);
            report.payload_bytes = Some(payload_bytes);
            report.fresh_until_ms = fresh_until_ms;
            report.fresh = fresh_until_ms.map(|until| until > now_ms);
            (report.accepted, report.verdict) = match codec {
                Some(c) if c == configured && c != CodecKind::JsonPlain => (
                    true,
                    format!(
                        "yes, for a type of shape tag {shape_tag}: a build reads it only if its type has that shape ({read_as})"
                    ),
                ),
                Some(c) => (
                    false,
                    format!("no: written with codec {c}, and {read_as}: reads here miss on it"),
                ),
                None => (
                    false,
                    "no: its codec id is unknown to this build (written by a newer one?)".to_owned(),
                ),
            };
            report.shape_tag = Some(shape_tag);
        }
        StoredForm::Integer(n) => {
            report.form = "integer";
            report.integer = Some(
                i64::try_from(n)
                    .map(serde_json::Value::from)
                    .or_else(|_| u64::try_from(n).map(serde_json::Value::from))
                    .unwrap_or_else(|_| serde_json::Value::from(n.to_string())),
            );
            report.accepted = true;
            report.verdict =
                "yes, for an integer type: every codec stores integers as decimal text (INCRBY-able)"
                    .to_owned();
        }
        StoredForm::Json => {
            report.form = "json";
            (report.accepted, report.verdict) = if configured == CodecKind::JsonPlain {
                (
                    true,
                    "yes, for a type whose JSON this is: json-plain reads bare JSON (manual reads check it is what the type writes)".to_owned(),
                )
            } else {
                (
                    false,
                    format!("no: bare JSON (another service's value, or json-plain's), and {read_as}: only CACHE_CODEC=json-plain reads it"),
                )
            };
        }
        // `StoredForm` may grow: anything else is not ours to read.
        _ => {
            report.verdict =
                "no: not a value this library writes (no envelope, not an integer, not JSON)"
                    .to_owned();
        }
    }
    report
}

/// `cachectl inspect KEY`.
pub(super) async fn inspect(io: &mut Io<'_>, cache: &Cache, json: bool, key: &str) -> u8 {
    let found = match cache.backend().get_with_ttl(key).await {
        Ok(found) => found,
        Err(CacheError::WrongType) => {
            let why = format!(
                "{key:?} holds a Redis type other than a string, so it is no cached value: a user index or a tag's set is a sorted set (cachectl keys --user ID lists an index), {}__stats is the hash of `cachectl top`'s figures",
                cache.keys().prefix_with_colon()
            );
            return not_found(io, json, key, &why);
        }
        Err(e) => return fail(io, json, &e),
    };
    let Some((bytes, ttl)) = found else {
        return not_found(
            io,
            json,
            key,
            &format!("no key {key:?} (expired, deleted, or never written: `cachectl keys` lists what exists)"),
        );
    };
    let now = crate::stats_publisher::unix_ms();
    let report = describe(key, &bytes, ttl, cache.codec(), now);
    if json {
        print_json(io, &report);
        return EXIT_OK;
    }
    let out = &mut *io.out;
    let _ = writeln!(out, "key:         {}", report.key);
    let _ = writeln!(out, "size:        {} bytes", report.size_bytes);
    let _ = writeln!(out, "ttl:         {}", ttl_text(ttl));
    let _ = writeln!(
        out,
        "form:        {}{}",
        report.form,
        report
            .envelope_format
            .as_deref()
            .map_or_else(String::new, |f| format!(" ({f})"))
    );
    if let Some(codec) = &report.codec {
        let _ = writeln!(out, "codec:       {codec}");
    }
    if let Some(tag) = &report.shape_tag {
        let _ = writeln!(
            out,
            "shape tag:   {tag} (a build reads it only if its type has that shape)"
        );
    }
    if let (Some(compressed), Some(payload)) = (report.compressed, report.payload_bytes) {
        let _ = writeln!(
            out,
            "compressed:  {} (payload {payload} bytes)",
            if compressed { "yes, LZ4" } else { "no" }
        );
    }
    if let Some(until) = report.fresh_until_ms {
        let state = if until > now {
            format!("fresh for {}", seconds(until - now))
        } else {
            format!(
                "stale for {}: served only as a fail-safe fallback",
                seconds(now - until)
            )
        };
        let _ = writeln!(out, "fresh until: {} ({state})", utc(until));
    }
    if let Some(n) = &report.integer {
        let _ = writeln!(out, "integer:     {n}");
    }
    let _ = writeln!(out, "accepted:    {}", report.verdict);
    EXIT_OK
}

fn not_found(io: &mut Io<'_>, json: bool, key: &str, why: &str) -> u8 {
    if json {
        print_json(
            io,
            &serde_json::json!({ "ok": false, "key": key, "exists": false, "error": why }),
        );
    } else {
        let _ = writeln!(io.err, "error: {why}");
    }
    EXIT_FAILURE
}

/// `cachectl keys --user ID`: the user's index, `{prefix}:__index:{user:<escaped id>}`.
pub(super) async fn keys_of_user(
    io: &mut Io<'_>,
    cache: &Cache,
    json: bool,
    user: &str,
    limit: usize,
) -> u8 {
    let index = cache.keys().user_index(user);
    let list = match cache.backend().index_members(&index, limit).await {
        Ok(list) => list,
        Err(CacheError::WrongType) => {
            return not_found(
                io,
                json,
                &index,
                &format!(
                    "{index:?} is not a sorted set, so not a user index: something else wrote it"
                ),
            )
        }
        Err(e) => return fail(io, json, &e),
    };
    let what = format!("user {user:?} (index {index})");
    let mut extra = serde_json::json!({ "user": user, "index": index });
    if cache.keys().seed_users() {
        // Other services write the seed's layout without our index.
        extra["note"] =
            "json-plain: keys other services wrote for this user are not in the index".into();
    }
    print_list(io, json, &what, &list, limit, extra);
    EXIT_OK
}

/// `cachectl keys --namespace NS`: one bounded SCAN MATCH `{prefix}:{ns}:*`.
pub(super) async fn keys_of_namespace(
    io: &mut Io<'_>,
    cache: &Cache,
    json: bool,
    namespace: &str,
    limit: usize,
) -> u8 {
    if let Err(e) = crate::Namespace::new(namespace.to_owned()) {
        let _ = writeln!(io.err, "error: {e}");
        return EXIT_USAGE;
    }
    let prefix = cache.keys().namespace_prefix(namespace);
    let budget = ScanBudget {
        max_keys: SCAN_BUDGET_KEYS,
        max_time: SCAN_BUDGET_TIME,
    };
    let list = match cache.backend().list_keys(&prefix, limit, budget).await {
        Ok(list) => list,
        Err(e) => return fail(io, json, &e),
    };
    let what = format!("namespace {namespace:?} ({prefix}*)");
    let extra = serde_json::json!({ "namespace": namespace, "prefix": prefix });
    print_list(io, json, &what, &list, limit, extra);
    EXIT_OK
}

fn print_list(
    io: &mut Io<'_>,
    json: bool,
    what: &str,
    list: &KeyList,
    limit: usize,
    mut extra: serde_json::Value,
) {
    if json {
        let keys: Vec<serde_json::Value> = list
            .keys
            .iter()
            .map(|(k, ttl)| serde_json::json!({ "key": k, "ttl_ms": ttl_ms(*ttl) }))
            .collect();
        extra["ok"] = true.into();
        extra["listed"] = keys.len().into();
        extra["total"] = list.total.into();
        extra["complete"] = list.complete.into();
        extra["limit"] = limit.into();
        extra["keys"] = keys.into();
        print_json(io, &extra);
        return;
    }
    let out = &mut *io.out;
    let _ = writeln!(out, "{what}");
    if list.keys.is_empty() {
        let _ = writeln!(out, "  no keys");
    } else {
        let _ = writeln!(out, "  {:<12} KEY", "TTL");
        for (key, ttl) in &list.keys {
            let _ = writeln!(out, "  {:<12} {key}", ttl_text(*ttl));
        }
    }
    let gone = list
        .keys
        .iter()
        .filter(|(_, t)| *t == KeyTtl::Missing)
        .count();
    let summary = match (list.total, list.complete) {
        (Some(total), true) => format!("{} of {total} listed", list.keys.len()),
        (Some(total), false) => format!(
            "{} of {total} listed (--limit {limit}; raise it for more)",
            list.keys.len()
        ),
        (None, true) => format!("{} keys, every one", list.keys.len()),
        (None, false) if list.keys.len() >= limit => format!(
            "first {} keys: there are more (--limit {limit}; raise it for more)",
            list.keys.len()
        ),
        (None, false) => format!(
            "{} keys found before the scan's budget ran out: there may be more",
            list.keys.len()
        ),
    };
    let _ = writeln!(out, "{summary}");
    if gone > 0 {
        let _ = writeln!(
            out,
            "{gone} listed key(s) are gone (expired or deleted): the index drops them on the user's next write"
        );
    }
}

/// PTTL's convention: milliseconds, -1 without an expiry, -2 gone.
fn ttl_ms(ttl: KeyTtl) -> i64 {
    match ttl {
        KeyTtl::ExpiresIn(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        KeyTtl::Persistent => -1,
        KeyTtl::Missing => -2,
    }
}

fn ttl_text(ttl: KeyTtl) -> String {
    match ttl {
        KeyTtl::ExpiresIn(d) => seconds(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        KeyTtl::Persistent => "no expiry".to_owned(),
        KeyTtl::Missing => "gone".to_owned(),
    }
}

/// Milliseconds as seconds, to the tenth below a minute.
fn seconds(ms: u64) -> String {
    if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} s", ms / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::FORMAT_V2;
    use crate::shape::shape_of;

    #[test]
    fn an_envelope_of_the_configured_codec_is_accepted_for_its_shape() {
        let bytes = CodecKind::Bincode
            .encode_shaped(&vec![1u32, 2], &shape_of::<Vec<u32>>(), 1 << 20)
            .unwrap_or_default();
        let ttl = KeyTtl::ExpiresIn(Duration::from_secs(30));
        let r = describe("k", &bytes, ttl, CodecKind::Bincode, 0);
        assert_eq!((r.form, r.accepted), ("envelope", true), "{r:?}");
        assert_eq!(r.codec.as_deref(), Some("bincode"));
        assert_eq!(r.envelope_format.as_deref(), Some("0xc2"));
        assert_eq!(r.ttl_ms, 30_000);
        let tag = r.shape_tag.clone().unwrap_or_default();
        assert_eq!(tag.len(), 16, "{r:?}");
        assert!(r.verdict.contains(&tag), "{r:?}");
        // The same bytes where the application reads JSON: a miss.
        let r = describe("k", &bytes, ttl, CodecKind::Json, 0);
        assert!(!r.accepted, "{r:?}");
        assert!(r.verdict.contains("written with codec bincode"), "{r:?}");
    }

    #[test]
    fn timed_envelopes_say_until_when_they_are_fresh() {
        let bytes = CodecKind::Json
            .encode_timed(&"v", &shape_of::<String>(), 5_000, 1 << 20)
            .unwrap_or_default();
        let r = describe("k", &bytes, KeyTtl::Persistent, CodecKind::Json, 4_000);
        assert_eq!(r.form, "timed envelope");
        assert_eq!(r.envelope_format, Some(format!("{FORMAT_TIMED:#04x}")));
        assert_eq!((r.fresh_until_ms, r.fresh), (Some(5_000), Some(true)));
        assert_eq!(r.ttl_ms, -1);
        let r = describe("k", &bytes, KeyTtl::Persistent, CodecKind::Json, 6_000);
        assert_eq!(r.fresh, Some(false));
    }

    #[test]
    fn integers_json_and_foreign_bytes() {
        let ttl = KeyTtl::Persistent;
        let r = describe("k", b"-42", ttl, CodecKind::Bincode, 0);
        assert_eq!((r.form, r.accepted), ("integer", true));
        assert_eq!(r.integer, Some(serde_json::json!(-42)));
        let r = describe("k", br#"{"a":1}"#, ttl, CodecKind::Bincode, 0);
        assert_eq!((r.form, r.accepted), ("json", false));
        let r = describe("k", br#"{"a":1}"#, ttl, CodecKind::JsonPlain, 0);
        assert_eq!((r.form, r.accepted), ("json", true));
        let r = describe("k", &[FORMAT_V2, 0x7e, 1, 2], ttl, CodecKind::Bincode, 0);
        assert_eq!((r.form, r.accepted), ("foreign", false), "too short: {r:?}");
        let mut unknown = vec![FORMAT_V2, 0x5a];
        unknown.extend([0u8; 12]);
        let r = describe("k", &unknown, ttl, CodecKind::Bincode, 0);
        assert_eq!(r.codec.as_deref(), Some("unknown (0x5a)"), "{r:?}");
        assert!(!r.accepted);
    }
}
