//! Duration strings: `"90s"`, `"30m"`, `"1h30m"`, `"1d"`, `"300ms"`.

use std::time::Duration;

use crate::name::describe;

/// Units from largest to smallest, in the order they must appear.
const UNITS: [(&str, u128); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Parses a duration string into a [`Duration`].
///
/// Numbers each followed by a unit (`d`, `h`, `m`, `s`, `ms`), units from largest to
/// smallest and each at most once, no spaces. Zero is allowed (callers that need a
/// positive duration say so in their own words).
///
/// ```
/// use std::time::Duration;
/// use cache_grammar::parse_duration;
/// assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
/// assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
/// assert!(parse_duration("1m1h").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.is_empty() {
        return Err(
            "empty duration; write e.g. \"30m\", \"1h30m\", \"90s\", \"300ms\" or \"1d\"".into(),
        );
    }
    let bytes = text.as_bytes();
    let mut total_ms: u128 = 0;
    let mut next_unit = 0;
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &text[start..i];
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = &text[unit_start..i];
        if unit.is_empty() {
            if i < bytes.len() {
                let c = text[i..].chars().next().unwrap_or(' ');
                return Err(format!(
                    "{} is not allowed in duration {text:?}; write numbers followed by `d`, `h`, `m`, `s` or `ms`, without spaces, e.g. \"1h30m\"",
                    describe(c)
                ));
            }
            return Err(format!(
                "`{digits}` in duration {text:?} has no unit; add `s`, `m`, `h`, `d` or `ms` (e.g. \"{digits}s\")"
            ));
        }
        let Some(position) = UNITS.iter().position(|(u, _)| *u == unit) else {
            return Err(format!(
                "unknown unit `{unit}` in duration {text:?}; use `d`, `h`, `m`, `s` or `ms`"
            ));
        };
        if digits.is_empty() {
            return Err(format!(
                "`{unit}` without a number in duration {text:?}; write e.g. \"30{unit}\""
            ));
        }
        if position < next_unit {
            return Err(format!(
                "units of duration {text:?} must go from largest to smallest (`d`, `h`, `m`, `s`, `ms`), each at most once"
            ));
        }
        next_unit = position + 1;
        let amount: u128 = digits
            .parse()
            .map_err(|_| format!("the number in duration {text:?} is too large"))?;
        total_ms = amount
            .checked_mul(UNITS[position].1)
            .and_then(|ms| total_ms.checked_add(ms))
            .filter(|ms| *ms <= u128::from(u64::MAX))
            .ok_or_else(|| format!("duration {text:?} is too large"))?;
    }
    let ms = u64::try_from(total_ms).map_err(|_| format!("duration {text:?} is too large"))?;
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid() {
        let s = Duration::from_secs;
        assert_eq!(parse_duration("90s"), Ok(s(90)));
        assert_eq!(parse_duration("30m"), Ok(s(1800)));
        assert_eq!(parse_duration("1h"), Ok(s(3600)));
        assert_eq!(parse_duration("1d"), Ok(s(86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(s(5400)));
        assert_eq!(parse_duration("1d2h3m4s"), Ok(s(86_400 + 7200 + 180 + 4)));
        assert_eq!(parse_duration("1s500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn invalid() {
        for bad in [
            "",
            "10",
            "h",
            "1x",
            "1m1h",
            "1h1h",
            "1 h",
            "-1s",
            "99999999999999999999999999d",
            "1.5h",
            "5ms1s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
