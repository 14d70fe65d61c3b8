//! `ttl = "1h30m"`: duration strings with the units `d`, `h`, `m`, `s`.

/// Parses `"90s"`, `"30m"`, `"1h30m"`, `"1d"`, ... into seconds.
///
/// Units appear in decreasing order (`d`, `h`, `m`, `s`), each at most once, every number
/// has a unit, no spaces. The total must be positive and fit in a `u64`.
pub(crate) fn parse_secs(text: &str) -> Result<u64, String> {
    const UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];
    if text.is_empty() {
        return Err("empty duration; write e.g. \"30m\", \"1h30m\", \"90s\" or \"1d\"".into());
    }
    let mut total: u64 = 0;
    let mut next_unit = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let Some(position) = UNITS.iter().position(|(u, _)| *u == c) else {
            return Err(format!(
                "{} is not allowed in duration {text:?}; write numbers followed by `d`, `h`, `m` or `s`, without spaces, e.g. \"1h30m\"",
                describe(c)
            ));
        };
        if digits.is_empty() {
            return Err(format!(
                "`{c}` without a number in duration {text:?}; write e.g. \"30{c}\""
            ));
        }
        if position < next_unit {
            return Err(format!(
                "units of duration {text:?} must go from largest to smallest (`d`, `h`, `m`, `s`), each at most once"
            ));
        }
        next_unit = position + 1;
        let amount: u64 = digits
            .parse()
            .map_err(|_| format!("the number in duration {text:?} is too large"))?;
        total = amount
            .checked_mul(UNITS[position].1)
            .and_then(|secs| total.checked_add(secs))
            .ok_or_else(|| format!("duration {text:?} is too large"))?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(format!(
            "`{digits}` in duration {text:?} has no unit; add `s`, `m`, `h` or `d` (e.g. \"{digits}s\"), or write `ttl = {digits}` for seconds"
        ));
    }
    if total == 0 {
        return Err(format!(
            "duration {text:?} is zero; a TTL must be at least one second"
        ));
    }
    Ok(total)
}

/// A character as an error message names it.
pub(crate) fn describe(c: char) -> String {
    match c {
        ' ' => "a space".to_owned(),
        c if c.is_whitespace() || c.is_control() => format!("`{}`", c.escape_default()),
        c => format!("`{c}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_secs;

    #[test]
    fn valid() {
        assert_eq!(parse_secs("90s"), Ok(90));
        assert_eq!(parse_secs("30m"), Ok(1800));
        assert_eq!(parse_secs("1h"), Ok(3600));
        assert_eq!(parse_secs("1d"), Ok(86_400));
        assert_eq!(parse_secs("1h30m"), Ok(5400));
        assert_eq!(parse_secs("1d2h3m4s"), Ok(86_400 + 7200 + 180 + 4));
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
        ] {
            assert!(parse_secs(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
