//! Pure core of phpfpm-manager: domain types, parsers and renderers.
//!
//! Nothing in this crate performs I/O or reads a clock: every input (status
//! page bytes, `/proc` text, the current time) is passed in by the caller, so
//! everything here is deterministic and tested without php-fpm.

pub mod fpm_conf;
pub mod pool;
pub mod status;
pub mod watch;

pub use pool::{PoolName, PoolNameError};
