//! A mock OAuth 2.0 provider on loopback: a token endpoint (`POST /token`,
//! RFC 6749 client credentials and refresh-token grants, client auth by
//! HTTP Basic or form body, rotating refresh tokens that revoke their whole
//! family when one is used twice, as OAuth 2.0 Security BCP §4.14 asks) and
//! a protected API (`/api/...`) that accepts only unexpired access tokens it
//! issued — so a test sees what a real provider and vendor would.
//!
//! Faults for the tests: a status (429, 500) with `Retry-After`, a delay,
//! or every grant refused with `invalid_grant`. Everything received is
//! counted and kept, for the tests' assertions and their canary scans.

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::{BuildHasher as _, RandomState};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// How a client must authenticate at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic.
    Basic,
    /// `client_id` and `client_secret` in the form.
    Post,
    /// `private_key_jwt`: an ES256 client assertion.
    Jwt,
}

/// A fault the token endpoint answers with instead of a token.
#[derive(Debug, Clone)]
pub enum Fault {
    /// This status, with `Retry-After` seconds if given.
    Status(u16, Option<u64>),
    /// Every grant refused with `invalid_grant`.
    InvalidGrant,
    /// Every client refused with `invalid_client`.
    InvalidClient,
}

/// One token request as received.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// `grant_type`.
    pub grant_type: String,
    /// The client id, however it was sent.
    pub client_id: Option<String>,
    /// How the client authenticated (`None`: it did not).
    pub auth: Option<ClientAuth>,
    /// The `scope` parameter.
    pub scope: Option<String>,
    /// The `audience` parameter.
    pub audience: Option<String>,
    /// The refresh token presented.
    pub refresh_token: Option<String>,
    /// What was answered.
    pub status: u16,
}

/// One API request as received.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// The bearer token, if any.
    pub token: Option<String>,
    /// The thumbprint of the client certificate presented, if any.
    pub thumbprint: Option<String>,
    /// The scope of that token, if it was valid.
    pub scope: Option<String>,
    /// What was answered.
    pub status: u16,
}

struct Issued {
    client_id: String,
    scope: String,
    expires: Instant,
    family: u64,
    /// RFC 8705: the thumbprint of the client certificate it is bound to.
    cnf: Option<String>,
}

struct Family {
    revoked: bool,
}

#[derive(Default)]
struct State {
    clients: HashMap<String, (String, ClientAuth)>,
    /// Served over TLS.
    tls: bool,
    /// `private_key_jwt` clients: their P-256 public keys (uncompressed).
    jwt_clients: HashMap<String, Vec<u8>>,
    /// Assertion ids seen (a replayed assertion is refused).
    jtis: std::collections::HashSet<String>,
    lifetime_s: u64,
    rotate: bool,
    fault: Option<Fault>,
    delay: Option<Duration>,
    /// Wait this long after a token request was processed before answering.
    answer_delay: Option<Duration>,
    access: HashMap<String, Issued>,
    /// Refresh token → (client, family, already used).
    refresh: HashMap<String, (String, u64, bool)>,
    families: HashMap<u64, Family>,
    next_family: u64,
    token_requests: Vec<TokenRequest>,
    api_requests: Vec<ApiRequest>,
    /// Every request's raw text, for canary scans.
    received: Vec<String>,
    /// Every access and refresh token ever issued.
    issued: Vec<String>,
    /// Token requests received, answered or not (counted before any delay).
    started: usize,
    /// Revocation requests: the token, its hint, the answer's status.
    revocations: Vec<(String, Option<String>, u16)>,
    reuse_detected: u32,
}

struct Shared {
    state: Mutex<State>,
    changed: Notify,
    random: RandomState,
    issued: std::sync::atomic::AtomicU64,
}

/// The running provider; stops when dropped.
pub struct MockOAuth {
    addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockOAuth {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockOAuth {
    /// Starts the provider on a free loopback port, issuing tokens that
    /// live an hour and rotating refresh tokens.
    pub async fn start() -> Self {
        Self::serve(None).await
    }

    /// Starts the provider over TLS with `ca`'s server certificate, asking
    /// for (not requiring) a client certificate signed by `ca`: tokens
    /// issued over a connection with one are bound to it (RFC 8705 `cnf`),
    /// and the API takes a bound token only over a connection with the same
    /// certificate.
    pub async fn start_tls(ca: &crate::TestCa) -> Self {
        Self::serve(Some(tokio_rustls::TlsAcceptor::from(
            ca.server_config_asking_client_certs(),
        )))
        .await
    }

    async fn serve(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                lifetime_s: 3600,
                rotate: true,
                tls: tls.is_some(),
                ..State::default()
            }),
            changed: Notify::new(),
            random: RandomState::new(),
            issued: Default::default(),
        });
        let is_tls = tls.is_some();
        let task = tokio::spawn(accept_loop(listener, tls, shared.clone()));
        Self {
            addr,
            tls: is_tls,
            shared,
            task,
        }
    }

    /// `http://127.0.0.1:PORT`, or `https://localhost:PORT` over TLS.
    pub fn base_url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// The token endpoint.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.base_url())
    }

    /// The RFC 7009 revocation endpoint.
    pub fn revoke_url(&self) -> String {
        format!("{}/revoke", self.base_url())
    }

    /// Revocation requests so far: the token, its `token_type_hint`, and the
    /// status answered.
    pub fn revocations(&self) -> Vec<(String, Option<String>, u16)> {
        self.state().revocations.clone()
    }

    /// The protected API's base URL.
    pub fn api_url(&self) -> String {
        format!("{}/api", self.base_url())
    }

    /// Registers a client.
    pub fn add_client(&self, id: &str, secret: &str, auth: ClientAuth) {
        self.state()
            .clients
            .insert(id.to_owned(), (secret.to_owned(), auth));
    }

    /// Registers a `private_key_jwt` client with its P-256 public key
    /// (the uncompressed point, as `rcgen::KeyPair::public_key_raw` gives it).
    pub fn add_jwt_client(&self, id: &str, public_key: &[u8]) {
        let mut s = self.state();
        s.jwt_clients.insert(id.to_owned(), public_key.to_vec());
        s.clients.insert(id.to_owned(), (String::new(), ClientAuth::Jwt));
    }

    /// Issues a refresh token to `client`, as a consent flow would.
    pub fn issue_refresh_token(&self, client: &str) -> String {
        let token = self.random("oauth-canary-rt");
        let mut s = self.state();
        s.issued.push(token.clone());
        let family = s.next_family;
        s.next_family += 1;
        s.families.insert(family, Family { revoked: false });
        s.refresh
            .insert(token.clone(), (client.to_owned(), family, false));
        token
    }

    /// The RFC 8705 thumbprint (`x5t#S256`) each live access token is bound
    /// to, if any.
    pub fn bindings(&self) -> Vec<Option<String>> {
        self.state().access.values().map(|i| i.cnf.clone()).collect()
    }

    /// Access tokens issued from now on live `seconds`.
    pub fn set_lifetime(&self, seconds: u64) {
        self.state().lifetime_s = seconds;
    }

    /// Whether a refresh grant returns a new refresh token (default: yes).
    pub fn set_rotation(&self, rotate: bool) {
        self.state().rotate = rotate;
    }

    /// Token requests get `fault` instead of tokens (`None`: heal).
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.state().fault = fault;
    }

    /// Token requests are answered after `delay`.
    pub fn set_delay(&self, delay: Option<Duration>) {
        self.state().delay = delay;
    }

    /// Token requests are processed at once (a refresh token rotated, say)
    /// but answered only after `delay`: a client that dies meanwhile never
    /// learns what it was issued.
    pub fn set_answer_delay(&self, delay: Option<Duration>) {
        self.state().answer_delay = delay;
    }

    /// Revokes one access token (the API answers 401 to it).
    pub fn revoke_access_token(&self, token: &str) {
        self.state().access.remove(token);
    }

    /// Revokes every access token issued so far (the API answers 401).
    pub fn revoke_access_tokens(&self) {
        self.state().access.clear();
    }

    /// Token requests so far.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.state().token_requests.clone()
    }

    /// API requests so far.
    pub fn api_requests(&self) -> Vec<ApiRequest> {
        self.state().api_requests.clone()
    }

    /// How many times a spent refresh token was presented again.
    pub fn reuse_detected(&self) -> u32 {
        self.state().reuse_detected
    }

    /// Every request received, as text (method, path, headers, body).
    pub fn received(&self) -> Vec<String> {
        self.state().received.clone()
    }

    /// Every access and refresh token issued so far, revoked or not.
    pub fn issued(&self) -> Vec<String> {
        self.state().issued.clone()
    }

    /// Every access token issued that is still valid.
    pub fn live_access_tokens(&self) -> Vec<String> {
        let now = Instant::now();
        let s = self.state();
        s.access
            .iter()
            .filter(|(_, i)| i.expires > now && !s.families.get(&i.family).is_some_and(|f| f.revoked))
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Waits until `n` token requests have arrived (before any delay: a
    /// request may still be waiting to be answered).
    pub async fn wait_for_started(&self, n: usize) {
        loop {
            let notified = self.shared.changed.notified();
            if self.state().started >= n {
                return;
            }
            notified.await;
        }
    }

    /// Waits until `check` holds for the token requests so far.
    pub async fn wait_for_token_requests(&self, check: impl Fn(&[TokenRequest]) -> bool) {
        loop {
            let notified = self.shared.changed.notified();
            if check(&self.state().token_requests) {
                return;
            }
            notified.await;
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().expect("lock")
    }

    fn random(&self, prefix: &str) -> String {
        random(&self.shared, prefix)
    }
}

fn random(shared: &Shared, prefix: &str) -> String {
    let n = shared.issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let a = shared.random.hash_one((n, Instant::now()));
    let b = shared.random.hash_one((a, n));
    format!("{prefix}-{n}-{a:016x}{b:016x}")
}

async fn accept_loop(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (shared, tls) = (shared.clone(), tls.clone());
        tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            match tls {
                None => {
                    let service = service_fn(move |req| handle(req, shared.clone(), None));
                    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                }
                Some(acceptor) => {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let thumbprint = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|leaf| {
                            let digest = ring::digest::digest(&ring::digest::SHA256, leaf.as_ref());
                            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
                        });
                    let service = service_fn(move |req| handle(req, shared.clone(), thumbprint.clone()));
                    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                }
            }
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    thumbprint: Option<String>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let mut text = format!("{} {}\n", parts.method, parts.uri);
    for (name, value) in &parts.headers {
        text.push_str(&format!(
            "{name}: {}\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    text.push_str(&String::from_utf8_lossy(&body));
    shared.state.lock().expect("lock").received.push(text);
    let answer = if parts.uri.path() == "/token" && parts.method == http::Method::POST {
        let delay = {
            let mut s = shared.state.lock().expect("lock");
            s.started += 1;
            s.delay
        };
        shared.changed.notify_waiters();
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let answer = token(&shared, &parts.headers, &body, thumbprint.as_deref());
        let answer_delay = shared.state.lock().expect("lock").answer_delay;
        if let Some(delay) = answer_delay {
            shared.changed.notify_waiters();
            tokio::time::sleep(delay).await;
        }
        answer
    } else if parts.uri.path() == "/revoke" && parts.method == http::Method::POST {
        revoke(&shared, &parts.headers, &body)
    } else if parts.uri.path().starts_with("/api/") {
        api(&shared, &parts, thumbprint)
    } else {
        json(404, serde_json::json!({"error": "not_found"}))
    };
    shared.changed.notify_waiters();
    Ok(answer)
}

fn json(status: u16, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}

fn form(body: &[u8]) -> HashMap<String, String> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        percent_encoding::percent_decode_str(&s)
            .decode_utf8_lossy()
            .into_owned()
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// The client's id and secret, from Basic (form-decoded, RFC 6749 §2.3.1)
/// or the form.
fn client_credentials(
    headers: &http::HeaderMap,
    form: &HashMap<String, String>,
) -> Option<(String, String, ClientAuth)> {
    if let Some(basic) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    {
        let decoded = base64::engine::general_purpose::STANDARD.decode(basic).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (id, secret) = decoded.split_once(':')?;
        let un = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        return Some((un(id), un(secret), ClientAuth::Basic));
    }
    let id = form.get("client_id")?.clone();
    let secret = form.get("client_secret")?.clone();
    Some((id, secret, ClientAuth::Post))
}

fn token(
    shared: &Shared,
    headers: &http::HeaderMap,
    body: &[u8],
    thumbprint: Option<&str>,
) -> Response<Full<Bytes>> {
    let form = form(body);
    let mut s = shared.state.lock().expect("lock");
    let creds = match form.get("client_assertion_type").map(String::as_str) {
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer") => {
            let scheme = if s.tls { "https" } else { "http" };
            let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("");
            let audience = format!("{scheme}://{host}/token");
            jwt_client(&mut s, &form, &audience)
        }
        _ => client_credentials(headers, &form),
    };
    let mut record = TokenRequest {
        grant_type: form.get("grant_type").cloned().unwrap_or_default(),
        client_id: creds.as_ref().map(|c| c.0.clone()),
        auth: creds.as_ref().map(|c| c.2),
        scope: form.get("scope").cloned(),
        audience: form.get("audience").cloned(),
        refresh_token: form.get("refresh_token").cloned(),
        status: 200,
    };
    let answer = token_answer(shared, &mut s, creds, &form, thumbprint);
    record.status = answer.status().as_u16();
    s.token_requests.push(record);
    answer
}

/// A `private_key_jwt` client's id, if its assertion verifies: ES256 under
/// its registered key, issued by and about it, for `audience`, unexpired,
/// never seen before. (The secret slot holds nothing for such a client.)
fn jwt_client(
    s: &mut State,
    form: &HashMap<String, String>,
    audience: &str,
) -> Option<(String, String, ClientAuth)> {
    let engine = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let assertion = form.get("client_assertion")?;
    let id = form.get("client_id")?;
    let key = s.jwt_clients.get(id)?.clone();
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header, claims, sig] = parts[..] else {
        return None;
    };
    let header: serde_json::Value = serde_json::from_slice(&engine.decode(header).ok()?).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&engine.decode(claims).ok()?).ok()?;
    let sig = engine.decode(sig).ok()?;
    let signed = &assertion[..assertion.rfind('.')?];
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, key)
        .verify(signed.as_bytes(), &sig)
        .ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    let ok = header["alg"] == "ES256"
        && claims["iss"] == id.as_str()
        && claims["sub"] == id.as_str()
        && claims["aud"] == audience
        && claims["exp"].as_u64().is_some_and(|exp| exp > now);
    let jti = claims["jti"].as_str()?.to_owned();
    if !ok || !s.jtis.insert(jti) {
        return None;
    }
    Some((id.clone(), String::new(), ClientAuth::Jwt))
}

fn token_answer(
    shared: &Shared,
    s: &mut State,
    creds: Option<(String, String, ClientAuth)>,
    form: &HashMap<String, String>,
    thumbprint: Option<&str>,
) -> Response<Full<Bytes>> {
    match s.fault.clone() {
        Some(Fault::Status(status, retry_after)) => {
            let mut answer = json(status, serde_json::json!({"error": "temporarily_unavailable"}));
            if let Some(seconds) = retry_after {
                answer
                    .headers_mut()
                    .insert("retry-after", seconds.to_string().parse().expect("header"));
            }
            return answer;
        }
        Some(Fault::InvalidGrant) => return json(400, serde_json::json!({"error": "invalid_grant"})),
        Some(Fault::InvalidClient) => return json(401, serde_json::json!({"error": "invalid_client"})),
        None => {}
    }
    let Some((id, secret, auth)) = creds else {
        return json(401, serde_json::json!({"error": "invalid_client"}));
    };
    if auth != ClientAuth::Jwt && secret.is_empty() {
        return json(401, serde_json::json!({"error": "invalid_client"}));
    }
    let known = s.clients.get(&id).cloned();
    if known
        .as_ref()
        .is_none_or(|(want, method)| *want != secret || *method != auth)
    {
        return json(401, serde_json::json!({"error": "invalid_client"}));
    }
    let scope = form.get("scope").cloned().unwrap_or_default();
    let lifetime = s.lifetime_s;
    let issue_access = |s: &mut State, family: u64| {
        let token = random(shared, "oauth-canary-at");
        s.issued.push(token.clone());
        s.access.insert(
            token.clone(),
            Issued {
                client_id: id.clone(),
                scope: scope.clone(),
                expires: Instant::now() + Duration::from_secs(lifetime),
                family,
                cnf: thumbprint.map(str::to_owned),
            },
        );
        token
    };
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {
            let family = s.next_family;
            s.next_family += 1;
            s.families.insert(family, Family { revoked: false });
            let at = issue_access(s, family);
            json(
                200,
                serde_json::json!({"access_token": at, "token_type": "Bearer", "expires_in": lifetime, "scope": scope}),
            )
        }
        Some("refresh_token") => {
            let presented = form.get("refresh_token").cloned().unwrap_or_default();
            let Some((owner, family, used)) = s.refresh.get(&presented).cloned() else {
                return json(400, serde_json::json!({"error": "invalid_grant"}));
            };
            let revoked = s.families.get(&family).is_some_and(|f| f.revoked);
            if owner != id || revoked {
                return json(400, serde_json::json!({"error": "invalid_grant"}));
            }
            if used {
                // Reuse of a rotated refresh token: the whole family dies.
                s.reuse_detected += 1;
                if let Some(f) = s.families.get_mut(&family) {
                    f.revoked = true;
                }
                return json(400, serde_json::json!({"error": "invalid_grant"}));
            }
            let at = issue_access(s, family);
            let mut body = serde_json::json!({"access_token": at, "token_type": "Bearer", "expires_in": lifetime, "scope": scope});
            if s.rotate {
                s.refresh.get_mut(&presented).expect("present").2 = true;
                let next = random(shared, "oauth-canary-rt");
                s.issued.push(next.clone());
                s.refresh.insert(next.clone(), (id.clone(), family, false));
                body["refresh_token"] = serde_json::Value::String(next);
            }
            json(200, body)
        }
        _ => json(400, serde_json::json!({"error": "unsupported_grant_type"})),
    }
}

/// RFC 7009: the client authenticates; an access token is revoked, a
/// refresh token revokes its whole family; unknown tokens are a 200 too.
fn revoke(shared: &Shared, headers: &http::HeaderMap, body: &[u8]) -> Response<Full<Bytes>> {
    let form = form(body);
    let creds = client_credentials(headers, &form);
    let mut s = shared.state.lock().expect("lock");
    let token = form.get("token").cloned().unwrap_or_default();
    let hint = form.get("token_type_hint").cloned();
    let known = creds.as_ref().and_then(|(id, secret, auth)| {
        let (want, method) = s.clients.get(id)?;
        (want == secret && method == auth).then_some(())
    });
    let status = if known.is_none() {
        401
    } else {
        if let Some(issued) = s.access.remove(&token) {
            let _ = issued.family;
        }
        if let Some((_, family, _)) = s.refresh.get(&token).cloned()
            && let Some(f) = s.families.get_mut(&family)
        {
            f.revoked = true;
        }
        200
    };
    s.revocations.push((token, hint, status));
    if status == 200 {
        Response::builder()
            .status(200)
            .body(Full::new(Bytes::new()))
            .expect("response")
    } else {
        json(401, serde_json::json!({"error": "invalid_client"}))
    }
}

fn api(shared: &Shared, parts: &http::request::Parts, thumbprint: Option<String>) -> Response<Full<Bytes>> {
    let token = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let mut s = shared.state.lock().expect("lock");
    let now = Instant::now();
    let valid = token.as_ref().and_then(|t| {
        let issued = s.access.get(t)?;
        let revoked = s.families.get(&issued.family).is_some_and(|f| f.revoked);
        // A bound token only over a connection with its certificate.
        let bound_ok = issued.cnf.is_none() || issued.cnf == thumbprint;
        (issued.expires > now && !revoked && bound_ok)
            .then(|| (issued.scope.clone(), issued.client_id.clone()))
    });
    let (status, body) = match &valid {
        Some((scope, client)) => {
            let mut body = serde_json::json!({"ok": true, "scope": scope, "client_id": client});
            // A careless vendor that echoes the credential it was sent.
            if parts.uri.path() == "/api/echo" {
                body["token"] = serde_json::Value::String(token.clone().unwrap_or_default());
            }
            (200, body)
        }
        None => (401, serde_json::json!({"error": "invalid_token"})),
    };
    s.api_requests.push(ApiRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        token,
        thumbprint,
        scope: valid.map(|(scope, _)| scope),
        status,
    });
    let mut answer = json(status, body);
    *answer.status_mut() = StatusCode::from_u16(status).expect("status");
    answer
}
