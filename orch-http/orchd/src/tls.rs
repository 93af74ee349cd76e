//! HTTPS for `orchd serve`: [`TlsHandshake`], the [`Handshake`] that makes each accepted TCP
//! connection a TLS stream (rustls, HTTP/1.1 by ALPN), from a certificate chain and key in PEM
//! files (`server.tls.cert_file`, `server.tls.key_file`).
//!
//! A plain-HTTP client that talks to the HTTPS port gets a clear answer instead of a reset or
//! a hang: a TLS connection starts with a handshake record (byte `0x16`), a plain request with
//! an ASCII method, so the first byte tells them apart, and a plain request is answered with a
//! `400` (JSON, like every error of the API) saying to use `https://`, then closed.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tls = orchd::tls::TlsHandshake::from_pem_files(
//!     "/etc/orchd/cert.pem".as_ref(),
//!     "/etc/orchd/key.pem".as_ref(),
//! )?;
//! # let _ = tls;
//! # Ok(()) }
//! ```

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use orch_http::config::ConfigError;
use orch_http::server::Handshake;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The first byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The answer to a plain-HTTP request on the HTTPS port.
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: application/json\r\n\
Connection: close\r\n\
Content-Length: 93\r\n\
\r\n\
{\"error\":\"this port speaks HTTPS: use https:// (a plain HTTP request was sent)\",\"field\":null}";

/// TLS on every accepted connection, with the certificate it was made from.
#[derive(Clone)]
pub struct TlsHandshake {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for TlsHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsHandshake").finish_non_exhaustive()
    }
}

impl TlsHandshake {
    /// Reads the certificate chain (server certificate first) and its private key; the error
    /// names the key of the file at fault.
    pub fn from_pem_files(cert_file: &Path, key_file: &Path) -> Result<Self, ConfigError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
            .and_then(|certs| certs.collect())
            .map_err(|e| {
                ConfigError::new(
                    "server.tls.cert_file",
                    format!("cannot read certificates from {}: {e}", cert_file.display()),
                )
            })?;
        if certs.is_empty() {
            return Err(ConfigError::new(
                "server.tls.cert_file",
                format!("{} holds no PEM certificate", cert_file.display()),
            ));
        }
        let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
            ConfigError::new(
                "server.tls.key_file",
                format!("cannot read a private key from {}: {e}", key_file.display()),
            )
        })?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::new("server.tls", e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                ConfigError::new(
                    "server.tls.key_file",
                    format!("the key does not fit the certificate: {e}"),
                )
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsHandshake {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

impl Handshake for TlsHandshake {
    type Stream = TlsStream<TcpStream>;

    async fn handshake(
        &self,
        mut tcp: TcpStream,
        remote: SocketAddr,
    ) -> io::Result<TlsStream<TcpStream>> {
        let mut first = [0u8; 1];
        if tcp.peek(&mut first).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before a handshake",
            ));
        }
        if first[0] != TLS_HANDSHAKE_RECORD {
            if first[0].is_ascii_alphabetic() {
                tracing::debug!(%remote, "plain HTTP on the HTTPS port");
                answer_plain_http(&mut tcp).await?;
            }
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a TLS handshake",
            ));
        }
        self.acceptor.accept(tcp).await
    }
}

/// Reads the request's head (so closing does not reset the connection under the client's
/// feet), answers, and closes once the client has (or after a second).
async fn answer_plain_http(tcp: &mut TcpStream) -> io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    let read_head = async {
        while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tcp.read(&mut buffer).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buffer[..n]);
        }
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), read_head).await;
    tcp.write_all(PLAIN_HTTP_ANSWER).await?;
    tcp.shutdown().await?;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while tcp.read(&mut buffer).await.is_ok_and(|n| n > 0) {}
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::PLAIN_HTTP_ANSWER;

    #[test]
    fn the_plain_http_answer_has_its_length() {
        let text = std::str::from_utf8(PLAIN_HTTP_ANSWER).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(json["error"].as_str().unwrap().contains("https://"));
    }
}
