//! The URL a stream of requests goes to, checked to be loopback (pure).
//!
//! Load is only ever sent to this machine: the host must be an address in
//! 127.0.0.0/8, `::1`, or the name `localhost` (taken as 127.0.0.1 without
//! asking a resolver, so a tampered hosts file cannot redirect it).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// A checked loopback HTTP target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    /// Value of the `Host` header.
    pub host: String,
    /// Path and query sent in the request line.
    pub path: String,
}

/// Why a URL was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("'{0}' is not a valid http:// URL")]
    Invalid(String),
    #[error("'{0}': only plain http:// is supported")]
    Scheme(String),
    #[error("'{url}': host '{host}' is not loopback; load is only sent to 127.0.0.0/8, ::1 or localhost")]
    NotLoopback { url: String, host: String },
}

impl Target {
    /// Parses and checks `http://HOST[:PORT]/PATH?QUERY`.
    pub fn parse(url: &str) -> Result<Target, TargetError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| TargetError::Invalid(url.to_owned()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => return Err(TargetError::Scheme(url.to_owned())),
            None => return Err(TargetError::Invalid(url.to_owned())),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| TargetError::Invalid(url.to_owned()))?;
        let host = authority.host();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let ip = if bare.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            bare.parse::<IpAddr>()
                .map_err(|_| TargetError::NotLoopback {
                    url: url.to_owned(),
                    host: host.to_owned(),
                })?
        };
        if !ip.is_loopback() {
            return Err(TargetError::NotLoopback {
                url: url.to_owned(),
                host: host.to_owned(),
            });
        }
        let port = authority.port_u16().unwrap_or(80);
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".to_owned());
        Ok(Target {
            addr: SocketAddr::new(ip, port),
            host: authority.as_str().to_owned(),
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn accepts_loopback_targets() {
        let t = Target::parse("http://127.0.0.1:8080/a/index.php?x=1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.path, "/a/index.php?x=1");
        assert_eq!(t.host, "127.0.0.1:8080");
        let t = Target::parse("http://127.1.2.3").unwrap();
        assert_eq!(t.addr, "127.1.2.3:80".parse().unwrap());
        assert_eq!(t.path, "/");
        let t = Target::parse("http://[::1]:9/").unwrap();
        assert_eq!(t.addr, "[::1]:9".parse().unwrap());
        let t = Target::parse("http://localhost:81/x").unwrap();
        assert_eq!(t.addr, "127.0.0.1:81".parse().unwrap());
    }

    #[test]
    fn refuses_everything_else() {
        for url in [
            "http://10.0.0.1/",
            "http://192.168.1.1:80/",
            "http://[2001:db8::1]/",
            "http://example.com/",
            "http://localhost.example.com/",
            "http://0.0.0.0:80/",
        ] {
            assert!(
                matches!(Target::parse(url), Err(TargetError::NotLoopback { .. })),
                "{url}"
            );
        }
        assert!(matches!(
            Target::parse("https://127.0.0.1/"),
            Err(TargetError::Scheme(_))
        ));
        assert!(matches!(
            Target::parse("127.0.0.1:80/x"),
            Err(TargetError::Invalid(_))
        ));
        assert!(matches!(
            Target::parse("not a url"),
            Err(TargetError::Invalid(_))
        ));
        let msg = Target::parse("http://10.1.1.1/").unwrap_err().to_string();
        assert!(msg.contains("not loopback"), "{msg}");
    }
}
