//! The grammar shared by `cache-macros` (checked at compile time) and `cache-runtime`
//! (checked at run time), so that a name the attribute accepts is one the runtime accepts,
//! and a duration means the same thing in an attribute and in an environment variable.
//!
//! No dependencies: a proc-macro crate and the runtime both link it.
#![warn(missing_docs)]

mod duration;
mod name;

pub use duration::parse_duration;
pub use name::{check_name, describe, NameError, MAX_NAME_LEN, RESERVED_PREFIX};
