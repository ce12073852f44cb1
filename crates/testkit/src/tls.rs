//! Certificates made at run time for the TLS tests (nothing committed, nothing expires in the
//! repository): a [`TestCa`] issues server and client certificates, and [`TlsFiles`] writes a
//! CA, a server pair and a client pair into a temporary directory, with the flags that name
//! them and the client configurations that trust them.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct CertPair {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl CertPair {
    /// As a tonic identity (a client certificate, or a server's).
    pub fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }
}

/// A certificate authority made for one test.
#[derive(Debug)]
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        Self {
            issuer: CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA certificate as tonic's root certificate.
    pub fn certificate(&self) -> Certificate {
        Certificate::from_pem(self.pem())
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    pub fn server(&self, name: &str) -> CertPair {
        self.issue(name, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate.
    pub fn client(&self, name: &str) -> CertPair {
        self.issue(name, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, name: &str, usage: ExtendedKeyUsagePurpose) -> CertPair {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A CA, a server pair and a client pair written to a temporary directory (removed on drop):
/// `ca.pem`, `server.pem`, `server.key`, `client.pem`, `client.key`.
#[derive(Debug)]
pub struct TlsFiles {
    /// The directory.
    pub dir: tempfile::TempDir,
    /// The CA that issued both pairs.
    pub ca: TestCa,
    /// The server's pair (for `localhost` and `127.0.0.1`).
    pub server: CertPair,
    /// A client pair.
    pub client: CertPair,
}

impl Default for TlsFiles {
    fn default() -> Self {
        Self::new()
    }
}

impl TlsFiles {
    /// A new CA and pairs, written out.
    pub fn new() -> Self {
        let ca = TestCa::new("unclip test CA");
        let server = ca.server("unclip test server");
        let client = ca.client("unclip test client");
        let files = Self {
            dir: tempfile::tempdir().unwrap(),
            ca,
            server,
            client,
        };
        files.write("ca.pem", &files.ca.pem());
        files.write("server.pem", &files.server.cert_pem);
        files.write("server.key", &files.server.key_pem);
        files.write("client.pem", &files.client.cert_pem);
        files.write("client.key", &files.client.key_pem);
        files
    }

    /// The path of `name` in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `contents` to `name` in the directory (replacing it) and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        write_replacing(&path, contents);
        path
    }

    /// `--tls-cert server.pem --tls-key server.key`.
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.path_str("server.pem"),
            "--tls-key".into(),
            self.path_str("server.key"),
        ]
    }

    /// [`server_args`](Self::server_args) and `--tls-client-ca ca.pem`: mutual TLS.
    pub fn mutual_server_args(&self) -> Vec<String> {
        let mut args = self.server_args();
        args.extend(["--tls-client-ca".into(), self.path_str("ca.pem")]);
        args
    }

    /// A client that trusts the CA and presents no certificate.
    pub fn client_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new().ca_certificate(self.ca.certificate())
    }

    /// A client that trusts the CA and presents the client pair (for mutual TLS).
    pub fn mutual_client_tls(&self) -> ClientTlsConfig {
        self.client_tls().identity(self.client.identity())
    }

    fn path_str(&self, name: &str) -> String {
        self.path(name).to_str().expect("a UTF-8 temp path").into()
    }
}

/// Replaces `path` with `contents` atomically (write a sibling, rename), as a deployment would.
pub fn write_replacing(path: &Path, contents: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, contents).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// A channel to `https://{addr}` with `tls`, connected now (the TCP and TLS handshakes done;
/// with TLS 1.3 a client certificate the server refuses shows only on the first call).
pub async fn tls_channel(
    addr: std::net::SocketAddr,
    tls: ClientTlsConfig,
) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect()
        .await
}

/// `GET path` of the HTTPS service at `addr`, trusting `ca_pem` and presenting `client` when
/// given, over HTTP/1.1 (ALPN `http/1.1`); as [`http_get`](crate::http_get) otherwise.
pub async fn https_get(
    addr: std::net::SocketAddr,
    path: &str,
    ca_pem: &str,
    client: Option<&CertPair>,
) -> std::io::Result<crate::Scrape> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::sync::Arc;
    use tokio_rustls::rustls;

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    #[allow(deprecated)] // ring, as the services use.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(pair) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(pair.cert_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    let stream = connector.connect(name, tcp).await?;
    Ok(crate::metrics::get_over(stream, &addr.to_string(), path, &[]).await)
}
