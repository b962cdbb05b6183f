//! Validated pool names.
//!
//! A pool name ends up in file names (`pools.d/<name>.conf`, `sockets/<name>.sock`),
//! in metric labels and in URLs, so it is checked once, here, and carried as a
//! type that cannot hold anything else.

use std::fmt;

/// Longest pool name accepted. Socket paths are limited to 108 bytes on Linux,
/// and the name is part of them.
pub const MAX_POOL_NAME_LEN: usize = 64;

/// A pool name made only of `[A-Za-z0-9_-]`, 1 to 64 characters long.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolName(String);

/// Why a string is not a valid pool name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolNameError {
    #[error("pool name is empty")]
    Empty,
    #[error("pool name is longer than {MAX_POOL_NAME_LEN} characters")]
    TooLong,
    #[error("pool name contains {0:?}; only letters, digits, '_' and '-' are allowed")]
    BadChar(char),
}

impl PoolName {
    /// Checks `name` and wraps it.
    pub fn new(name: &str) -> Result<PoolName, PoolNameError> {
        if name.is_empty() {
            return Err(PoolNameError::Empty);
        }
        if name.len() > MAX_POOL_NAME_LEN {
            return Err(PoolNameError::TooLong);
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(PoolNameError::BadChar(c));
        }
        Ok(PoolName(name.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PoolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        for ok in ["www", "api-v2", "A_1", &"x".repeat(64)] {
            assert_eq!(PoolName::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_path_like_and_odd_names() {
        assert_eq!(PoolName::new(""), Err(PoolNameError::Empty));
        assert_eq!(PoolName::new("../etc"), Err(PoolNameError::BadChar('.')));
        assert_eq!(PoolName::new("a/b"), Err(PoolNameError::BadChar('/')));
        assert_eq!(PoolName::new("a\0b"), Err(PoolNameError::BadChar('\0')));
        assert_eq!(PoolName::new("é"), Err(PoolNameError::BadChar('é')));
        assert_eq!(PoolName::new(&"x".repeat(65)), Err(PoolNameError::TooLong));
    }
}
