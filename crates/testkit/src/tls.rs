//! A certificate authority made at test time, so TLS tests need no files
//! from the repository and no real CA.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;

/// A CA and a server certificate for `localhost` and `127.0.0.1` it signed;
/// it can sign client certificates too.
pub struct TestCa {
    ca: CertifiedIssuer<'static, KeyPair>,
    ca_pem: String,
    server_chain: Vec<CertificateDer<'static>>,
    server_pem: String,
    server_key: Vec<u8>,
    server_key_pem: String,
}

impl TestCa {
    /// Generates a fresh CA and server certificate.
    pub fn new() -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "valet test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("CA");
        let server_key = KeyPair::generate().expect("key");
        let server_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("params");
        let server = server_params.signed_by(&server_key, &ca).expect("server cert");
        Self {
            ca_pem: ca.pem(),
            server_chain: vec![server.der().clone()],
            server_pem: server.pem(),
            server_key: server_key.serialize_der(),
            server_key_pem: server_key.serialize_pem(),
            ca,
        }
    }

    /// The server certificate, PEM (for a listener's `cert_file`).
    pub fn server_pem(&self) -> &str {
        &self.server_pem
    }

    /// The server key, PEM (for a listener's `key_file`).
    pub fn server_key_pem(&self) -> &str {
        &self.server_key_pem
    }

    /// A client certificate and key (PEM) naming `identity`: a URI SAN when
    /// it has a scheme (`spiffe://…`), else a DNS SAN (what Valet reads).
    pub fn client(&self, identity: &str) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        let san = if identity.contains("://") {
            rcgen::SanType::URI(identity.try_into().expect("an IA5 string"))
        } else {
            rcgen::SanType::DnsName(identity.try_into().expect("an IA5 string"))
        };
        params.subject_alt_names = vec![san];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.ca).expect("client cert");
        (cert.pem(), key.serialize_pem())
    }

    /// The CA certificate, PEM, for a vendor's `ca_file`.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A rustls server config presenting the server certificate.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(self.server_chain.clone(), key)
            .expect("server cert and key match");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl TestCa {
    /// A rustls server config presenting the server certificate that asks
    /// for a client certificate signed by this CA, and also serves clients
    /// without one.
    pub fn server_config_asking_client_certs(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).expect("the CA certificate");
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .expect("verifier");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.server_chain.clone(), key)
            .expect("server cert and key match");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}
