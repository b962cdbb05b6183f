//! placeholder
pub fn run(_c: crate::config::Config) -> anyhow::Result<()> { Ok(()) }
