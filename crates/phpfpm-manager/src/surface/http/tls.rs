//! TLS for the HTTP surface (rustls, with the `ring` provider): the server
//! certificate and key from PEM files, optionally a client CA (mTLS: a
//! client must present a certificate it signed, and the certificate's
//! subject common name is its principal, `server.auth.certificates`).
//!
//! The files are read at start and again on every SIGHUP. A reload that
//! fails (a missing file, a key that does not match its certificate) keeps
//! the configuration in use and is reported (log and a `config_change`
//! event). Connections already open keep the certificate they started with.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Tls};
use crate::events::{ManagerEvent, What};
use crate::state::AppState;

/// What a TLS connection's client proved, handed to every request of the
/// connection (read by the auth layer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// The subject CN of the verified client certificate, if one was sent.
    pub common_name: Option<String>,
}

/// A TLS setting that cannot be used, naming the key and the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {path}: {problem}")]
pub struct TlsError {
    pub key: &'static str,
    pub path: String,
    pub problem: String,
}

fn err(key: &'static str, path: &Path, problem: impl std::fmt::Display) -> TlsError {
    TlsError {
        key,
        path: path.display().to_string(),
        problem: problem.to_string(),
    }
}

/// Reads the files of `tls` into a rustls server configuration.
pub fn server_config(tls: &Tls) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs("server.tls.cert_path", &tls.cert_path)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_path).map_err(|e| {
        err(
            "server.tls.key_path",
            &tls.key_path,
            format!("cannot read a PEM private key: {e}"),
        )
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("server.tls.cert_path", &tls.cert_path, e))?;
    let builder = match &tls.client_ca_path {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs("server.tls.client_ca_path", ca)? {
                roots
                    .add(c)
                    .map_err(|e| err("server.tls.client_ca_path", ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| err("server.tls.client_ca_path", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(certs, key).map_err(|e| {
        err(
            "server.tls.key_path",
            &tls.key_path,
            format!(
                "does not go with the certificate in {}: {e}",
                tls.cert_path.display()
            ),
        )
    })?;
    // The server speaks HTTP/1.1 only.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(key, path, format!("cannot read: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(key, path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(err(key, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// Checks that the TLS files of `cfg` can be used, before the manager starts.
pub fn check(cfg: &Config) -> Result<(), TlsError> {
    match &cfg.server.tls {
        Some(tls) => server_config(tls).map(|_| ()),
        None => Ok(()),
    }
}

/// The configuration new connections get; replaced whole on reload.
#[derive(Debug)]
pub struct TlsServer {
    tls: Tls,
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsServer {
    pub fn load(tls: &Tls) -> Result<TlsServer, TlsError> {
        Ok(TlsServer {
            tls: tls.clone(),
            current: RwLock::new(Arc::new(server_config(tls)?)),
        })
    }

    /// Reads the files again; on failure the configuration in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Arc::new(server_config(&self.tls)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// Reloads the certificate on every SIGHUP until `stop`, reporting each
/// outcome.
pub fn reload_on_sighup(server: Arc<TlsServer>, state: Arc<AppState>, stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("Cannot watch SIGHUP for TLS certificate reloads: {e}.");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                got = hup.recv() => if got.is_none() { break },
            }
            let what = match server.reload() {
                Ok(()) => {
                    let message = format!(
                        "{} and {}",
                        server.tls.cert_path.display(),
                        server.tls.key_path.display()
                    );
                    tracing::info!("TLS certificate reloaded from {message}.");
                    What::TlsReload {
                        accepted: true,
                        message,
                    }
                }
                Err(e) => {
                    tracing::error!(
                        "TLS certificate reload refused, the previous certificate stays in use: {e}."
                    );
                    What::TlsReload {
                        accepted: false,
                        message: e.to_string(),
                    }
                }
            };
            state.events.emit(ManagerEvent::new(None, "config", what));
        }
    });
}

/// The subject common name of the first (leaf) certificate, if it has one.
pub fn peer_common_name(certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    let der = certs?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `cn` and its key, as PEM.
    fn self_signed(cn: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let cert = p.self_signed(&key).unwrap();
        (cert, key)
    }

    fn files(dir: &Path, cert: &str, key: &str) -> Tls {
        std::fs::write(dir.join("c.pem"), cert).unwrap();
        std::fs::write(dir.join("k.pem"), key).unwrap();
        Tls {
            cert_path: dir.join("c.pem"),
            key_path: dir.join("k.pem"),
            client_ca_path: None,
            ca_path: None,
        }
    }

    #[test]
    fn a_certificate_and_its_key_load_and_a_failed_reload_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed("one");
        let tls = files(dir.path(), &cert.pem(), &key.serialize_pem());
        let server = TlsServer::load(&tls).unwrap();
        let before = server.current.read().unwrap().clone();
        assert_eq!(before.alpn_protocols, vec![b"http/1.1".to_vec()]);
        // The key of another certificate: refused, naming the key file.
        let (_, other_key) = self_signed("two");
        std::fs::write(&tls.key_path, other_key.serialize_pem()).unwrap();
        let e = server.reload().unwrap_err();
        assert_eq!(e.key, "server.tls.key_path", "{e}");
        assert!(
            e.to_string().contains("does not go with the certificate"),
            "{e}"
        );
        assert!(Arc::ptr_eq(&before, &server.current.read().unwrap()));
        // A missing file names its key and path.
        std::fs::remove_file(&tls.cert_path).unwrap();
        let e = server_config(&tls).unwrap_err();
        assert_eq!(e.key, "server.tls.cert_path");
        assert!(e.path.ends_with("c.pem"), "{e}");
        // Not PEM at all.
        std::fs::write(&tls.cert_path, "hello\n").unwrap();
        let e = server_config(&tls).unwrap_err();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        // Good files again: the reload takes them.
        let (cert, key) = self_signed("three");
        let tls = files(dir.path(), &cert.pem(), &key.serialize_pem());
        server.reload().unwrap();
        assert!(!Arc::ptr_eq(&before, &server.current.read().unwrap()));
        // A client CA that is not a certificate.
        let bad_ca = Tls {
            client_ca_path: Some(dir.path().join("k.pem")),
            ..tls
        };
        assert_eq!(
            server_config(&bad_ca).unwrap_err().key,
            "server.tls.client_ca_path"
        );
    }

    #[test]
    fn the_common_name_of_the_leaf_is_read() {
        let (cert, _) = self_signed("ci.example.com");
        let der = cert.der().clone();
        assert_eq!(
            peer_common_name(Some(&[der])),
            Some("ci.example.com".to_owned())
        );
        assert_eq!(peer_common_name(None), None);
        assert_eq!(peer_common_name(Some(&[])), None);
    }
}
