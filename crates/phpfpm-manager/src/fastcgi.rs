//! FastCGI transport: one short connection per request to a pool's unix or TCP
//! endpoint, with a connect timeout and a total timeout.
//!
//! The record codec is the `fastcgi-client` crate; this module only opens the
//! connection, builds the CGI parameters php-fpm needs for its status and ping
//! pages, and bounds everything in time so one hung pool never stalls a caller.

use std::time::Duration;

use fastcgi_client::{Client, Params, Request};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::{timeout, Instant};

use crate::config::Endpoint;

/// What php-fpm sent back.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Why a request failed. [`FcgiError::kind`] is a stable label for metrics.
#[derive(Debug, thiserror::Error)]
pub enum FcgiError {
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: std::io::Error,
    },
    #[error("connecting to {endpoint} took longer than {timeout:?}")]
    ConnectTimeout { endpoint: String, timeout: Duration },
    #[error("no complete reply from {endpoint} within {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    #[error("FastCGI exchange with {endpoint} failed: {message}")]
    Protocol { endpoint: String, message: String },
}

impl FcgiError {
    pub fn kind(&self) -> &'static str {
        match self {
            FcgiError::Connect { .. } => "connect",
            FcgiError::ConnectTimeout { .. } => "connect_timeout",
            FcgiError::Timeout { .. } => "timeout",
            FcgiError::Protocol { .. } => "protocol",
        }
    }
}

/// Timeouts of one request.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// The whole request, connect included.
    pub total: Duration,
}

/// Sends `GET <script>?<query>` and returns the reply.
///
/// `script` is both `SCRIPT_NAME` and `SCRIPT_FILENAME`: php-fpm answers its
/// status and ping paths before looking for a file, and for a real script
/// (the OPcache probe) the caller passes its absolute path.
pub async fn get(
    endpoint: &Endpoint,
    script: &str,
    query: &str,
    timeouts: Timeouts,
) -> Result<Reply, FcgiError> {
    let started = Instant::now();
    let ep = endpoint.to_string();
    let work = async {
        match endpoint {
            Endpoint::Unix(path) => {
                let stream = connect(&ep, timeouts.connect, UnixStream::connect(path)).await?;
                exchange(&ep, Client::new_tokio(stream), script, query).await
            }
            Endpoint::Tcp(addr) => {
                let stream =
                    connect(&ep, timeouts.connect, TcpStream::connect(addr.as_str())).await?;
                // Small requests: do not wait for Nagle.
                let _ = stream.set_nodelay(true);
                exchange(&ep, Client::new_tokio(stream), script, query).await
            }
        }
    };
    match timeout(timeouts.total, work).await {
        Ok(res) => res,
        Err(_) => Err(FcgiError::Timeout {
            endpoint: ep,
            timeout: started.elapsed(),
        }),
    }
}

async fn connect<S>(
    ep: &str,
    limit: Duration,
    fut: impl std::future::Future<Output = std::io::Result<S>>,
) -> Result<S, FcgiError> {
    match timeout(limit, fut).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(source)) => Err(FcgiError::Connect {
            endpoint: ep.to_owned(),
            source,
        }),
        Err(_) => Err(FcgiError::ConnectTimeout {
            endpoint: ep.to_owned(),
            timeout: limit,
        }),
    }
}

async fn exchange<S>(
    ep: &str,
    client: Client<S, fastcgi_client::conn::ShortConn>,
    script: &str,
    query: &str,
) -> Result<Reply, FcgiError>
where
    S: fastcgi_client::io::AsyncRead + fastcgi_client::io::AsyncWrite + Unpin,
{
    let uri = if query.is_empty() {
        script.to_owned()
    } else {
        format!("{script}?{query}")
    };
    let params = Params::default()
        .request_method("GET")
        .script_name(script)
        .script_filename(script)
        .query_string(query)
        .request_uri(uri.as_str())
        .document_uri(script)
        .remote_addr("127.0.0.1")
        .remote_port(0)
        .server_addr("127.0.0.1")
        .server_port(0)
        .server_name("phpfpm-manager")
        .content_type("")
        .content_length(0);
    let res = client
        .execute_once(Request::new_tokio(params, tokio::io::empty()))
        .await
        .map_err(|e| FcgiError::Protocol {
            endpoint: ep.to_owned(),
            message: e.to_string(),
        })?;
    Ok(Reply {
        stdout: res.stdout.unwrap_or_default(),
        stderr: res.stderr.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    fn t(ms: u64) -> Timeouts {
        Timeouts {
            connect: Duration::from_millis(ms),
            total: Duration::from_millis(ms),
        }
    }

    #[tokio::test]
    async fn missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let ep = Endpoint::Unix(dir.path().join("nope.sock"));
        let err = get(&ep, "/status", "json", t(200)).await.unwrap_err();
        assert_eq!(err.kind(), "connect", "{err}");
        assert!(err.to_string().contains("nope.sock"), "{err}");
    }

    #[tokio::test]
    async fn silent_server_hits_the_total_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silent.sock");
        // Accepts and then never answers.
        let listener = UnixListener::bind(&path).unwrap();
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let started = Instant::now();
        let err = get(&Endpoint::Unix(path), "/status", "json", t(150))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), "timeout", "{err}");
        assert!(started.elapsed() < Duration::from_secs(1));
        holder.abort();
    }

    #[tokio::test]
    async fn closed_tcp_port_is_a_connect_error() {
        // Bind then drop to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let ep = Endpoint::Tcp(format!("127.0.0.1:{port}"));
        let err = get(&ep, "/ping", "", t(500)).await.unwrap_err();
        assert_eq!(err.kind(), "connect", "{err}");
    }
}
