//! Integration tests of the importer: real fixtures, real php-fpm, the
//! manager's own config loader.

// Tests, benchmarks and their helpers start and signal their own processes.
#![allow(clippy::disallowed_methods)]
// clippy.toml allows unwrap inside #[test] functions only; the helpers
// these tests share panic the same way, on purpose.
#![allow(clippy::unwrap_used)]

mod bad_input;
mod fixtures;
mod roundtrip;
mod secrets;
mod support;
