//! One token request: the grant material in, an access token (and perhaps a
//! rotated refresh token) out, or why not.
//!
//! The `oauth2` crate builds the request (form encoding, client
//! authentication as `client_secret_basic` or `client_secret_post`) and
//! reads the answer (RFC 6749 §5.1 and §5.2); it has no HTTP client of its
//! own here: the request leaves through the vendor's
//! [`TokenEndpoint`](valet_egress::TokenEndpoint), so the token URL is held
//! to the same address, TLS and timeout rules as the vendor. `oauth2` keeps
//! the client secret in a plain `String` while it builds the request; that
//! copy lives only for the request's duration.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{
    AuthType, ClientId, ClientSecret, RefreshToken, RequestTokenError, Scope, TokenResponse as _, TokenUrl,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use valet_credentials::Secret;
use valet_egress::{ClientAuth, ClientIdentity, Grant, GrantMaterial, TokenEndpointError, Vendor};

/// A token endpoint's answer when it gives no `expires_in`: the token is
/// treated as good for this long.
const UNSTATED_LIFETIME: Duration = Duration::from_secs(300);

/// Longest `Retry-After` honoured from a token endpoint.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// What the token endpoint issued.
pub struct Issued {
    /// The access token.
    pub access: Secret,
    /// How long it is good for.
    pub lifetime: Duration,
    /// A new refresh token, when the provider rotated it.
    pub refresh: Option<Secret>,
}

/// Why no token was issued.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    /// The provider refused the grant: `invalid_grant` (the refresh token
    /// is revoked, expired or was already used) or `invalid_client` /
    /// `unauthorized_client` (the client secret changed or was revoked).
    /// Asking again with the same material cannot succeed.
    #[error("the token endpoint refused the grant ({0}); the tenant must authorize again")]
    Reauth(String),
    /// The provider refused the request for another stated reason (an
    /// `invalid_scope`, an unsupported grant type): a configuration problem.
    #[error("the token endpoint refused the request ({0})")]
    Refused(String),
    /// Throttled or failing (429, 5xx), with how long it asked us to wait.
    #[error("the token endpoint answered {status}")]
    Busy {
        /// The HTTP status.
        status: u16,
        /// Its `Retry-After`, capped at [`MAX_RETRY_AFTER`].
        retry_after: Option<Duration>,
    },
    /// Unreachable, timed out, or an answer that is not a token response.
    #[error("{0}")]
    Unavailable(String),
}

impl RequestError {
    /// A stable name for metrics and the audit log.
    pub fn outcome(&self) -> &'static str {
        match self {
            RequestError::Reauth(_) => "reauth_required",
            RequestError::Refused(_) => "refused",
            RequestError::Busy { .. } => "busy",
            RequestError::Unavailable(_) => "unavailable",
        }
    }
}

/// The HTTP client `oauth2` is given: the vendor's token endpoint, with
/// 429 and 5xx turned into errors that keep their status and
/// `Retry-After` (oauth2 would only see an unparseable body).
#[derive(Debug, thiserror::Error)]
enum Transport {
    #[error(transparent)]
    Endpoint(#[from] TokenEndpointError),
    #[error("answered {status}")]
    Busy {
        status: u16,
        retry_after: Option<Duration>,
    },
}

/// `oauth2`'s HTTP client: the vendor's token endpoint. A type with a
/// named, `Send` future rather than a closure, whose future the compiler
/// cannot prove `Send` for every lifetime when the fetch is spawned.
struct Http {
    vendor: Arc<Vendor>,
    /// The revocation endpoint rather than the token endpoint.
    revocation: bool,
    /// The tenant's client certificate, for a vendor with `mtls`.
    identity: Option<Arc<ClientIdentity>>,
}

impl<'c> oauth2::AsyncHttpClient<'c> for Http {
    type Error = Transport;
    type Future = Pin<Box<dyn Future<Output = Result<oauth2::HttpResponse, Transport>> + Send + 'c>>;

    fn call(&'c self, req: oauth2::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let endpoint = match self.revocation {
                false => self.vendor.token_endpoint(),
                true => self.vendor.revocation_endpoint(),
            };
            let endpoint = endpoint.expect("checked by the request's maker");
            let resp = endpoint.post(req, self.identity.as_deref()).await?;
            let status = resp.status().as_u16();
            if status == 429 || status >= 500 {
                return Err(Transport::Busy {
                    status,
                    retry_after: retry_after(resp.headers()),
                });
            }
            Ok(resp)
        })
    }
}

/// Asks `vendor`'s token endpoint for an access token with `scopes`, by its
/// grant, authenticated with `material`.
///
/// Boxed, so that the future is known to be `Send` where it is made (the
/// closure `oauth2` is given would otherwise defeat the compiler's proof
/// when the fetch is spawned).
pub fn token<'a>(
    vendor: &'a Arc<Vendor>,
    material: &'a GrantMaterial,
    scopes: &'a [String],
) -> Pin<Box<dyn Future<Output = Result<Issued, RequestError>> + Send + 'a>> {
    Box::pin(exchange(vendor, material, scopes))
}

async fn exchange(
    vendor: &Arc<Vendor>,
    material: &GrantMaterial,
    scopes: &[String],
) -> Result<Issued, RequestError> {
    let (Some(spec), Some(endpoint)) = (vendor.oauth(), vendor.token_endpoint()) else {
        return Err(RequestError::Unavailable("not an OAuth vendor".into()));
    };
    let url = TokenUrl::new(endpoint.url().to_string())
        .map_err(|_| RequestError::Unavailable("the token URL does not parse".into()))?;
    let client = BasicClient::new(ClientId::new(material.client_id.clone()));
    let client = match spec.client_auth {
        ClientAuth::ClientSecretBasic => client
            .set_client_secret(ClientSecret::new(material.client_secret.clone()))
            .set_auth_type(AuthType::BasicAuth),
        ClientAuth::ClientSecretPost => client
            .set_client_secret(ClientSecret::new(material.client_secret.clone()))
            .set_auth_type(AuthType::RequestBody),
        // The client id in the body, the assertion beside it.
        ClientAuth::PrivateKeyJwt => client.set_auth_type(AuthType::RequestBody),
    }
    .set_token_uri(url);
    let assertion = match spec.client_auth {
        ClientAuth::PrivateKeyJwt => Some(
            crate::assertion::sign(
                material,
                &endpoint.url().to_string(),
                crate::shared::now_ms() / 1000,
            )
            .map_err(|e| RequestError::Refused(e.to_string()))?,
        ),
        _ => None,
    };
    let http = Http {
        vendor: vendor.clone(),
        revocation: false,
        identity: identity(spec, material)?,
    };
    // Beside the grant's own: the audience, and a client assertion.
    let mut extra: Vec<(&'static str, String)> = Vec::new();
    if let Some(audience) = &spec.audience {
        extra.push(("audience", audience.clone()));
    }
    if let Some(assertion) = assertion {
        extra.push((
            "client_assertion_type",
            crate::assertion::ASSERTION_TYPE.to_owned(),
        ));
        extra.push(("client_assertion", assertion));
    }
    let scopes = scopes.iter().map(|s| Scope::new(s.clone()));
    let answer = match spec.grant {
        Grant::ClientCredentials => {
            let mut req = client.exchange_client_credentials().add_scopes(scopes);
            for (name, value) in &extra {
                req = req.add_extra_param(*name, value.clone());
            }
            req.request_async(&http).await
        }
        Grant::RefreshToken => {
            let Some(refresh) = material.refresh_token.clone() else {
                return Err(RequestError::Reauth("no refresh token is stored".into()));
            };
            let refresh = RefreshToken::new(refresh);
            let mut req = client.exchange_refresh_token(&refresh).add_scopes(scopes);
            for (name, value) in &extra {
                req = req.add_extra_param(*name, value.clone());
            }
            req.request_async(&http).await
        }
    };
    match answer {
        Ok(answer) => Ok(Issued {
            access: Secret::new(answer.access_token().secret().as_bytes().to_vec()),
            lifetime: answer.expires_in().unwrap_or(UNSTATED_LIFETIME),
            refresh: answer
                .refresh_token()
                .map(|r| Secret::new(r.secret().as_bytes().to_vec())),
        }),
        Err(e) => Err(classify_token(e)),
    }
}

/// The client certificate a vendor with `mtls` is reached with.
fn identity(
    spec: &valet_egress::OAuthSpec,
    material: &GrantMaterial,
) -> Result<Option<Arc<ClientIdentity>>, RequestError> {
    if !spec.mtls {
        return Ok(None);
    }
    match material.identity() {
        Some(Ok(identity)) => Ok(Some(Arc::new(identity))),
        Some(Err(why)) => Err(RequestError::Refused(why.into())),
        None => Err(RequestError::Refused(
            "the grant material has no client certificate".into(),
        )),
    }
}

/// Which token a revocation is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// An access token.
    Access,
    /// A refresh token (revoking it ends its whole grant at most providers).
    Refresh,
}

impl TokenKind {
    /// `access_token` or `refresh_token`, as RFC 7009's hints name them.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Access => "access_token",
            TokenKind::Refresh => "refresh_token",
        }
    }
}

/// Revokes `token` at `vendor`'s revocation endpoint (RFC 7009),
/// authenticated with `material` as token requests are.
pub fn revoke<'a>(
    vendor: &'a Arc<Vendor>,
    material: &'a GrantMaterial,
    token: &'a Secret,
    kind: TokenKind,
) -> Pin<Box<dyn Future<Output = Result<(), RequestError>> + Send + 'a>> {
    Box::pin(revoke_at(vendor, material, token, kind))
}

async fn revoke_at(
    vendor: &Arc<Vendor>,
    material: &GrantMaterial,
    token: &Secret,
    kind: TokenKind,
) -> Result<(), RequestError> {
    let (Some(spec), Some(endpoint)) = (vendor.oauth(), vendor.revocation_endpoint()) else {
        return Err(RequestError::Refused("no revocation_url is configured".into()));
    };
    let req = revocation_request(endpoint.url(), spec.client_auth, material, token, kind)?;
    let http = Http {
        vendor: vendor.clone(),
        revocation: true,
        identity: identity(spec, material)?,
    };
    let resp = oauth2::AsyncHttpClient::call(&http, req)
        .await
        .map_err(|e| match e {
            Transport::Busy { status, retry_after } => RequestError::Busy { status, retry_after },
            Transport::Endpoint(e) => RequestError::Unavailable(e.to_string()),
        })?;
    match resp.status().as_u16() {
        // RFC 7009 §2.2: 200 whether or not the token was known.
        200 => Ok(()),
        status => Err(RequestError::Refused(format!(
            "the revocation endpoint answered {status}"
        ))),
    }
}

/// The RFC 7009 request for `token`. Built here rather than by oauth2,
/// which refuses a revocation URL that is not https even where the vendor
/// allows plain http to loopback.
fn revocation_request(
    url: &http::Uri,
    client_auth: ClientAuth,
    material: &GrantMaterial,
    token: &Secret,
    kind: TokenKind,
) -> Result<oauth2::HttpRequest, RequestError> {
    let text = String::from_utf8_lossy(token.expose()).into_owned();
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("token", &text)
        .append_pair("token_type_hint", kind.as_str());
    let mut req = http::Request::builder()
        .method(http::Method::POST)
        .uri(url.clone())
        .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(http::header::ACCEPT, "application/json");
    match client_auth {
        ClientAuth::ClientSecretBasic => {
            // RFC 6749 §2.3.1: each part form-encoded, then Basic.
            let enc = |v: &str| form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
            let pair = format!("{}:{}", enc(&material.client_id), enc(&material.client_secret));
            let mut value = http::HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(pair)))
                .map_err(|_| RequestError::Refused("the client credentials do not fit a header".into()))?;
            value.set_sensitive(true);
            req = req.header(http::header::AUTHORIZATION, value);
        }
        ClientAuth::ClientSecretPost => {
            form.append_pair("client_id", &material.client_id)
                .append_pair("client_secret", &material.client_secret);
        }
        ClientAuth::PrivateKeyJwt => {
            let assertion =
                crate::assertion::sign(material, &url.to_string(), crate::shared::now_ms() / 1000)
                    .map_err(|e| RequestError::Refused(e.to_string()))?;
            form.append_pair("client_id", &material.client_id)
                .append_pair("client_assertion_type", crate::assertion::ASSERTION_TYPE)
                .append_pair("client_assertion", &assertion);
        }
    }
    req.body(form.finish().into_bytes())
        .map_err(|_| RequestError::Unavailable("the revocation request does not build".into()))
}

fn classify_token(e: RequestTokenError<Transport, oauth2::basic::BasicErrorResponse>) -> RequestError {
    match e {
        RequestTokenError::ServerResponse(answer) => {
            let code = answer.error().as_ref().to_owned();
            match answer.error() {
                BasicErrorResponseType::InvalidGrant
                | BasicErrorResponseType::InvalidClient
                | BasicErrorResponseType::UnauthorizedClient => RequestError::Reauth(code),
                _ => RequestError::Refused(code),
            }
        }
        other => classify_transport(other),
    }
}

/// A request that got no stated refusal: busy, unreachable, or unreadable.
fn classify_transport<T: oauth2::ErrorResponse>(e: RequestTokenError<Transport, T>) -> RequestError {
    match e {
        RequestTokenError::Request(Transport::Busy { status, retry_after }) => {
            RequestError::Busy { status, retry_after }
        }
        RequestTokenError::Request(Transport::Endpoint(e)) => RequestError::Unavailable(e.to_string()),
        // Never the body: a malformed answer might still hold a token.
        RequestTokenError::Parse(..) => {
            RequestError::Unavailable("the token endpoint's answer is not a token response".into())
        }
        RequestTokenError::Other(what) => RequestError::Unavailable(format!("token endpoint: {what}")),
        RequestTokenError::ServerResponse(_) => RequestError::Refused("refused".into()),
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare from token
/// endpoints and treated as absent), capped.
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}
