//! OAuth 2.0 vendors in Valet: where [`valet_oauth::Tokens`] finds the
//! grant material (the vault) and records its fetches (the audit log), and
//! the call's step that swaps the leased grant material for an access token.

use crate::app::App;
use crate::call::validate::ValidCall;
use crate::status::Failure;
use std::sync::Arc;
use valet_access::Operation;
use valet_audit::{AuditLog, Event};
use valet_credentials::{
    CredentialKey, Fingerprint, Lease, LeaseAudit, LeaseEvent, Secret, Vault, VaultError,
};
use valet_egress::GrantMaterial;
use valet_oauth::{AccessToken, Fetch, Grants, TokenError, Tokens};

/// The audit actor for what Valet does on its own (token fetches, the
/// rotated refresh tokens it stores).
const ACTOR: &str = "valet:oauth";

/// The vault and audit log, as the tokens see them.
pub struct AppGrants {
    vault: Vault,
    audit: AuditLog,
    /// This replica, as its fetches are audited: host name and process id.
    replica: String,
}

impl AppGrants {
    /// Grants from `vault`, recorded in `audit`.
    pub fn new(vault: Vault, audit: AuditLog) -> Self {
        let host = crate::app::host_name();
        Self {
            vault,
            audit,
            replica: format!("{host}:{}", std::process::id()),
        }
    }
}

/// The application's tokens.
pub type AppTokens = Arc<Tokens<AppGrants>>;

impl LeaseAudit for AppGrants {
    async fn record_lease(&self, e: &LeaseEvent<'_>) -> Result<(), String> {
        let event = crate::app::lease_entry(e, None, None);
        self.audit
            .append(e.caller, event)
            .await
            .map_err(|err| err.to_string())
    }
}

fn store_error(e: VaultError) -> TokenError {
    match e {
        VaultError::AuditUnavailable(cause) => TokenError::Audit(cause),
        other => TokenError::Store(other.to_string()),
    }
}

impl Grants for AppGrants {
    async fn current(&self, key: &CredentialKey) -> Result<(Secret, Fingerprint), TokenError> {
        // Past the Secrets Manager cache: another replica may have stored a
        // rotated refresh token a moment ago.
        self.vault
            .refresh(key, &Fingerprint::from_hex(""))
            .await
            .map_err(store_error)?;
        let lease = self
            .vault
            .lease(key, ACTOR, "OAuth token fetch", "", self)
            .await
            .map_err(store_error)?;
        Ok((lease.secret().clone(), lease.fingerprint().clone()))
    }

    async fn replace(&self, key: &CredentialKey, material: &Secret) -> Result<Fingerprint, TokenError> {
        let (stored, replaced) = self.vault.put(key, material).await.map_err(store_error)?;
        let event = Event::CredentialPut {
            tenant: key.tenant.clone(),
            vendor: key.vendor.clone(),
            fingerprint: stored.fingerprint.to_string(),
            replaced: replaced.map(|f| f.to_string()),
        };
        // Stored: the audit entry follows; failing it does not undo the put
        // (the old refresh token is spent either way).
        if let Err(e) = self.audit.append(ACTOR, event).await {
            tracing::error!(credential = %key, error = %e, "cannot audit the stored rotated refresh token");
        }
        Ok(stored.fingerprint)
    }

    async fn record(&self, fetch: &Fetch<'_>) -> Result<(), TokenError> {
        let event = Event::OauthToken {
            tenant: fetch.key.tenant.clone(),
            vendor: fetch.key.vendor.clone(),
            grant: fetch.grant.to_owned(),
            scopes: fetch.scopes.to_owned(),
            old_fingerprint: fetch.old.map(|(f, _)| f.to_string()),
            old_expires_ms: fetch.old.map(|(_, e)| e),
            new_fingerprint: fetch.new.map(|(f, _)| f.to_string()),
            new_expires_ms: fetch.new.map(|(_, e)| e),
            rotated: fetch.rotated,
            outcome: fetch.outcome.to_owned(),
            replica: self.replica.clone(),
        };
        self.audit
            .append(ACTOR, event)
            .await
            .map_err(|e| TokenError::Audit(e.to_string()))
    }
}

/// What a call to an OAuth vendor sends: the access token, and the grant
/// material's secrets, which the answer is scrubbed of too.
pub struct Bearer {
    /// The access token.
    pub token: AccessToken,
    /// The client secret and refresh token.
    pub scrub_also: Vec<Secret>,
    /// The tenant's client certificate, for a vendor with `mtls`.
    pub identity: Option<valet_egress::ClientIdentity>,
}

/// For an OAuth vendor, the access token the call sends instead of the
/// grant material it leased; `None` for a static scheme.
pub async fn bearer(app: &App, call: &ValidCall, lease: &Lease) -> Result<Option<Bearer>, Failure> {
    let Some(spec) = call.vendor.oauth() else {
        return Ok(None);
    };
    let material =
        GrantMaterial::parse(lease.secret(), spec).map_err(|why| Failure::from(TokenError::Material(why)))?;
    let scrub_also = [Some(&material.client_secret), material.refresh_token.as_ref()]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .map(|s| Secret::new(s.as_bytes().to_vec()))
        .collect();
    let identity = match (spec.mtls, material.identity()) {
        (false, _) => None,
        (true, Some(Ok(identity))) => Some(identity),
        (true, _) => {
            return Err(Failure::from(TokenError::Material(
                "has no usable client_cert and client_key for this mtls vendor",
            )));
        }
    };
    drop(material);
    let write = call.operation == Operation::Write;
    let token = app
        .tokens
        .access_token(&call.vendor, &call.key, write, lease.fingerprint())
        .await?;
    Ok(Some(Bearer {
        token,
        scrub_also,
        identity,
    }))
}

/// Offboarding or containment of `key`: its OAuth tokens (and refresh
/// token) revoked at the provider when its vendor has a `revocation_url`,
/// the result audited by `actor`; forgotten either way. Failures are
/// recorded, never fatal: the tenant is stopped by Valet regardless.
pub async fn revoke(app: &App, actor: &str, key: &CredentialKey, why: &str) -> Vec<valet_oauth::Revoked> {
    let vendor = app.registry.get(&key.vendor);
    let Some(vendor) = vendor.filter(|v| v.revocation_endpoint().is_some()) else {
        app.tokens.forget(key).await;
        return Vec::new();
    };
    let grants = AppGrants::new(app.vault.clone(), app.audit.clone());
    let reason = format!("revoking OAuth tokens: {why}");
    let lease = match app.vault.lease(key, actor, &reason, "", &grants).await {
        Ok(lease) => lease,
        Err(e) => {
            tracing::warn!(credential = %key, error = %e, "cannot read the grant material to revoke OAuth tokens");
            app.tokens.forget(key).await;
            return Vec::new();
        }
    };
    let revoked = app.tokens.revoke(&vendor, key, lease.secret()).await;
    let event = Event::OauthRevoke {
        tenant: key.tenant.clone(),
        vendor: key.vendor.clone(),
        tokens: revoked
            .iter()
            .map(|r| format!("{}:{}:{}", r.kind, r.fingerprint, r.outcome))
            .collect(),
    };
    if let Err(e) = app.record(actor, event).await {
        tracing::error!(credential = %key, error = %e, "cannot audit an OAuth revocation");
    }
    revoked
}

/// Whether `secret` is what `vendor` needs: the auth scheme's own check,
/// and for `private_key_jwt` a private key that can sign assertions.
pub fn check_secret(vendor: &valet_egress::Vendor, secret: &Secret) -> Result<(), &'static str> {
    vendor.auth().check_secret(secret)?;
    if let Some(spec) = vendor.oauth()
        && spec.client_auth == valet_egress::ClientAuth::PrivateKeyJwt
    {
        let material = GrantMaterial::parse(secret, spec)?;
        valet_oauth::assertion::check(&material)
            .map_err(|_| "private_key is not a PKCS#8 PEM P-256 (ES256) or RSA (RS256) key")?;
    }
    Ok(())
}
