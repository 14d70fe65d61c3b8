//! `ttl = "1h30m"`: duration strings, in the grammar the runtime's settings share
//! (`cache_grammar::parse_duration`).

/// Parses a TTL string (`"90s"`, `"30m"`, `"1h30m"`, `"1d"`) into whole seconds, at least 1.
pub(crate) fn parse_ttl_secs(text: &str) -> Result<u64, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`{text}` in duration {text:?} has no unit; add `s`, `m`, `h` or `d` (e.g. \"{text}s\"), or write `ttl = {text}` for seconds"
        ));
    }
    let d = cache_grammar::parse_duration(text)?;
    if d.is_zero() {
        return Err(format!(
            "duration {text:?} is zero; a TTL must be at least one second"
        ));
    }
    if d.subsec_millis() != 0 {
        return Err(format!(
            "duration {text:?} is not a whole number of seconds; a TTL is stored in seconds"
        ));
    }
    Ok(d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::parse_ttl_secs;

    #[test]
    fn valid() {
        assert_eq!(parse_ttl_secs("90s"), Ok(90));
        assert_eq!(parse_ttl_secs("30m"), Ok(1800));
        assert_eq!(parse_ttl_secs("1h"), Ok(3600));
        assert_eq!(parse_ttl_secs("1d"), Ok(86_400));
        assert_eq!(parse_ttl_secs("1h30m"), Ok(5400));
        assert_eq!(parse_ttl_secs("1d2h3m4s"), Ok(86_400 + 7200 + 180 + 4));
    }

    #[test]
    fn invalid() {
        for bad in [
            "",
            "0s",
            "0h0m",
            "10",
            "h",
            "1x",
            "1m1h",
            "1h1h",
            "1 h",
            "-1s",
            "99999999999999999999s",
            "1.5h",
            "1500ms",
        ] {
            assert!(parse_ttl_secs(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
