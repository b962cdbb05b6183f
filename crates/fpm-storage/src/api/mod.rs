//! History API routes.
pub mod error;
