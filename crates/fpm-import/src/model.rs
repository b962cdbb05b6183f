//! The parsed php-fpm setup: `[global]` directives and pools, in the order
//! php-fpm would apply them, with where each one came from.
//!
//! [`Builder`] receives the lines of every file in the order php-fpm reads
//! them (includes spliced in where they appear) and keeps php-fpm's state
//! rules: the current section carries across include boundaries, entries
//! before any section belong to `[global]`, a section seen twice (in one file
//! or several) continues the same pool, every directive is kept in order
//! (for plain directives the last one counts; for array directives such as
//! `php_value[x]` php-fpm uses the first, see `mapping.rs`), and `$pool` in
//! a pool's values becomes the pool's name.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::ini::Line;

/// Where a directive or section was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One `key = value`. The key's directive part is lowercase (php-fpm
/// compares them without case); the part inside `[...]` keeps its case.
#[derive(Clone, PartialEq, Eq)]
pub struct Directive {
    pub key: String,
    /// The value as php-fpm uses it (see `ini.rs`). May be a secret for `env[...]`.
    pub value: String,
    pub origin: Origin,
}

impl std::fmt::Debug for Directive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = if self.is_env() {
            "<redacted>"
        } else {
            &self.value
        };
        f.debug_struct("Directive")
            .field("key", &self.key)
            .field("value", &value)
            .field("origin", &self.origin)
            .finish()
    }
}

impl Directive {
    /// `env[...]` values may be secrets.
    pub fn is_env(&self) -> bool {
        self.key.starts_with("env[")
    }

    /// For `kind[name]` keys, `(kind, name)`.
    pub fn array(&self) -> Option<(&str, &str)> {
        let open = self.key.find('[')?;
        let inner = self.key[open + 1..].strip_suffix(']')?;
        Some((&self.key[..open], inner))
    }
}

/// One pool (`[name]` section), merged over every place it appears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolDef {
    pub name: String,
    /// Where the section first appears.
    pub origin: Origin,
    /// Every directive in the order php-fpm applies them.
    pub directives: Vec<Directive>,
}

impl PoolDef {
    /// The effective (last) value of a plain (non-array) directive.
    pub fn get(&self, key: &str) -> Option<&Directive> {
        self.directives.iter().rev().find(|d| d.key == key)
    }
}

/// The whole setup as php-fpm would see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FpmConfig {
    /// The file php-fpm was (or would be) started with.
    pub main_file: PathBuf,
    /// Every file read, in reading order.
    pub files: Vec<PathBuf>,
    pub global: Vec<Directive>,
    pub pools: Vec<PoolDef>,
    /// Things php-fpm only warns about (an include glob that matches nothing).
    pub warnings: Vec<String>,
}

impl FpmConfig {
    /// The effective (last) value of a `[global]` directive.
    pub fn global(&self, key: &str) -> Option<&Directive> {
        self.global.iter().rev().find(|d| d.key == key)
    }
}

/// A setting php-fpm itself would refuse when building its pools.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ModelError {
    #[error("{origin}: {key} has an empty value (php-fpm: empty value)")]
    EmptyValue { origin: Origin, key: String },
    #[error("{origin}: empty section name []")]
    EmptySection { origin: Origin },
}

/// Collects lines into an [`FpmConfig`]. Pure.
#[derive(Debug, Default)]
pub struct Builder {
    config: FpmConfig,
    /// Index into `config.pools`; None while in `[global]`.
    current: Option<usize>,
}

impl Builder {
    pub fn new(main_file: &Path) -> Builder {
        Builder {
            config: FpmConfig {
                main_file: main_file.to_owned(),
                ..FpmConfig::default()
            },
            current: None,
        }
    }

    /// Records that a file is being read.
    pub fn file(&mut self, path: &Path) {
        self.config.files.push(path.to_owned());
    }

    pub fn warn(&mut self, text: String) {
        self.config.warnings.push(text);
    }

    /// Feeds one line (not an `include`: the reader resolves those).
    pub fn line(&mut self, file: &Path, line: &Line) -> Result<(), ModelError> {
        match line {
            Line::Section { line, name } => {
                let origin = Origin {
                    file: file.to_owned(),
                    line: *line,
                };
                if name.is_empty() {
                    return Err(ModelError::EmptySection { origin });
                }
                if name.eq_ignore_ascii_case("global") {
                    self.current = None;
                    return Ok(());
                }
                let idx = match self.config.pools.iter().position(|p| p.name == *name) {
                    Some(i) => i,
                    None => {
                        self.config.pools.push(PoolDef {
                            name: name.clone(),
                            origin,
                            directives: Vec::new(),
                        });
                        self.config.pools.len() - 1
                    }
                };
                self.current = Some(idx);
            }
            Line::Entry { line, key, value } => {
                let key = normalize_key(key);
                let origin = Origin {
                    file: file.to_owned(),
                    line: *line,
                };
                match self.current {
                    None => self.config.global.push(Directive {
                        key,
                        value: value.clone(),
                        origin,
                    }),
                    Some(i) => {
                        let pool = &mut self.config.pools[i];
                        if key.starts_with("env[") && value.is_empty() {
                            return Err(ModelError::EmptyValue { origin, key });
                        }
                        // php-fpm replaces `$pool` in a pool's values when it
                        // reads them.
                        let value = value.replace("$pool", &pool.name);
                        pool.directives.push(Directive { key, value, origin });
                    }
                }
            }
        }
        Ok(())
    }

    pub fn finish(self) -> FpmConfig {
        self.config
    }
}

/// `PM.Max_Children` -> `pm.max_children`; `PHP_Value[Memory_Limit]` ->
/// `php_value[Memory_Limit]`.
pub(crate) fn normalize_key(key: &str) -> String {
    match key.find('[') {
        Some(i) => format!("{}{}", key[..i].to_ascii_lowercase(), &key[i..]),
        None => key.to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ini::parse_text;

    fn build(files: &[(&str, &str)]) -> FpmConfig {
        let mut b = Builder::new(Path::new(files[0].0));
        for (name, text) in files {
            b.file(Path::new(name));
            for l in parse_text(name, text).unwrap() {
                b.line(Path::new(name), &l).unwrap();
            }
        }
        b.finish()
    }

    #[test]
    fn pools_merge_across_files_and_later_keys_win() {
        let c = build(&[
            (
                "/a.conf",
                "pid = /x.pid\n[www]\nlisten = /run/$pool.sock\npm.max_children = 5\n[Global]\nlog_level = debug\n",
            ),
            ("/b.conf", "[api]\npm = static\n[www]\nPM.Max_Children = 9\n"),
        ]);
        assert_eq!(c.global("pid").unwrap().value, "/x.pid");
        assert_eq!(c.global("log_level").unwrap().value, "debug");
        let names: Vec<&str> = c.pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["www", "api"]);
        let www = &c.pools[0];
        assert_eq!(www.get("listen").unwrap().value, "/run/www.sock");
        let max = www.get("pm.max_children").unwrap();
        assert_eq!(max.value, "9");
        assert_eq!(max.origin.to_string(), "/b.conf:4");
    }

    #[test]
    fn empty_env_is_refused_like_php_fpm() {
        let mut b = Builder::new(Path::new("/a"));
        let lines = parse_text("/a", "[www]\nenv[X] =\n").unwrap();
        b.line(Path::new("/a"), &lines[0]).unwrap();
        let e = b.line(Path::new("/a"), &lines[1]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/a:2: env[X] has an empty value (php-fpm: empty value)"
        );
    }

    #[test]
    fn debug_output_redacts_env() {
        let c = build(&[("/a", "[www]\nenv[DB_PASSWORD] = hunter2\n")]);
        let text = format!("{c:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("DB_PASSWORD"));
    }
}
