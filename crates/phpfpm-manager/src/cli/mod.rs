//! Commands of the `phpfpm-manager` binary that have more than a few lines
//! of their own (`main.rs` parses the command line and calls in here).

pub mod key;
