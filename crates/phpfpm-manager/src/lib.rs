//! The phpfpm-manager daemon as a library: every I/O actor (supervisor,
//! collector, HTTP surfaces) and the wiring between them. The binary in
//! `main.rs` is a thin CLI over [`app::run`]; integration tests and benchmarks
//! use the same modules.

pub mod app;
pub mod cli;
pub mod collect;
pub mod config;
pub mod control;
pub mod events;
pub mod fastcgi;
pub mod notify;
pub mod opcache;
pub mod pool;
pub mod replace;
pub mod scale;
pub mod state;
pub mod supervisor;
pub mod surface;
pub mod telemetry;
