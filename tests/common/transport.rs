//! How a test reaches the gateway: HTTP/1.1, prior-knowledge HTTP/2 (h2c), or HTTP/2 over TLS
//! (ALPN h2), with a test CA made in the test process by rcgen. Suites take a [`Transport`] and
//! run once per protocol (see [`over_transports!`]) instead of being copied.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// The protocol a test speaks to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain HTTP/1.1.
    Http1,
    /// Prior-knowledge HTTP/2 in cleartext (`listen.h2c = true`).
    H2c,
    /// HTTP/2 over TLS, negotiated by ALPN.
    H2Tls,
}

/// The name the gateway's test certificate is for (resolved to the listener by the client).
pub const TLS_HOST: &str = "edge.test";

impl Transport {
    /// Config lines that turn the protocol on (prepended: dotted keys at the document root).
    pub fn toml(self) -> String {
        match self {
            Transport::Http1 => String::new(),
            Transport::H2c => "listen.h2c = true\n".to_string(),
            Transport::H2Tls => {
                let (cert, key) = &shared_pki().edge;
                format!(
                    "tls.cert_file = \"{}\"\ntls.key_file = \"{}\"\n",
                    cert.display(),
                    key.display()
                )
            }
        }
    }

    pub fn url(self, addr: SocketAddr, path: &str) -> String {
        match self {
            Transport::Http1 | Transport::H2c => format!("http://{addr}{path}"),
            Transport::H2Tls => format!("https://{TLS_HOST}:{}{path}", addr.port()),
        }
    }

    /// A client that speaks this protocol to the gateway at `addr` (and nothing else).
    pub fn client(self, addr: SocketAddr) -> reqwest::Client {
        let b = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64);
        match self {
            Transport::Http1 => b.http1_only(),
            Transport::H2c => b.http2_prior_knowledge(),
            Transport::H2Tls => shared_pki()
                .trusting(b)
                .resolve(TLS_HOST, addr)
                .http2_prior_knowledge(),
        }
        .build()
        .expect("reqwest client")
    }

    /// The HTTP version every response must have come with.
    pub fn version(self) -> reqwest::Version {
        match self {
            Transport::Http1 => reqwest::Version::HTTP_11,
            Transport::H2c | Transport::H2Tls => reqwest::Version::HTTP_2,
        }
    }
}

/// Defines one `#[tokio::test]` per transport for `async fn $body(t: Transport)`, in a module
/// named after the test: `test_x::http1`, `test_x::h2c`, `test_x::h2_tls`.
#[macro_export]
macro_rules! over_transports {
    ($name:ident, $body:ident) => {
        mod $name {
            use super::*;
            #[tokio::test]
            async fn http1() {
                $body(common::transport::Transport::Http1).await
            }
            #[tokio::test]
            async fn h2c() {
                $body(common::transport::Transport::H2c).await
            }
            #[tokio::test]
            async fn h2_tls() {
                $body(common::transport::Transport::H2Tls).await
            }
        }
    };
}

/// A test CA and the certificates it issued, as PEM files in a directory.
pub struct Pki {
    pub dir: PathBuf,
    pub ca_pem: String,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    /// A certificate for [`TLS_HOST`] and `localhost`.
    pub edge: (PathBuf, PathBuf),
}

/// Validity of a certificate made by [`Pki::issue`].
#[derive(Debug, Clone, Copy)]
pub enum Validity {
    Current,
    Expired,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params
            .distinguished_name
            .push(DnType::CommonName, "raster-edge test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().expect("ca key");
        let ca = params.self_signed(&ca_key).expect("ca cert");
        let ca_pem = ca.pem();
        std::fs::write(dir.join("ca.pem"), &ca_pem).expect("write ca");
        let mut pki = Pki {
            dir: dir.to_path_buf(),
            ca_pem,
            ca,
            ca_key,
            edge: (PathBuf::new(), PathBuf::new()),
        };
        pki.edge = pki.issue("edge", &[TLS_HOST, "localhost"], Validity::Current);
        pki
    }

    /// Issues a leaf for `names`, written to `<file>.pem` and `<file>.key`; returns the paths.
    pub fn issue(&self, file: &str, names: &[&str], validity: Validity) -> (PathBuf, PathBuf) {
        let (cert, key) = self.issue_pem(names, validity);
        let cert_path = self.dir.join(format!("{file}.pem"));
        let key_path = self.dir.join(format!("{file}.key"));
        std::fs::write(&cert_path, cert).expect("write cert");
        std::fs::write(&key_path, key).expect("write key");
        (cert_path, key_path)
    }

    /// A leaf for `names` as (certificate chain PEM, key PEM).
    pub fn issue_pem(&self, names: &[&str], validity: Validity) -> (String, String) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        if let Validity::Expired = validity {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("sign leaf");
        (cert.pem(), key.serialize_pem())
    }

    /// `builder` trusting this CA only.
    pub fn trusting(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        builder.use_rustls_tls().add_root_certificate(
            reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("ca certificate"),
        )
    }
}

/// One CA and gateway certificate for every test of the process (made once, in a directory
/// that outlives the tests).
pub fn shared_pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("raster-edge-test-pki")
            .tempdir()
            .expect("pki dir")
            .keep();
        Pki::new(&dir)
    })
}
