//! Import of an existing php-fpm setup into phpfpm-manager.
//!
//! Three steps, each usable on its own:
//!
//! 1. [`read_config`] follows the main file and its `include =` patterns on
//!    disk (or [`load_config`] from any [`Source`]) and builds an
//!    [`FpmConfig`]: `[global]` and every pool with its directives, as
//!    php-fpm itself would read them (`ini.rs` and `model.rs` are pure).
//! 2. [`import`] maps that model onto the manager's config (pure) and
//!    returns an [`Imported`]: the YAML, the pool files the manager will
//!    render from it, env files and notes.
//! 3. [`write_import`] writes the result atomically into a directory.
//!
//! Observe mode uses step 1 and [`observed_pools`] to find the pools of a
//! system php-fpm the manager does not run.
//!
//! `env[...]` values may be secrets: they never appear in errors, notes,
//! `Debug` output or (unless asked for) the YAML. See `docs/import.md`.

pub mod ini;
pub mod mapping;
pub mod model;
pub mod observe;
pub mod reader;
pub mod writer;
mod yaml;

use std::path::Path;

pub use mapping::{import, ImportError, ImportOptions, Imported};
pub use model::{Directive, FpmConfig, Origin, PoolDef};
pub use observe::{observed_pools, ObservedPool};
pub use reader::{
    load_config, read_config, DiskSource, MemorySource, ReadError, ReadOptions, Source,
};
pub use writer::{write_import, WriteError, Written, CONFIG_FILE};

/// Any failure of [`import_file`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Import(#[from] ImportError),
}

/// Reads the setup at `main` (absolute path) from disk and imports it.
pub fn import_file(
    main: &Path,
    read: &ReadOptions,
    options: &ImportOptions,
) -> Result<Imported, Error> {
    let model = read_config(main, read)?;
    Ok(import(&model, options)?)
}
