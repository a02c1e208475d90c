//! A vendor's OAuth 2.0 token endpoint, reached the way the vendor is: the
//! same guarded resolver (no loopback, private or metadata addresses unless
//! the vendor allows them), the same TLS roots, the same timeout, no
//! redirects, and a bounded answer.
//!
//! [`OAuthSpec`] is the vendor's `auth = { scheme = "oauth2", … }` entry;
//! [`TokenEndpoint::post`] sends one token request built elsewhere (the
//! grant logic is `valet-oauth`'s) and returns the raw answer. The request
//! must go to the configured `token_url` exactly: anything else is refused
//! before it leaves.

use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt as _, Full};
use std::time::Duration;

/// Largest token endpoint answer read (a token response is a few KiB).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Which OAuth 2.0 grant obtains the vendor's access tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// RFC 6749 §4.4: the tenant's client id and secret.
    ClientCredentials,
    /// RFC 6749 §6: a refresh token from the tenant's consent flow, which
    /// the provider may rotate on every use.
    RefreshToken,
}

impl Grant {
    /// The name in config and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::ClientCredentials => "client_credentials",
            Grant::RefreshToken => "refresh_token",
        }
    }
}

/// How the client authenticates to the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic with the form-encoded client id and secret.
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// RFC 7523: a JWT signed with the tenant's private key (ES256 or
    /// RS256), no shared secret.
    PrivateKeyJwt,
}

/// A vendor's OAuth 2.0 settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthSpec {
    /// The token endpoint; checked like a base URL.
    pub token_url: String,
    /// How tokens are obtained.
    pub grant: Grant,
    /// How the client authenticates.
    pub client_auth: ClientAuth,
    /// Scopes asked for when an operation has none of its own.
    pub scopes: Vec<String>,
    /// Scopes for READ calls; empty: `scopes`.
    pub read_scopes: Vec<String>,
    /// Scopes for WRITE calls; empty: `scopes`.
    pub write_scopes: Vec<String>,
    /// The `audience` parameter some providers want (Auth0, Okta).
    pub audience: Option<String>,
    /// RFC 7009 revocation endpoint: tokens are revoked there when the
    /// tenant is offboarded or disabled as compromised.
    pub revocation_url: Option<String>,
    /// A token is replaced this long before it expires.
    pub refresh_before: Duration,
    /// Mutual TLS (RFC 8705): every tenant's grant material holds a client
    /// certificate and key; the token endpoint and the vendor are reached
    /// with it (pools per tenant), so tokens can be bound to it.
    pub mtls: bool,
}

impl OAuthSpec {
    /// The scopes a call of this kind asks for: `read_scopes` or
    /// `write_scopes`, else `scopes`.
    pub fn scopes_for(&self, write: bool) -> &[String] {
        let own = if write {
            &self.write_scopes
        } else {
            &self.read_scopes
        };
        if own.is_empty() { &self.scopes } else { own }
    }
}

/// Why a token request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum TokenEndpointError {
    /// The request was not for the configured token URL.
    #[error("token request for vendor {0} is not for its token_url")]
    OriginMismatch(String),
    /// No connection, TLS failure, or the connection broke.
    #[error("token endpoint of vendor {0} is unreachable")]
    Unreachable(String),
    /// No answer within the vendor's timeout.
    #[error("token endpoint of vendor {vendor} did not answer within {timeout_ms} ms")]
    Timeout {
        /// Vendor.
        vendor: String,
        /// The timeout.
        timeout_ms: u64,
    },
    /// The answer was larger than a token response can be.
    #[error("token endpoint of vendor {0} answered with more than 64 KiB")]
    TooLarge(String),
}

/// A vendor's token endpoint and the guarded client that reaches it.
pub struct TokenEndpoint {
    vendor: String,
    url: Uri,
    timeout: Duration,
    clients: crate::identity::Clients,
}

impl std::fmt::Debug for TokenEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenEndpoint")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl TokenEndpoint {
    pub(crate) fn new(vendor: &str, url: Uri, timeout: Duration, clients: crate::identity::Clients) -> Self {
        Self {
            vendor: vendor.to_owned(),
            url,
            timeout,
            clients,
        }
    }

    /// How long a token request may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The token URL.
    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// Sends `req` (which must be for the token URL) and reads the whole
    /// answer, within the vendor's timeout, over a connection made with
    /// `identity`'s client certificate if one is given (mutual TLS, RFC
    /// 8705). Redirects are not followed.
    pub async fn post(
        &self,
        req: http::Request<Vec<u8>>,
        identity: Option<&crate::identity::ClientIdentity>,
    ) -> Result<http::Response<Vec<u8>>, TokenEndpointError> {
        let client = self
            .clients
            .get(identity)
            .map_err(|_| TokenEndpointError::Unreachable(self.vendor.clone()))?;
        let (got, want) = (req.uri(), &self.url);
        let same = got.scheme() == want.scheme()
            && got.authority() == want.authority()
            && got.path() == want.path()
            && got.query().is_none();
        if !same {
            return Err(TokenEndpointError::OriginMismatch(self.vendor.clone()));
        }
        let (parts, body) = req.into_parts();
        let req = http::Request::from_parts(parts, Full::new(Bytes::from(body)));
        let exchange = async {
            let resp = client
                .request(req)
                .await
                .map_err(|_| TokenEndpointError::Unreachable(self.vendor.clone()))?;
            let (parts, body) = resp.into_parts();
            let limited = http_body_util::Limited::new(body, MAX_ANSWER_BYTES);
            let bytes = match limited.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    return Err(TokenEndpointError::TooLarge(self.vendor.clone()));
                }
                Err(_) => return Err(TokenEndpointError::Unreachable(self.vendor.clone())),
            };
            Ok(http::Response::from_parts(parts, bytes.to_vec()))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(TokenEndpointError::Timeout {
                    vendor: self.vendor.clone(),
                    timeout_ms: self.timeout.as_millis() as u64,
                })
            })
    }
}

/// What is stored, sealed, for a tenant of an OAuth vendor: the JSON object
/// `{"client_id": …, "client_secret": …, "refresh_token": …}` — or, for
/// `private_key_jwt`, `"private_key"` (PKCS#8 PEM) and an optional
/// `"key_id"` instead of the secret — with the refresh token only for the
/// `refresh_token` grant. Its secrets are zeroed when it is dropped; `Debug`
/// shows only the client id.
#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantMaterial {
    /// The OAuth client id (not secret, but the tenant's own).
    pub client_id: String,
    /// The client secret (`client_secret_basic`, `client_secret_post`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_secret: String,
    /// The private key signing client assertions (`private_key_jwt`),
    /// PKCS#8 PEM: P-256 (ES256) or RSA (RS256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// The `kid` the provider knows the key by, if it wants one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The refresh token, for the `refresh_token` grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The client certificate chain (PEM), for a vendor with `mtls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    /// Its private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
}

impl Drop for GrantMaterial {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        self.client_secret.zeroize();
        let secrets = [
            self.refresh_token.as_mut(),
            self.private_key.as_mut(),
            self.client_key.as_mut(),
        ];
        for secret in secrets.into_iter().flatten() {
            secret.zeroize();
        }
    }
}

impl std::fmt::Debug for GrantMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantMaterial")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl GrantMaterial {
    /// Reads the stored form, checked for `spec`'s grant and client
    /// authentication. The error never quotes the input.
    pub fn parse(secret: &valet_credentials::Secret, spec: &OAuthSpec) -> Result<Self, &'static str> {
        let material: Self = serde_json::from_slice(secret.expose()).map_err(|_| {
            "for an OAuth vendor must be the JSON object {\"client_id\", \"client_secret\" or \"private_key\"[, \"refresh_token\"]} (valet admin credential put --oauth-client-id builds it)"
        })?;
        if material.client_id.is_empty() {
            return Err("for an OAuth vendor needs a non-empty client_id");
        }
        match spec.client_auth {
            ClientAuth::PrivateKeyJwt if material.private_key.as_deref().is_none_or(str::is_empty) => {
                return Err(
                    "for a private_key_jwt vendor needs the private_key (PKCS#8 PEM) that signs client assertions",
                );
            }
            ClientAuth::ClientSecretBasic | ClientAuth::ClientSecretPost
                if material.client_secret.is_empty() =>
            {
                return Err("for an OAuth vendor needs a non-empty client_secret");
            }
            _ => {}
        }
        if spec.mtls {
            let (Some(cert), Some(key)) = (&material.client_cert, &material.client_key) else {
                return Err("for an mtls vendor needs client_cert and client_key (PEM)");
            };
            crate::identity::ClientIdentity::from_pem(cert, key)?;
        }
        match (spec.grant, &material.refresh_token) {
            (Grant::RefreshToken, None) => {
                Err("for a refresh_token vendor needs the refresh_token the tenant's consent produced")
            }
            (Grant::RefreshToken, Some(t)) if t.is_empty() => Err("has an empty refresh_token"),
            _ => Ok(material),
        }
    }

    /// The client identity for mutual TLS, if the material has one.
    pub fn identity(&self) -> Option<Result<crate::identity::ClientIdentity, &'static str>> {
        match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some(crate::identity::ClientIdentity::from_pem(cert, key)),
            _ => None,
        }
    }

    /// The stored form, as a secret.
    pub fn to_secret(&self) -> valet_credentials::Secret {
        valet_credentials::Secret::new(serde_json::to_vec(self).expect("strings serialize"))
    }
}
