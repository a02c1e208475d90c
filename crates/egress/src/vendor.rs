//! A vendor: its base URL, how its credential is injected, its own
//! outbound client (connection pool, TLS roots, timeout), and
//! [`Vendor::send`], the one way a request leaves for it.

use crate::breaker::{Breaker, BreakerPolicy, BreakerState};
use crate::identity::{Clients, Reach};
use crate::request::RequestError;
use crate::resolve::AddressPolicy;
use crate::retry::{RetryBudget, RetryPolicy};
use crate::token::TokenEndpoint;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, Uri};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use valet_credentials::Secret;
use zeroize::Zeroizing;

/// How a vendor wants its credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthScheme {
    /// `Authorization: Bearer <secret>`.
    Bearer,
    /// `<name>: <secret>`.
    Header(HeaderName),
    /// `Authorization: Basic base64(<user:password>)`; the secret is
    /// `user:password`.
    Basic,
    /// `?<name>=<secret>` appended to the query.
    Query(String),
    /// OAuth 2.0: the stored secret is the grant material (client id and
    /// secret, and a refresh token), exchanged at the vendor's token
    /// endpoint for short-lived access tokens (see `valet-oauth`); the
    /// access token is sent as `Authorization: Bearer <token>`.
    OAuth2(Arc<crate::token::OAuthSpec>),
}

impl AuthScheme {
    /// Whether `secret` has the shape this scheme needs.
    pub fn check_secret(&self, secret: &Secret) -> Result<(), &'static str> {
        match self {
            AuthScheme::Basic if !secret.expose().contains(&b':') => {
                Err("for basic auth must be 'user:password'")
            }
            AuthScheme::OAuth2(oauth) => crate::token::GrantMaterial::parse(secret, oauth).map(drop),
            _ => Ok(()),
        }
    }

    /// The header a caller must not set because it carries the credential
    /// (beyond `Authorization`, which is always refused).
    pub fn header(&self) -> Option<&HeaderName> {
        match self {
            AuthScheme::Header(name) => Some(name),
            _ => None,
        }
    }
}

/// A vendor entry, as read from configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct VendorSpec {
    /// Registry name.
    pub name: String,
    /// Base URL; every call's path is appended to it.
    pub base_url: String,
    /// Allow `http://` (loopback tests only).
    pub allow_insecure_http: bool,
    /// How the credential is injected.
    pub auth: AuthScheme,
    /// PEM file of CA certificates to trust instead of the public roots.
    pub ca_file: Option<PathBuf>,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// The request that proves a new credential works, made by rotation.
    pub verify: Option<VerifyRequest>,
    /// The header carrying our idempotency key to a vendor that dedupes by
    /// it (e.g. `Idempotency-Key`).
    pub idempotency_header: Option<HeaderName>,
    /// Whether WRITE calls must carry an idempotency key.
    pub require_idempotency_key: bool,
    /// When failed attempts are retried.
    pub retry: RetryPolicy,
    /// When the vendor is given a rest.
    pub breaker: BreakerPolicy,
    /// Allow loopback, private, link-local and other special addresses
    /// (see [`crate::resolve`]).
    pub allow_private_addresses: bool,
    /// Requests in flight to this vendor at once; more are refused at once.
    pub max_concurrent_requests: usize,
    /// Addresses to connect to instead of looking the host up (checked like
    /// DNS answers); empty: DNS.
    pub resolve_to: Vec<std::net::IpAddr>,
}

/// A vendor's credential check: a request that needs a valid credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyRequest {
    /// Method.
    pub method: http::Method,
    /// Path, checked by [`crate::path::parse`].
    pub path: String,
    /// Query without `?`.
    pub query: Option<String>,
}

/// Why a vendor entry is unusable.
#[derive(Debug, thiserror::Error)]
pub enum VendorError {
    /// The base URL is malformed or not allowed.
    #[error("base_url: {0}")]
    BaseUrl(String),
    /// An OAuth vendor's token URL is malformed or not allowed.
    #[error("auth.token_url: {0}")]
    TokenUrl(String),
    /// An OAuth vendor's revocation URL is malformed or not allowed.
    #[error("auth.revocation_url: {0}")]
    RevocationUrl(String),
    /// A `resolve_to` address is one the vendor may not be reached at.
    #[error(
        "resolve_to: {addr} is {} address; set allow_private_addresses = true if this vendor really lives there",
        crate::resolve::with_article(class)
    )]
    ResolveTo {
        /// The refused address.
        addr: std::net::IpAddr,
        /// Its class.
        class: &'static str,
    },
    /// A retry, breaker or limit setting is out of range.
    #[error("{0}")]
    Policy(String),
    /// The CA file could not be read or holds no certificate.
    #[error("ca_file {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The parts of the base URL a joined URL must keep.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub(crate) scheme: Scheme,
    pub(crate) authority: Authority,
    /// Path prefix without a trailing `/` (empty for the root).
    pub(crate) prefix: String,
}

impl Origin {
    /// The class of address `policy` refuses, when the host is a literal IP
    /// address (a name is checked when it resolves).
    fn literal_refused(&self, policy: AddressPolicy) -> Option<&'static str> {
        let host = self
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        host.parse().ok().and_then(|ip| policy.refuses(ip))
    }
}

/// A ready vendor: spec, parsed origin, pooled client, and the state that
/// protects it (breaker, retry budget, concurrency slots).
pub struct Vendor {
    pub(crate) spec: VendorSpec,
    pub(crate) origin: Origin,
    /// Its connection pools: one plain, one per tenant client certificate.
    pub(crate) clients: Clients,
    pub(crate) breaker: Breaker,
    pub(crate) budget: RetryBudget,
    pub(crate) slots: Arc<Semaphore>,
    /// The token endpoint, for an OAuth 2.0 vendor.
    pub(crate) token: Option<crate::token::TokenEndpoint>,
    /// Its revocation endpoint, if configured.
    pub(crate) revocation: Option<crate::token::TokenEndpoint>,
}

impl std::fmt::Debug for Vendor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vendor")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// Characters escaped in a query value: everything but RFC 3986 unreserved.
/// The scrubber finds this form by decoding (see [`crate::scrub`]).
pub(crate) const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

impl Vendor {
    /// Checks the spec and builds the vendor's client.
    pub fn new(spec: VendorSpec) -> Result<Self, VendorError> {
        let origin = parse_base_url(&spec.base_url, spec.allow_insecure_http)?;
        let policy = AddressPolicy {
            allow_private: spec.allow_private_addresses,
            allow_loopback: spec.allow_insecure_http,
        };
        if let Some(class) = origin.literal_refused(policy) {
            return Err(VendorError::BaseUrl(format!(
                "is {} address; set allow_private_addresses = true if this vendor really lives there",
                crate::resolve::with_article(class)
            )));
        }
        // Pinned addresses are as literal as a base URL's: refuse them now,
        // not on the first call.
        for &addr in &spec.resolve_to {
            if let Some(class) = policy.refuses(addr) {
                return Err(VendorError::ResolveTo { addr, class });
            }
        }
        spec.retry.validate().map_err(VendorError::Policy)?;
        spec.breaker.validate().map_err(VendorError::Policy)?;
        if spec.max_concurrent_requests == 0 {
            return Err(VendorError::Policy(
                "max_concurrent_requests must be at least 1".into(),
            ));
        }
        let roots = Arc::new(root_store(spec.ca_file.as_ref())?);
        let reach = |idle_per_host| Reach {
            policy,
            pinned: spec.resolve_to.clone().into(),
            timeout: spec.timeout,
            allow_http: spec.allow_insecure_http,
            idle_per_host,
        };
        let clients = Clients::new(roots.clone(), reach(spec.max_concurrent_requests));
        let (token, revocation) = match &spec.auth {
            AuthScheme::OAuth2(oauth) => {
                let endpoint = |url: &str| {
                    oauth_endpoint(&spec, url, policy).map(|uri| {
                        TokenEndpoint::new(
                            &spec.name,
                            uri,
                            spec.timeout,
                            Clients::new(roots.clone(), reach(4)),
                        )
                    })
                };
                let token = endpoint(&oauth.token_url).map_err(VendorError::TokenUrl)?;
                let revocation = match &oauth.revocation_url {
                    None => None,
                    Some(url) => Some(endpoint(url).map_err(VendorError::RevocationUrl)?),
                };
                (Some(token), revocation)
            }
            _ => (None, None),
        };
        Ok(Self {
            breaker: Breaker::new(spec.breaker.clone()),
            budget: RetryBudget::new(&spec.retry),
            slots: Arc::new(Semaphore::new(spec.max_concurrent_requests)),
            spec,
            origin,
            clients,
            token,
            revocation,
        })
    }

    /// The vendor's OAuth 2.0 settings, if it uses OAuth.
    pub fn oauth(&self) -> Option<&crate::token::OAuthSpec> {
        match &self.spec.auth {
            AuthScheme::OAuth2(oauth) => Some(oauth),
            _ => None,
        }
    }

    /// The vendor's token endpoint, if it uses OAuth.
    pub fn token_endpoint(&self) -> Option<&crate::token::TokenEndpoint> {
        self.token.as_ref()
    }

    /// The vendor's token revocation endpoint, if it has one.
    pub fn revocation_endpoint(&self) -> Option<&crate::token::TokenEndpoint> {
        self.revocation.as_ref()
    }

    /// Sends `req` with `secret` injected, retrying when it is safe and
    /// worth it (see [`crate::send`]), through the vendor's circuit breaker
    /// and concurrency slots, and says what happened: the last answer,
    /// scrubbed, or the error, with the attempts made and whether any may
    /// have reached the vendor.
    pub async fn send(
        &self,
        req: crate::ProxyRequest,
        secret: &Secret,
        x: &crate::Exchange<'_>,
    ) -> crate::Sent {
        crate::send::send(self, req, secret, x).await
    }

    /// The state of the vendor's circuit breaker.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// The vendor's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// How the vendor's credential is injected.
    pub fn auth(&self) -> &AuthScheme {
        &self.spec.auth
    }

    /// Whether WRITE calls to this vendor must carry an idempotency key.
    pub fn requires_idempotency_key(&self) -> bool {
        self.spec.require_idempotency_key
    }

    /// The vendor's idempotency header, if it dedupes by one.
    pub fn idempotency_header(&self) -> Option<&HeaderName> {
        self.spec.idempotency_header.as_ref()
    }

    /// The request rotation makes to check a new credential, if configured.
    pub fn verify_request(&self) -> Option<crate::ProxyRequest> {
        self.spec.verify.as_ref().map(|v| crate::ProxyRequest {
            method: v.method.clone(),
            path: v.path.clone(),
            query: v.query.clone(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
        })
    }

    /// Refuses a query that sets the vendor's credential parameter, as any
    /// lenient server might read it: see `param_key`.
    pub fn check_query(&self, query: Option<&str>) -> Result<(), RequestError> {
        let (AuthScheme::Query(param), Some(query)) = (&self.spec.auth, query) else {
            return Ok(());
        };
        let wanted = param_key(param);
        // Some servers also split on ';' (older Python, Go before 1.17, Rack).
        for pair in query.split(['&', ';']) {
            let name = pair.split('=').next().unwrap_or_default();
            if param_key(name) == wanted {
                return Err(RequestError::QueryParamForbidden(param.clone()));
            }
        }
        Ok(())
    }

    /// Joins base URL, path and query, injecting a query credential.
    pub(crate) fn url(&self, path: &str, query: Option<&str>, secret: &Secret) -> Zeroizing<String> {
        let mut url = Zeroizing::new(format!(
            "{}://{}{}{}",
            self.origin.scheme, self.origin.authority, self.origin.prefix, path
        ));
        let mut sep = '?';
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            url.push('?');
            url.push_str(q);
            sep = '&';
        }
        if let AuthScheme::Query(param) = &self.spec.auth {
            let value = std::str::from_utf8(secret.expose()).unwrap_or_default();
            url.push(sep);
            url.push_str(&utf8_percent_encode(param, QUERY_VALUE).to_string());
            url.push('=');
            url.push_str(&utf8_percent_encode(value, QUERY_VALUE).to_string());
        }
        url
    }

    /// Whether `uri` is still on the vendor's origin and under its prefix.
    pub(crate) fn same_origin(&self, uri: &Uri) -> bool {
        uri.scheme() == Some(&self.origin.scheme)
            && uri.authority() == Some(&self.origin.authority)
            && uri.path().starts_with(&self.origin.prefix)
    }

    /// Adds the credential header, marked sensitive so HTTP/2 never indexes
    /// it and `Debug` never prints it.
    pub(crate) fn inject_header(&self, headers: &mut HeaderMap, secret: &Secret) {
        let value = match &self.spec.auth {
            AuthScheme::Query(_) => return,
            AuthScheme::Bearer | AuthScheme::OAuth2(_) => {
                let mut v = Zeroizing::new(b"Bearer ".to_vec());
                v.extend_from_slice(secret.expose());
                (AUTHORIZATION, v)
            }
            AuthScheme::Basic => {
                let mut v = Zeroizing::new(b"Basic ".to_vec());
                v.extend_from_slice(STANDARD.encode(secret.expose()).as_bytes());
                (AUTHORIZATION, v)
            }
            AuthScheme::Header(name) => (name.clone(), Zeroizing::new(secret.expose().to_vec())),
        };
        let (name, bytes) = value;
        let mut value = HeaderValue::from_bytes(&bytes).expect("stored secrets are printable ASCII");
        value.set_sensitive(true);
        headers.insert(name, value);
    }
}

/// How many rounds of percent-decoding a query name is looked through (a
/// proxy or framework on the way may decode again).
const MAX_NAME_DECODES: usize = 3;

/// A query parameter name reduced to what any lenient server could take it
/// for: `+` as space and percent-decoded (up to [`MAX_NAME_DECODES`]
/// rounds); cut at a NUL (C-string backends) and at `[` (PHP and Rails read
/// `api_key[]` and `api_key[x]` as `api_key`); then only its ASCII letters
/// and digits, lower case — PHP turns `.` and space into `_`, others trim
/// or fold punctuation, so `api_key.`, `api-key` and `API_KEY` are all the
/// same name. A name without letters or digits is kept whole.
fn param_key(name: &str) -> Vec<u8> {
    let mut decoded = name.as_bytes().to_vec();
    for _ in 0..MAX_NAME_DECODES {
        let plus: Vec<u8> = decoded
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        let next: Vec<u8> = percent_encoding::percent_decode(&plus).collect();
        if next == decoded {
            break;
        }
        decoded = next;
    }
    let cut = decoded
        .iter()
        .position(|&b| b == 0 || b == b'[')
        .unwrap_or(decoded.len());
    decoded.truncate(cut);
    let key: Vec<u8> = decoded
        .iter()
        .filter(|b| b.is_ascii_alphanumeric())
        .map(u8::to_ascii_lowercase)
        .collect();
    if key.is_empty() {
        decoded.to_ascii_lowercase()
    } else {
        key
    }
}

/// An OAuth vendor's endpoint (token or revocation) at `url`, which must
/// pass the checks a base URL does. The error says why, for the field's
/// message.
fn oauth_endpoint(spec: &VendorSpec, url: &str, policy: AddressPolicy) -> Result<Uri, String> {
    let origin = parse_base_url(url, spec.allow_insecure_http).map_err(|e| match e {
        VendorError::BaseUrl(why) => why,
        other => other.to_string(),
    })?;
    if let Some(class) = origin.literal_refused(policy) {
        return Err(format!(
            "is {} address; set allow_private_addresses = true if the provider really lives there",
            crate::resolve::with_article(class)
        ));
    }
    url.parse().map_err(|_| "is not a valid URL".to_owned())
}

fn parse_base_url(raw: &str, allow_http: bool) -> Result<Origin, VendorError> {
    let bad = |why: &str| VendorError::BaseUrl(why.to_owned());
    let uri: Uri = raw.parse().map_err(|_| bad("is not a valid URL"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| bad("must be an absolute http(s) URL"))?;
    if scheme == Scheme::HTTP && !allow_http {
        return Err(bad(
            "must use https (set allow_insecure_http = true only for loopback tests)",
        ));
    }
    if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
        return Err(bad("scheme must be http or https"));
    }
    let authority = uri.authority().cloned().ok_or_else(|| bad("must name a host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("must not contain user information"));
    }
    if scheme == Scheme::HTTP && !is_loopback(authority.host()) {
        return Err(bad(
            "plain http is only allowed to a loopback host (127.0.0.0/8, ::1, localhost)",
        ));
    }
    if uri.query().is_some() || raw.contains('#') {
        return Err(bad("must not have a query or fragment"));
    }
    let prefix = uri.path().trim_end_matches('/').to_owned();
    Ok(Origin {
        scheme,
        authority,
        prefix,
    })
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The CAs a vendor's certificate must chain to: the public web roots, or
/// its `ca_file`.
fn root_store(ca_file: Option<&PathBuf>) -> Result<rustls::RootCertStore, VendorError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject as _;
            let fail = |reason: String| VendorError::CaFile {
                path: path.clone(),
                reason,
            };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| fail(e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| fail(e.to_string()))?;
            if certs.is_empty() {
                return Err(fail("holds no PEM certificate".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| fail(e.to_string()))?;
            }
        }
    }
    Ok(roots)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A vendor entry with the defaults, for tests across the crate.
    pub(crate) fn spec(base: &str, auth: AuthScheme) -> VendorSpec {
        VendorSpec {
            retry: RetryPolicy::default(),
            breaker: BreakerPolicy::default(),
            allow_private_addresses: false,
            max_concurrent_requests: 16,
            resolve_to: Vec::new(),
            name: "v".into(),
            base_url: base.into(),
            allow_insecure_http: true,
            auth,
            ca_file: None,
            timeout: Duration::from_secs(1),
            verify: None,
            idempotency_header: None,
            require_idempotency_key: true,
        }
    }

    #[test]
    fn plain_http_only_to_loopback() {
        for ok in [
            "http://127.0.0.1:1",
            "http://localhost:1",
            "http://[::1]:1",
            "http://127.1.2.3",
        ] {
            assert!(Vendor::new(spec(ok, AuthScheme::Bearer)).is_ok(), "{ok}");
        }
    }

    #[test]
    fn base_url_rules() {
        let mut s = spec("http://127.0.0.1:1", AuthScheme::Bearer);
        s.allow_insecure_http = false;
        assert!(Vendor::new(s).is_err());
        for bad in [
            "ftp://x",
            "https://u:p@x",
            "https://x/?a=1",
            "/relative",
            "https://x/#f",
        ] {
            assert!(Vendor::new(spec(bad, AuthScheme::Bearer)).is_err(), "{bad}");
        }
    }

    #[test]
    fn resolve_to_literals_are_checked_when_built() {
        let mut s = spec("https://api.example.com", AuthScheme::Bearer);
        s.allow_insecure_http = false;
        s.resolve_to = vec![
            "93.184.216.34".parse().unwrap(),
            "169.254.169.254".parse().unwrap(),
        ];
        let err = Vendor::new(s.clone()).unwrap_err().to_string();
        assert!(
            err.starts_with("resolve_to: 169.254.169.254 is a link-local address"),
            "{err}"
        );
        s.allow_private_addresses = true;
        assert!(Vendor::new(s.clone()).is_ok());
        // Loopback experiments may pin loopback, as they may use it in base_url.
        let mut s = spec("http://localhost:1", AuthScheme::Bearer);
        s.resolve_to = vec!["127.0.0.1".parse().unwrap()];
        assert!(Vendor::new(s.clone()).is_ok());
        s.resolve_to = vec!["10.0.0.1".parse().unwrap()];
        assert!(Vendor::new(s).is_err());
    }

    #[test]
    fn url_joins_under_prefix_and_injects_query() {
        let v = Vendor::new(spec(
            "https://api.example.com/v2/",
            AuthScheme::Query("api_key".into()),
        ))
        .unwrap();
        let secret = Secret::from("a b&c".to_owned());
        let url = v.url("/users", Some("page=2"), &secret);
        assert_eq!(
            url.as_str(),
            "https://api.example.com/v2/users?page=2&api_key=a%20b%26c"
        );
        assert!(v.same_origin(&url.parse().unwrap()));
        assert!(v.check_query(Some("API_KEY=x")).is_err());
        assert!(v.check_query(Some("api%5Fkey=x")).is_err());
        assert!(v.check_query(Some("x=1;api_key=mine")).is_err());
        assert!(v.check_query(Some("page=1")).is_ok());
    }

    #[test]
    fn query_names_that_normalise_to_the_credential_parameter_are_refused() {
        let v = Vendor::new(spec(
            "https://api.example.com",
            AuthScheme::Query("api_key".into()),
        ))
        .unwrap();
        for bad in [
            "api_key%00=evil",
            "api_key%00junk=evil",
            "api_key[]=evil",
            "api_key%5B%5D=evil",
            "api_key[x]=evil",
            "api_key.=evil",
            "api.key=evil",
            "api-key=evil",
            "apikey=evil",
            "api+key=evil",
            "%20api_key=evil",
            "api_key%2500=evil",
            "api%255Fkey=evil",
            "q=1&API_Key%00=evil",
        ] {
            assert_eq!(
                v.check_query(Some(bad)).unwrap_err().reason(),
                "QUERY_PARAM_FORBIDDEN",
                "{bad}"
            );
        }
        for ok in ["api_keys=1", "my_api_key=1", "key=1", "api=1&key=2", "q=api_key"] {
            assert!(v.check_query(Some(ok)).is_ok(), "{ok}");
        }
    }
}
