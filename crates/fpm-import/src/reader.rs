//! Follows a php-fpm setup across files: reads the main file, resolves
//! `include =` patterns the way php-fpm does, and feeds every line to the
//! pure [`Builder`] in php-fpm's reading order.
//!
//! How php-fpm 8.2 resolves includes (checked with `php-fpm8.2 -tt`):
//! a relative pattern is taken relative to php-fpm's *prefix* (`-p`, else
//! the compiled-in prefix, `/usr` on Debian), not to the including file's
//! directory; `$prefix` is not expanded; the pattern goes through glob(3)
//! (sorted, `*` does not match a leading dot, directories skipped); a
//! pattern that matches nothing is only a warning. The importer follows that,
//! except that a pattern without wildcards naming a missing file is an error
//! (it is almost always a mistake), as are `..` in a pattern, include
//! cycles, too deep nesting, too many or too large files.
//!
//! File access goes through [`Source`], so the same logic runs on disk
//! ([`DiskSource`]) and in memory ([`MemorySource`], for tests).

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Component, Path, PathBuf};

use thiserror::Error;

use crate::ini::{parse_text, Line, SyntaxError};
use crate::model::{Builder, FpmConfig, ModelError, Origin};

/// Limits and path rules for reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOptions {
    /// php-fpm's prefix (`-p`): relative include patterns start here.
    pub prefix: PathBuf,
    /// Read a copy of a system: absolute paths (the main file excepted) are
    /// looked up under this directory, for example a backup of another
    /// server's `/etc` mounted at `/mnt/old`.
    pub root: Option<PathBuf>,
    /// Includes nested deeper than this are refused.
    pub max_depth: usize,
    /// At most this many files are read in total.
    pub max_files: usize,
    /// Larger files are refused.
    pub max_file_bytes: u64,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            // Debian's and most distributions' PHP_PREFIX.
            prefix: PathBuf::from("/usr"),
            root: None,
            max_depth: 8,
            max_files: 512,
            max_file_bytes: 1 << 20,
        }
    }
}

/// Why a file could not be read through a [`Source`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SourceError {
    #[error("no such file")]
    NotFound,
    #[error("larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("not UTF-8 text")]
    NotUtf8,
    #[error("{0}")]
    Io(String),
}

/// Where config files come from.
pub trait Source {
    /// The whole file as text, refusing files above `max_bytes`.
    fn read(&self, path: &Path, max_bytes: u64) -> Result<String, SourceError>;
    /// Files matching a glob(3) pattern, sorted, directories left out.
    fn glob(&self, pattern: &str) -> Result<Vec<PathBuf>, String>;
    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> bool;
    /// What identifies a file for cycle detection (the canonical path).
    fn identity(&self, path: &Path) -> PathBuf;
}

/// Why a php-fpm setup could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReadError {
    #[error("{path}: {what}")]
    BadPath { path: String, what: String },
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: SourceError },
    #[error("{origin}: include {pattern:?}: {what}")]
    Include {
        origin: Origin,
        pattern: String,
        what: String,
    },
    #[error("{origin}: include cycle: {chain}")]
    Cycle { origin: Origin, chain: String },
    #[error("{origin}: includes are nested deeper than {max} levels")]
    TooDeep { origin: Origin, max: usize },
    #[error("more than {max} files are included")]
    TooManyFiles { max: usize },
    #[error(transparent)]
    Syntax(#[from] SyntaxError),
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Reads the setup whose main file is `main` (an absolute path) from disk.
pub fn read_config(main: &Path, opts: &ReadOptions) -> Result<FpmConfig, ReadError> {
    load_config(main, opts, &DiskSource)
}

/// Reads the setup whose main file is `main` from any [`Source`].
pub fn load_config(
    main: &Path,
    opts: &ReadOptions,
    source: &dyn Source,
) -> Result<FpmConfig, ReadError> {
    check_path(main).map_err(|what| ReadError::BadPath {
        path: main.display().to_string(),
        what,
    })?;
    if !main.is_absolute() {
        return Err(ReadError::BadPath {
            path: main.display().to_string(),
            what: "relative path; give an absolute path".into(),
        });
    }
    if !opts.prefix.is_absolute() {
        return Err(ReadError::BadPath {
            path: opts.prefix.display().to_string(),
            what: "php-fpm prefix must be an absolute path".into(),
        });
    }
    let mut walk = Walk {
        opts,
        source,
        builder: Builder::new(main),
        stack: Vec::new(),
        files: 0,
    };
    walk.file(main, None)?;
    Ok(walk.builder.finish())
}

/// `..` and NUL are refused in every path the importer opens.
fn check_path(p: &Path) -> Result<(), String> {
    if p.as_os_str().as_encoded_bytes().contains(&0) {
        return Err("path contains a NUL byte".into());
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err("path contains '..'; write it without '..' components".into());
    }
    Ok(())
}

struct Walk<'a> {
    opts: &'a ReadOptions,
    source: &'a dyn Source,
    builder: Builder,
    /// Identities of the files being read, outermost first.
    stack: Vec<PathBuf>,
    files: usize,
}

impl Walk<'_> {
    fn file(&mut self, path: &Path, from: Option<&Origin>) -> Result<(), ReadError> {
        self.files += 1;
        if self.files > self.opts.max_files {
            return Err(ReadError::TooManyFiles {
                max: self.opts.max_files,
            });
        }
        let text = self
            .source
            .read(path, self.opts.max_file_bytes)
            .map_err(|error| match (from, &error) {
                (Some(origin), SourceError::NotFound) => ReadError::Include {
                    origin: origin.clone(),
                    pattern: path.display().to_string(),
                    what: "the included file does not exist".into(),
                },
                _ => ReadError::Read {
                    path: path.display().to_string(),
                    error,
                },
            })?;
        let label = path.display().to_string();
        let lines = parse_text(&label, &text)?;
        self.builder.file(path);
        self.stack.push(self.source.identity(path));
        for line in &lines {
            match line {
                Line::Entry { line, key, value } if key.eq_ignore_ascii_case("include") => {
                    let origin = Origin {
                        file: path.to_owned(),
                        line: *line,
                    };
                    self.include(&origin, value)?;
                }
                _ => self.builder.line(path, line)?,
            }
        }
        self.stack.pop();
        Ok(())
    }

    fn include(&mut self, origin: &Origin, pattern: &str) -> Result<(), ReadError> {
        let err = |what: String| ReadError::Include {
            origin: origin.clone(),
            pattern: pattern.to_owned(),
            what,
        };
        if pattern.is_empty() {
            return Err(err("empty include".into()));
        }
        if pattern.contains("${") {
            return Err(err(
                "uses '${...}', which is only known when php-fpm starts".into(),
            ));
        }
        check_path(Path::new(pattern)).map_err(err)?;
        if self.stack.len() > self.opts.max_depth {
            return Err(ReadError::TooDeep {
                origin: origin.clone(),
                max: self.opts.max_depth,
            });
        }
        // php-fpm: relative to the prefix, not to the including file.
        let logical = if Path::new(pattern).is_absolute() {
            PathBuf::from(pattern)
        } else {
            self.opts.prefix.join(pattern)
        };
        let physical = match &self.opts.root {
            Some(root) => root.join(logical.strip_prefix("/").unwrap_or(&logical)),
            None => logical,
        };
        let files = if pattern.contains(['*', '?', '[']) {
            let text = physical
                .to_str()
                .ok_or_else(|| err("pattern is not UTF-8".into()))?;
            let found = self.source.glob(text).map_err(err)?;
            if found.is_empty() {
                self.builder.warn(format!(
                    "{origin}: include pattern {pattern:?} matches nothing (php-fpm only warns)"
                ));
            }
            found
        } else if self.source.exists(&physical) {
            vec![physical]
        } else {
            return Err(err(format!(
                "{} does not exist (relative patterns start at php-fpm's prefix {})",
                physical.display(),
                self.opts.prefix.display()
            )));
        };
        for file in files {
            let id = self.source.identity(&file);
            if let Some(at) = self.stack.iter().position(|s| *s == id) {
                let mut chain: Vec<String> = self.stack[at..]
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                chain.push(id.display().to_string());
                return Err(ReadError::Cycle {
                    origin: origin.clone(),
                    chain: chain.join(" -> "),
                });
            }
            self.file(&file, Some(origin))?;
        }
        Ok(())
    }
}

fn glob_options() -> glob::MatchOptions {
    // glob(3) as php-fpm calls it: `*` matches neither '/' nor a leading dot.
    glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: true,
    }
}

/// Files on the local disk.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiskSource;

impl Source for DiskSource {
    fn read(&self, path: &Path, max_bytes: u64) -> Result<String, SourceError> {
        let io = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => SourceError::NotFound,
            _ => SourceError::Io(e.to_string()),
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(SourceError::Io("not a regular file".into()));
        }
        let mut bytes = Vec::new();
        // Read one byte past the limit to notice a file that grew.
        file.take(max_bytes.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > max_bytes {
            return Err(SourceError::TooLarge(max_bytes));
        }
        String::from_utf8(bytes).map_err(|_| SourceError::NotUtf8)
    }

    fn glob(&self, pattern: &str) -> Result<Vec<PathBuf>, String> {
        let paths = glob::glob_with(pattern, glob_options()).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for p in paths {
            let p = p.map_err(|e| e.to_string())?;
            if !p.is_dir() {
                out.push(p);
            }
        }
        out.sort();
        Ok(out)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn identity(&self, path: &Path) -> PathBuf {
        std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
    }
}

/// Files held in memory, for tests and for callers that already have the text.
#[derive(Debug, Clone, Default)]
pub struct MemorySource {
    pub files: BTreeMap<PathBuf, String>,
}

impl MemorySource {
    pub fn new<I, P, T>(files: I) -> MemorySource
    where
        I: IntoIterator<Item = (P, T)>,
        P: Into<PathBuf>,
        T: Into<String>,
    {
        MemorySource {
            files: files
                .into_iter()
                .map(|(p, t)| (p.into(), t.into()))
                .collect(),
        }
    }
}

impl Source for MemorySource {
    fn read(&self, path: &Path, max_bytes: u64) -> Result<String, SourceError> {
        let text = self.files.get(path).ok_or(SourceError::NotFound)?;
        if text.len() as u64 > max_bytes {
            return Err(SourceError::TooLarge(max_bytes));
        }
        Ok(text.clone())
    }

    fn glob(&self, pattern: &str) -> Result<Vec<PathBuf>, String> {
        let pat = glob::Pattern::new(pattern).map_err(|e| e.to_string())?;
        Ok(self
            .files
            .keys()
            .filter(|p| pat.matches_path_with(p, glob_options()))
            .cloned()
            .collect())
    }

    fn exists(&self, path: &Path) -> bool {
        self.files.contains_key(path)
    }

    fn identity(&self, path: &Path) -> PathBuf {
        path.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(files: &[(&str, &str)]) -> Result<FpmConfig, ReadError> {
        let src = MemorySource::new(files.iter().copied());
        load_config(Path::new(files[0].0), &ReadOptions::default(), &src)
    }

    #[test]
    fn includes_are_spliced_in_place_and_relative_ones_use_the_prefix() {
        let c = load(&[
            (
                "/etc/fpm/main.conf",
                "[global]\ninclude = /etc/fpm/d/*.conf\ninclude = rel.conf\n[www]\npm.max_children = 3\n",
            ),
            ("/etc/fpm/d/b.conf", "[www]\npm.max_children = 2\nlisten = b\n"),
            ("/etc/fpm/d/a.conf", "[www]\npm.max_children = 1\nlisten = a\n"),
            ("/etc/fpm/d/.hidden.conf", "[hidden]\n"),
            ("/usr/rel.conf", "[api]\npm = static\n"),
        ])
        .unwrap();
        // Sorted glob: a before b; the main file's [www] after the includes wins.
        let www = &c.pools[0];
        assert_eq!(www.get("listen").unwrap().value, "b");
        assert_eq!(www.get("pm.max_children").unwrap().value, "3");
        let names: Vec<&str> = c.pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["www", "api"]);
        assert_eq!(c.files.len(), 4);
    }

    #[test]
    fn empty_glob_is_a_warning_missing_file_an_error() {
        let c = load(&[("/m.conf", "include = /none/*.conf\n[www]\n")]).unwrap();
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].contains("/m.conf:1"), "{:?}", c.warnings);
        let e = load(&[("/m.conf", "\n[www]\ninclude = /etc/missing.conf\n")]).unwrap_err();
        assert!(
            matches!(&e, ReadError::Include { origin, .. } if origin.line == 3),
            "{e}"
        );
        assert!(e.to_string().starts_with("/m.conf:3: include"), "{e}");
    }

    #[test]
    fn cycles_depth_and_dotdot_are_refused() {
        let e = load(&[
            ("/a.conf", "include = /b.conf\n"),
            ("/b.conf", "[www]\ninclude = /a.conf\n"),
        ])
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "/b.conf:2: include cycle: /a.conf -> /b.conf -> /a.conf"
        );
        let e = load(&[("/a.conf", "include = /etc/../a.conf\n")]).unwrap_err();
        assert!(e.to_string().contains("'..'"), "{e}");
        let mut files = Vec::new();
        for i in 0..20 {
            files.push((
                format!("/f{i}.conf"),
                format!("include = /f{}.conf\n", i + 1),
            ));
        }
        files.push(("/f20.conf".into(), "[www]\n".into()));
        let src = MemorySource::new(files);
        let e = load_config(Path::new("/f0.conf"), &ReadOptions::default(), &src).unwrap_err();
        assert!(matches!(e, ReadError::TooDeep { max: 8, .. }), "{e}");
    }

    #[test]
    fn syntax_errors_name_the_included_file_and_line() {
        let e = load(&[
            ("/a.conf", "include = /d/*.conf\n"),
            ("/d/x.conf", "[www]\n\npm = = static\n"),
        ])
        .unwrap_err();
        assert!(e.to_string().starts_with("/d/x.conf:3: "), "{e}");
    }

    #[test]
    fn main_path_must_be_absolute_and_clean() {
        let src = MemorySource::default();
        let o = ReadOptions::default();
        for bad in ["rel.conf", "/etc/../x.conf"] {
            let e = load_config(Path::new(bad), &o, &src).unwrap_err();
            assert!(matches!(e, ReadError::BadPath { .. }), "{e}");
        }
    }
}
