//! The phpfpm-manager daemon as a library: every I/O actor (supervisor,
//! collector, HTTP surfaces) and the wiring between them. The binary in
//! `main.rs` is a thin CLI over [`app::run`]; integration tests and benchmarks
//! use the same modules.

pub mod advisor;
pub mod app;
pub mod collector;
pub mod config;
pub mod events;
pub mod fastcgi;
pub mod http;
pub mod metrics;
pub mod opcache;
pub mod replace;
pub mod state;
pub mod supervisor;
pub mod telemetry;
