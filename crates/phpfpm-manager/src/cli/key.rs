//! `phpfpm-manager key new NAME --scope SCOPE`: makes an API key, prints it
//! once with the lines to paste into `server.auth.keys`. Only the key's
//! SHA-256 goes into the configuration; the key itself is not stored
//! anywhere by the manager.
//!
//! A key is `pfm_` and 64 hex digits: 256 bits from the operating system's
//! random source, so a plain SHA-256 of it cannot be searched back (see
//! `config/auth.rs`), and the prefix lets secret scanners recognise it.

use std::process::ExitCode;

use sha2::{Digest, Sha256};

use crate::config::{valid_principal_name, Scope};

/// What comes before the random part of every key.
pub const KEY_PREFIX: &str = "pfm_";

#[derive(clap::Args, Debug)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub command: KeyCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum KeyCommand {
    /// Make a new API key: prints it once, with the lines for
    /// server.auth.keys (which hold only its SHA-256).
    New {
        /// The key's name: the principal named in the audit trail
        /// (letters, digits, '.', '_', '-').
        name: String,
        /// read (GET routes), operate (pool actions, scaling controls,
        /// annotations) or admin (configuration reload); each includes the
        /// ones before it.
        #[arg(long, default_value = "read")]
        scope: String,
    },
}

/// A new key from 32 random bytes.
pub fn new_key() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(key_from_bytes(&bytes))
}

/// The key text for `bytes`.
pub fn key_from_bytes(bytes: &[u8; 32]) -> String {
    let mut out = String::with_capacity(KEY_PREFIX.len() + 64);
    out.push_str(KEY_PREFIX);
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The SHA-256 of a key as 64 hex digits, as `server.auth.keys[].sha256` holds it.
pub fn digest_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The lines to paste under `server.auth.keys`.
pub fn config_entry(name: &str, scope: Scope, key: &str) -> String {
    format!(
        "      - name: {name}\n        scope: {scope}\n        sha256: {}\n",
        digest_hex(key)
    )
}

/// Runs `key ...`: exit 0, or 2 for a bad name or scope.
#[allow(clippy::print_stdout)]
pub fn run(args: KeyArgs) -> ExitCode {
    match args.command {
        KeyCommand::New { name, scope } => {
            if !valid_principal_name(&name) {
                eprintln!("error: key name {name:?}: use 1 to 64 letters, digits, '.', '_' or '-'");
                return ExitCode::from(2);
            }
            let Some(scope) = Scope::parse(&scope) else {
                eprintln!("error: --scope {scope:?}: use read, operate or admin");
                return ExitCode::from(2);
            };
            let key = match new_key() {
                Ok(k) => k,
                Err(e) => {
                    eprintln!("error: cannot read random bytes from the system: {e}");
                    return ExitCode::FAILURE;
                }
            };
            println!("API key {name:?} (scope {scope}). It is shown this once; store it now:");
            println!();
            println!("    {key}");
            println!();
            println!("Clients send it as `Authorization: Bearer <key>`.");
            println!("Add these lines to the manager's configuration (they hold only the key's SHA-256), then reload it (SIGHUP):");
            println!();
            println!("server:\n  auth:\n    enabled: true\n    keys:");
            print!("{}", config_entry(&name, scope, &key));
            ExitCode::SUCCESS
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_a_prefix_and_256_random_bits() {
        let a = new_key().unwrap();
        let b = new_key().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 64);
        assert!(a.starts_with("pfm_"));
        assert!(a[4..].bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(
            key_from_bytes(&[0xab; 32]),
            format!("pfm_{}", "ab".repeat(32))
        );
    }

    #[test]
    fn the_config_entry_holds_the_digest_and_never_the_key() {
        let key = key_from_bytes(&[7; 32]);
        let entry = config_entry("deploy", Scope::Operate, &key);
        assert!(!entry.contains(&key[4..]));
        // The digest the server compares with is the one printed.
        let hex = digest_hex(&key);
        assert!(entry.contains(&format!("sha256: {hex}")));
        assert_eq!(
            crate::config::parse_sha256_hex(&hex).unwrap(),
            <[u8; 32]>::from(Sha256::digest(key.as_bytes()))
        );
        // SHA-256 of "abc" (FIPS 180-2 example).
        assert_eq!(
            digest_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // The entry parses as the config's key list.
        let yaml = format!(
            "server:\n  auth:\n    enabled: true\n    keys:\n{entry}pools:\n  - name: www\n"
        );
        let cfg = crate::config::load(&crate::config::LoadInput {
            file: Some(("/x/c.yaml".into(), yaml)),
            cwd: "/x".into(),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.server.auth.keys[0].name, "deploy");
        assert_eq!(cfg.server.auth.keys[0].scope, Scope::Operate);
    }
}
