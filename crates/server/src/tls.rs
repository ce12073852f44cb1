//! TLS on a service's listener, optionally mutual: the certificate, key and client CA come
//! from PEM files ([`TlsFiles`]) and can be reloaded while serving. [`ReloadingTls`] holds the
//! current rustls configuration and swaps it atomically on reload; a connection keeps the
//! configuration of its handshake, so reloading drops nothing. [`ReloadingTls::incoming`]
//! turns a bound listener into a stream of TLS connections for tonic's
//! `serve_with_incoming_shutdown` (TCP_NODELAY on, handshakes concurrent and bounded in time,
//! ALPN `h2` and `http/1.1` so `/metrics` and other HTTP routes work over TLS too).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

/// A TLS connection as the server receives it.
pub type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// Longest a client may take to finish its handshake before the connection is closed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS file that cannot be used: the flag, the file and what is wrong, in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag} {}: {problem}", path.display())]
pub struct TlsError {
    /// The flag that named the file, e.g. `--tls-cert`.
    pub flag: &'static str,
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: String,
}

/// Where a server's TLS material is: PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (`--tls-cert`).
    pub cert: PathBuf,
    /// The private key of the leaf (`--tls-key`): PKCS#8, PKCS#1 or SEC1.
    pub key: PathBuf,
    /// When set, clients must present a certificate issued by one of these CAs
    /// (`--tls-client-ca`): mutual TLS.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Every file, to watch for changes.
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.cert.clone(), self.key.clone()];
        paths.extend(self.client_ca.clone());
        paths
    }

    /// Reads and checks the files into a server configuration offering `alpn`.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
        // ring, as tonic's `tls-ring` uses on the client side (rustls 0.23.48 deprecates it
        // only for lacking post-quantum key exchange; aws-lc-rs would need a C toolchain).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = read_certs("--tls-cert", &self.cert)?;
        let key = read_key("--tls-key", &self.key)?;
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| error("--tls-cert", &self.cert, e))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs("--tls-client-ca", path)? {
                    roots.add(cert).map_err(|e| {
                        error(
                            "--tls-client-ca",
                            path,
                            format!("not a usable CA certificate: {e}"),
                        )
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| error("--tls-client-ca", path, e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            let problem = match e {
                rustls::Error::InconsistentKeys(_) => format!(
                    "the key in {} does not belong to this certificate",
                    self.key.display()
                ),
                e => e.to_string(),
            };
            error("--tls-cert", &self.cert, problem)
        })?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }
}

fn error(flag: &'static str, path: &Path, problem: impl ToString) -> TlsError {
    TlsError {
        flag,
        path: path.to_owned(),
        problem: problem.to_string(),
    }
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| error(flag, path, format!("cannot read: {e}")))
}

/// Every certificate of a PEM file (at least one).
fn read_certs(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(flag, path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(error(
            flag,
            path,
            "no certificate (BEGIN CERTIFICATE) in the file",
        ));
    }
    Ok(certs)
}

/// The private key of a PEM file.
fn read_key(flag: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(flag, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            error(flag, path, "no private key (BEGIN PRIVATE KEY) in the file")
        }
        e => error(flag, path, format!("not a PEM private key file: {e}")),
    })
}

/// The contents of a PEM certificate file named by `flag`, checked to hold at least one
/// certificate (for a client's CA bundle or certificate chain).
pub fn read_pem_certificates(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    read_certs(flag, path)?;
    read(flag, path)
}

/// The contents of a PEM private key file named by `flag`, checked to hold a key.
pub fn read_pem_key(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    read_key(flag, path)?;
    read(flag, path)
}

/// A server's TLS configuration, reloadable from its files while serving.
#[derive(Debug)]
pub struct ReloadingTls {
    /// Where it is loaded from.
    files: TlsFiles,
    /// The ALPN protocols offered.
    alpn: Vec<&'static [u8]>,
    /// What new handshakes use; swapped whole on reload.
    current: ArcSwap<ServerConfig>,
}

impl ReloadingTls {
    /// Loads `files`, offering HTTP/2 and, when `http1`, HTTP/1.1 too. A bad file is an error
    /// naming it.
    pub fn load(files: TlsFiles, http1: bool) -> Result<Self, TlsError> {
        let alpn: Vec<&'static [u8]> = if http1 {
            vec![b"h2", b"http/1.1"]
        } else {
            vec![b"h2"]
        };
        let config = files.server_config(&alpn)?;
        Ok(Self {
            files,
            alpn,
            current: ArcSwap::from_pointee(config),
        })
    }

    /// The files it loads from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Reads the files again; new handshakes use them. On an error the configuration in use
    /// stays, and the error is returned.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = self.files.server_config(&self.alpn)?;
        self.current.store(Arc::new(config));
        Ok(())
    }

    /// [`ReloadingTls::reload`], logging the outcome.
    pub fn reload_and_log(&self) {
        match self.reload() {
            Ok(()) => tracing::info!(cert = %self.files.cert.display(), "TLS files reloaded"),
            Err(e) => {
                tracing::error!(cause = %e, "TLS files not reloaded; keeping the ones in use")
            }
        }
    }

    /// The connections accepted on `listener`, after their TLS handshake, with TCP_NODELAY.
    /// Handshakes run concurrently, each for at most 10 s; a failed one is logged and the
    /// connection closed. Accepting stops when the stream is dropped (which closes the
    /// listener).
    pub fn incoming(
        self: &Arc<Self>,
        listener: TcpListener,
    ) -> ReceiverStream<io::Result<TlsStream>> {
        let (sender, receiver) = mpsc::channel(64);
        let tls = Arc::clone(self);
        tokio::spawn(async move {
            let mut accepted = crate::grpc::incoming(listener);
            loop {
                let tcp = tokio::select! {
                    _ = sender.closed() => return,
                    next = accepted.next() => match next {
                        Some(Ok(tcp)) => tcp,
                        Some(Err(e)) => {
                            tracing::warn!(cause = %e, "cannot accept a connection");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                        None => return,
                    },
                };
                let acceptor = TlsAcceptor::from(tls.current.load_full());
                let sender = sender.clone();
                tokio::spawn(async move {
                    let peer = tcp.peer_addr().ok();
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = sender.send(Ok(stream)).await;
                        }
                        Ok(Err(e)) => tracing::info!(?peer, cause = %e, "TLS handshake failed"),
                        Err(_) => tracing::info!(?peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        ReceiverStream::new(receiver)
    }
}
