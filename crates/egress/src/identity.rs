//! Client certificates: mutual TLS to a vendor with a tenant's own
//! certificate (RFC 8705), each identity with a connection pool of its own.
//!
//! A [`ClientIdentity`] is read from the tenant's grant material (PEM
//! chain and key) when a call needs it; its key then lives in the rustls
//! config of that identity's pool ([`Clients`]) for as long as the pool
//! does, and nowhere else. Pools are keyed by the identity's id (a hash of
//! its certificate chain and key), so a replaced certificate gets a new
//! pool, and two tenants never share a connection.

use crate::resolve::{AddressPolicy, GuardedResolver};
use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A pooled client that reaches only allowed addresses.
pub(crate) type GuardedClient = Client<HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>;

/// A tenant's client certificate chain and key.
pub struct ClientIdentity {
    id: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ClientIdentity {
    /// Reads a PEM certificate chain and its PEM private key. The error
    /// never quotes either.
    pub fn from_pem(cert: &str, key: &str) -> Result<Self, &'static str> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|_| "client_cert is not a PEM certificate chain")?;
        if chain.is_empty() {
            return Err("client_cert holds no PEM certificate");
        }
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
            .map_err(|_| "client_key is not a PEM private key")?;
        rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|_| "client_key is not a key rustls can sign with")?;
        let mut hash = Sha256::new();
        for c in &chain {
            hash.update(c.as_ref());
        }
        hash.update(key.secret_der());
        let id = hash
            .finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Self { id, chain, key })
    }

    /// A hash of the chain and key: the pool's name.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The certificate's RFC 8705 thumbprint (`x5t#S256`: SHA-256 of the
    /// leaf's DER, base64url), which a bound token's `cnf` names.
    pub fn thumbprint(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(self.chain[0].as_ref()))
    }
}

/// Most identities with a pool of their own per vendor; past it the pools
/// are dropped and rebuilt as calls need them.
const MAX_POOLS: usize = 10_000;

/// How an endpoint's connections are made (its vendor's settings).
#[derive(Clone)]
pub(crate) struct Reach {
    pub(crate) policy: AddressPolicy,
    pub(crate) pinned: Arc<[IpAddr]>,
    pub(crate) timeout: Duration,
    pub(crate) allow_http: bool,
    pub(crate) idle_per_host: usize,
}

/// The pooled clients of one endpoint: the plain one, and one per client
/// identity.
pub(crate) struct Clients {
    plain: GuardedClient,
    roots: Arc<rustls::RootCertStore>,
    reach: Reach,
    by_identity: Mutex<HashMap<String, GuardedClient>>,
}

impl Clients {
    pub(crate) fn new(roots: Arc<rustls::RootCertStore>, reach: Reach) -> Self {
        Self {
            plain: build(&reach, client_config(&roots).with_no_client_auth()),
            roots,
            reach,
            by_identity: Mutex::default(),
        }
    }

    /// The client for `identity` (the plain one for `None`).
    pub(crate) fn get(&self, identity: Option<&ClientIdentity>) -> Result<GuardedClient, String> {
        let Some(identity) = identity else {
            return Ok(self.plain.clone());
        };
        let mut pools = self.by_identity.lock().expect("lock");
        if let Some(client) = pools.get(identity.id()) {
            return Ok(client.clone());
        }
        let tls = client_config(&self.roots)
            .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(|e| format!("the client certificate cannot be used: {e}"))?;
        let client = build(&self.reach, tls);
        if pools.len() >= MAX_POOLS {
            pools.clear();
        }
        pools.insert(identity.id().to_owned(), client.clone());
        Ok(client)
    }
}

/// A client over `tls` that connects as `reach` says.
fn build(reach: &Reach, tls: rustls::ClientConfig) -> GuardedClient {
    let mut http = HttpConnector::new_with_resolver(GuardedResolver {
        policy: reach.policy,
        pinned: reach.pinned.clone(),
    });
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(reach.timeout));
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
    let connector = if reach.allow_http {
        builder.https_or_http().enable_all_versions().wrap_connector(http)
    } else {
        builder.https_only().enable_all_versions().wrap_connector(http)
    };
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(reach.idle_per_host)
        .build(connector)
}

fn client_config(
    roots: &Arc<rustls::RootCertStore>,
) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots.clone())
}
