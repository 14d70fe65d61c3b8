//! Names written by the user into keys: namespaces and data types.
//!
//! `[a-z0-9_-]{1,64}`, not starting with `__` (reserved for the library's own keys, such as
//! user indexes and tag sets). Such a name never needs escaping in a key or a SCAN pattern.

use std::fmt;

/// Longest name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Names starting with this are the library's own (`{prefix}:__index:…`, `__tag`, …).
pub const RESERVED_PREFIX: &str = "__";

/// Why a name is refused. The message says what to write instead.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`].
    TooLong(usize),
    /// A character outside `[a-z0-9_-]`.
    Char(char),
    /// The name starts with [`RESERVED_PREFIX`].
    Reserved,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("it is empty; use 1 to 64 characters from a-z, 0-9, '_' and '-'"),
            Self::TooLong(n) => write!(f, "it has {n} characters; use at most {MAX_NAME_LEN}"),
            Self::Char(c) => {
                let hint = if c.is_ascii_uppercase() { " (use lower case)" } else { "" };
                write!(
                    f,
                    "{} is not allowed{hint}; use 1 to {MAX_NAME_LEN} characters from a-z, 0-9, '_' and '-'",
                    describe(*c)
                )
            }
            Self::Reserved => write!(
                f,
                "names starting with '{RESERVED_PREFIX}' are reserved for the library's own keys; choose another name"
            ),
        }
    }
}

impl std::error::Error for NameError {}

/// Checks a namespace or data-type name.
///
/// ```
/// use cache_grammar::{check_name, NameError};
/// assert!(check_name("analytics").is_ok());
/// assert_eq!(check_name("__index"), Err(NameError::Reserved));
/// assert_eq!(check_name("Users"), Err(NameError::Char('U')));
/// ```
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
    {
        return Err(NameError::Char(bad));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(NameError::Reserved);
    }
    Ok(())
}

/// A character as an error message names it.
pub fn describe(c: char) -> String {
    match c {
        ' ' => "a space".to_owned(),
        c if c.is_whitespace() || c.is_control() => format!("`{}`", c.escape_default()),
        c => format!("`{c}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("analytics").is_ok());
        assert!(check_name("a-b_c9").is_ok());
        assert!(check_name("_a").is_ok());
        assert!(check_name(&"a".repeat(64)).is_ok());
        assert_eq!(check_name(""), Err(NameError::Empty));
        assert_eq!(check_name("Users"), Err(NameError::Char('U')));
        assert_eq!(check_name("a:b"), Err(NameError::Char(':')));
        assert_eq!(check_name(&"a".repeat(65)), Err(NameError::TooLong(65)));
        assert_eq!(check_name("__index"), Err(NameError::Reserved));
        assert!(NameError::Char('A').to_string().contains("lower case"));
    }
}
