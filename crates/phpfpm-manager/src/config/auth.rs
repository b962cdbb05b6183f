//! `server.auth`, `server.tls` and `server.allow_unauthenticated`: who may
//! call the HTTP surface and how the connection is protected, checked into
//! typed values. Pure: file contents (certificates, keys) are read by the
//! HTTP surface when it starts (`surface/http/tls.rs`), not here.
//!
//! API keys are never in the configuration, only their SHA-256 digests
//! (`phpfpm-manager key new` prints both, the key once). A plain SHA-256 is
//! enough because keys are 256 random bits: nobody can search that space, so
//! a slow password hash (argon2) would only add its cost to every request.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::raw::RawServer;
use super::Problem;

/// What a principal may do. Each scope includes the ones before it:
/// `read` (GET routes) < `operate` (pool actions, scaling controls,
/// annotations) < `admin` (configuration reload).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    Read,
    Operate,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Operate, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Operate => "operate",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `server.auth`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Auth {
    /// Every route but the open ones needs a principal with its scope.
    pub enabled: bool,
    pub metrics_require_auth: bool,
    pub health_require_auth: bool,
    pub keys: Vec<ApiKey>,
    pub certificates: Vec<ClientCert>,
}

/// One API key: its name (the principal in the audit trail), its scope and
/// the SHA-256 digest of the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub name: String,
    pub scope: Scope,
    pub sha256: [u8; 32],
}

/// A client certificate's subject common name mapped to a principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub common_name: String,
    /// The principal's name (defaults to the common name).
    pub name: String,
    pub scope: Scope,
}

/// `server.tls` when enabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// With it, clients must present a certificate signed by this CA (mTLS).
    pub client_ca_path: Option<PathBuf>,
    /// For the CLI: the CA that signed `cert_path`.
    pub ca_path: Option<PathBuf>,
}

/// The TLS paths, already checked as paths by the caller.
#[derive(Debug, Default)]
pub(super) struct TlsPaths {
    pub(super) cert: Option<PathBuf>,
    pub(super) key: Option<PathBuf>,
    pub(super) client_ca: Option<PathBuf>,
    pub(super) ca: Option<PathBuf>,
}

/// Longest principal name; names appear in events and logs.
const MAX_PRINCIPAL_LEN: usize = 64;

/// Whether `name` may name a key or a certificate's principal: 1 to 64 of
/// `[A-Za-z0-9._-]`. Never a `:`, which the surface uses for principals of
/// certificates that are not mapped (`cert:<CN>`).
pub fn valid_principal_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_PRINCIPAL_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A SHA-256 digest written as 64 hex digits.
pub fn parse_sha256_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    // Hex digits only: `from_str_radix` would also take a `+` sign.
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Checks `server.auth`, `server.tls` and the unsafe default, pushing every
/// problem found.
pub(super) fn check(
    raw: &RawServer,
    bind: SocketAddr,
    bind_usable: bool,
    paths: TlsPaths,
    problems: &mut Vec<Problem>,
) -> (Auth, Option<Tls>) {
    let mut push = |key: &str, value: Option<&str>, what: &str, fix: &str| {
        problems.push(Problem::new(key, value.map(str::to_owned), what, fix));
    };
    let ra = &raw.auth;

    let tls = if raw.tls.enabled {
        if raw.tls.cert_path.is_none() {
            push(
                "server.tls.cert_path",
                None,
                "required with server.tls.enabled",
                "set it to the server certificate chain (PEM)",
            );
        }
        if raw.tls.key_path.is_none() {
            push(
                "server.tls.key_path",
                None,
                "required with server.tls.enabled",
                "set it to the server certificate's private key (PEM)",
            );
        }
        match (paths.cert, paths.key) {
            (Some(cert_path), Some(key_path)) => Some(Tls {
                cert_path,
                key_path,
                client_ca_path: paths.client_ca,
                ca_path: paths.ca,
            }),
            _ => None,
        }
    } else {
        if raw.tls.client_ca_path.is_some() {
            push(
                "server.tls.client_ca_path",
                raw.tls.client_ca_path.as_deref(),
                "client certificates need TLS",
                "set server.tls.enabled: true with cert_path and key_path, or remove client_ca_path",
            );
        }
        None
    };

    let mut names: Vec<String> = Vec::new();
    let mut keys = Vec::new();
    for (i, k) in ra.keys.iter().enumerate() {
        let at = format!("server.auth.keys[{i}]");
        let name_ok = check_name(&mut push, &format!("{at}.name"), &k.name, &mut names);
        let scope = check_scope(&mut push, &format!("{at}.scope"), &k.scope);
        // The value is never echoed: a key pasted here by mistake is a secret.
        let sha256 = parse_sha256_hex(&k.sha256);
        if sha256.is_none() {
            push(
                &format!("{at}.sha256"),
                None,
                "not a SHA-256 digest (64 hex digits)",
                "paste the sha256 line `phpfpm-manager key new` printed; never the key itself",
            );
        }
        if let (true, Some(scope), Some(sha256)) = (name_ok, scope, sha256) {
            keys.push(ApiKey {
                name: k.name.clone(),
                scope,
                sha256,
            });
        }
    }
    let mut cns: Vec<&str> = Vec::new();
    let mut certificates = Vec::new();
    for (i, c) in ra.certificates.iter().enumerate() {
        let at = format!("server.auth.certificates[{i}]");
        let cn = c.common_name.trim();
        let cn_ok = if cn.is_empty() || cn.len() > 256 || cn.chars().any(char::is_control) {
            push(
                &format!("{at}.common_name"),
                Some(c.common_name.as_str()),
                "not a certificate common name",
                "write the CN of the client certificate's subject, for example deploy.example.com",
            );
            false
        } else if cns.contains(&cn) {
            push(
                &format!("{at}.common_name"),
                Some(cn),
                "listed twice",
                "map each common name once",
            );
            false
        } else {
            cns.push(cn);
            true
        };
        let name = c.name.clone().unwrap_or_else(|| cn.to_owned());
        let name_ok = check_name(&mut push, &format!("{at}.name"), &name, &mut names);
        let scope = check_scope(&mut push, &format!("{at}.scope"), &c.scope);
        if let (true, true, Some(scope)) = (cn_ok, name_ok, scope) {
            certificates.push(ClientCert {
                common_name: cn.to_owned(),
                name,
                scope,
            });
        }
    }
    let certificates_asked = raw.tls.enabled && raw.tls.client_ca_path.is_some();
    if !ra.certificates.is_empty() && !certificates_asked {
        push(
            "server.auth.certificates",
            None,
            "client certificates are mapped but not asked for",
            "set server.tls.enabled: true and server.tls.client_ca_path to the CA that signs them",
        );
    }
    if ra.enabled && ra.keys.is_empty() && ra.certificates.is_empty() {
        push(
            "server.auth.enabled",
            Some("true"),
            "no API key or client certificate is configured, so nobody could call the API",
            "create a key with `phpfpm-manager key new NAME --scope read` and add its lines to server.auth.keys",
        );
    }
    if !ra.enabled {
        for (key, on) in [
            ("server.auth.metrics_require_auth", ra.metrics_require_auth),
            ("server.auth.health_require_auth", ra.health_require_auth),
        ] {
            if on {
                push(
                    key,
                    Some("true"),
                    "has no effect while server.auth.enabled is false",
                    "set server.auth.enabled: true with keys, or remove it",
                );
            }
        }
    }
    // The unsafe default: an address others can reach, and nobody asked who
    // is calling.
    if bind_usable && !bind.ip().is_loopback() && !ra.enabled && !raw.allow_unauthenticated {
        push(
            "server.bind_address",
            Some(bind.to_string().as_str()),
            "listens beyond this host with authentication off",
            "set server.auth.enabled: true with keys (`phpfpm-manager key new NAME --scope read`), or server.allow_unauthenticated: true to serve it open on purpose",
        );
    }
    (
        Auth {
            enabled: ra.enabled,
            metrics_require_auth: ra.metrics_require_auth,
            health_require_auth: ra.health_require_auth,
            keys,
            certificates,
        },
        tls,
    )
}

fn check_name(
    push: &mut impl FnMut(&str, Option<&str>, &str, &str),
    key: &str,
    name: &str,
    seen: &mut Vec<String>,
) -> bool {
    if !valid_principal_name(name) {
        push(
            key,
            Some(name),
            "not a principal name",
            "use 1 to 64 letters, digits, '.', '_' or '-'",
        );
        false
    } else if seen.iter().any(|s| s == name) {
        push(
            key,
            Some(name),
            "names two principals",
            "give every key and certificate its own name",
        );
        false
    } else {
        seen.push(name.to_owned());
        true
    }
}

fn check_scope(
    push: &mut impl FnMut(&str, Option<&str>, &str, &str),
    key: &str,
    text: &str,
) -> Option<Scope> {
    let scope = Scope::parse(text.trim());
    if scope.is_none() {
        push(
            key,
            Some(text),
            "not a scope",
            "use read, operate or admin (each includes the ones before it)",
        );
    }
    scope
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_ordered_and_parsed() {
        assert!(Scope::Read < Scope::Operate && Scope::Operate < Scope::Admin);
        assert_eq!(Scope::parse("operate"), Some(Scope::Operate));
        assert_eq!(Scope::parse("Operate"), None);
        assert_eq!(Scope::parse("write"), None);
    }

    #[test]
    fn digests_and_names_are_checked() {
        let hex = "00ff".repeat(16);
        let d = parse_sha256_hex(&hex).unwrap();
        assert_eq!(d[0], 0x00);
        assert_eq!(d[1], 0xff);
        assert_eq!(parse_sha256_hex(&hex[..63]), None);
        assert_eq!(parse_sha256_hex(&"zz".repeat(32)), None);
        // A multi-byte character must not panic the slicing.
        assert_eq!(parse_sha256_hex(&format!("é{}", &hex[2..])), None);
        assert_eq!(parse_sha256_hex(&format!("+f{}", &hex[2..])), None);
        assert!(valid_principal_name("deploy-bot.v2"));
        assert!(!valid_principal_name(""));
        assert!(!valid_principal_name("cert:x"));
        assert!(!valid_principal_name(&"a".repeat(65)));
    }
}
