//! The access tokens of every tenant × OAuth vendor × scope set: held
//! sealed, handed out in plaintext only for one call, fetched once however
//! many calls want one, and replaced before they expire.
//!
//! A call asks [`Tokens::access_token`] with its leased grant material:
//!
//! 1. **Held and current** — a token for the call's scope set, fetched with
//!    the grant the call leased and not expired: opened and used. Past its
//!    refresh point (`refresh_before_ms` before expiry, less a jitter) one
//!    background refresh is started and the held token still used, so in
//!    the steady state no call waits on the token endpoint.
//! 2. **Blocked** — the provider refused this grant (`invalid_grant`,
//!    `invalid_client`): [`TokenError::ReauthRequired`] at once, until new
//!    grant material is stored. Or it was busy (429, 5xx) and asked for a
//!    pause: [`TokenError::EndpointUnavailable`] until then.
//! 3. **Fetch** — one fetch per tenant × vendor at a time, run as its own
//!    task so a caller giving up cannot cut a refresh-token rotation in
//!    half. Under the lock it re-reads the grant material stored now (a
//!    rotation may have replaced the leased one), looks again for a token
//!    another fetch just got, and only then asks the token endpoint. A
//!    rotated refresh token is stored, durably, before the new access token
//!    is used; if that fails both are kept sealed in memory, the call fails,
//!    and the next fetch stores them first — the stale stored refresh token
//!    is never presented again.
//!
//! A vendor's 401 for a token removes it ([`Tokens::reject`]) only if it is
//! still the held one, so a burst of 401s costs one fetch.
//!
//! Every fetch is audited through [`Grants::record`] before its token is
//! used; the record names fingerprints, never a token.

use crate::request::{self, Issued, RequestError, TokenKind};
use crate::shared::{self, Published, Shared};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use valet_credentials::{CredentialKey, Fingerprint, Secret, Vault};
use valet_egress::{GrantMaterial, Vendor};

/// What a fetch of a token leaves for the audit log.
#[derive(Debug, Clone)]
pub struct Fetch<'a> {
    /// Tenant × vendor.
    pub key: &'a CredentialKey,
    /// `client_credentials` or `refresh_token`.
    pub grant: &'static str,
    /// The scope set asked for, space-separated.
    pub scopes: &'a str,
    /// The token replaced, if one was held, and when it expires(d), Unix
    /// milliseconds.
    pub old: Option<(&'a Fingerprint, u64)>,
    /// The token issued and when it expires, on success.
    pub new: Option<(&'a Fingerprint, u64)>,
    /// Whether the provider rotated the refresh token.
    pub rotated: bool,
    /// `issued`, or the failure's outcome name.
    pub outcome: &'static str,
}

/// Where the grant material lives and where fetches are recorded: the
/// application's vault and audit log.
pub trait Grants: Send + Sync + 'static {
    /// The grant material stored now for `key`, and its fingerprint.
    fn current(
        &self,
        key: &CredentialKey,
    ) -> impl Future<Output = Result<(Secret, Fingerprint), TokenError>> + Send;
    /// Stores `material` (a rotated refresh token) durably; its fingerprint.
    fn replace(
        &self,
        key: &CredentialKey,
        material: &Secret,
    ) -> impl Future<Output = Result<Fingerprint, TokenError>> + Send;
    /// Records a fetch; a token whose fetch cannot be recorded is not used.
    fn record(&self, fetch: &Fetch<'_>) -> impl Future<Output = Result<(), TokenError>> + Send;
}

/// Why a call has no access token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// The provider refused the stored grant; new material must be stored.
    #[error(
        "the OAuth grant for tenant {tenant} vendor {vendor} was refused ({error}); store new grant material"
    )]
    ReauthRequired {
        /// Tenant.
        tenant: String,
        /// Vendor.
        vendor: String,
        /// The provider's error code.
        error: String,
    },
    /// The token endpoint is unreachable or busy and no token is held.
    #[error("the token endpoint of vendor {vendor} is unavailable: {cause}")]
    EndpointUnavailable {
        /// Vendor.
        vendor: String,
        /// What happened.
        cause: String,
    },
    /// The provider refused the request for a reason the config must fix.
    #[error("the token endpoint of vendor {vendor} refused the request ({error})")]
    Refused {
        /// Vendor.
        vendor: String,
        /// The provider's error code.
        error: String,
    },
    /// The stored grant material is not what this vendor needs.
    #[error("the stored OAuth grant material {0}")]
    Material(&'static str),
    /// Reading or storing the grant material failed.
    #[error("credential store: {0}")]
    Store(String),
    /// The fetch could not be audited.
    #[error("audit log: {0}")]
    Audit(String),
}

/// An access token for one call. Zeroed when dropped.
pub struct AccessToken {
    /// The token.
    pub secret: Secret,
    /// Its fingerprint (for the audit log and [`Tokens::reject`]).
    pub fingerprint: Fingerprint,
    /// The scope set it was issued for, space-separated.
    pub scopes: String,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("fingerprint", &self.fingerprint)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// One token a revocation was for.
#[derive(Debug, Clone)]
pub struct Revoked {
    /// `access_token` or `refresh_token`.
    pub kind: &'static str,
    /// Its fingerprint.
    pub fingerprint: Fingerprint,
    /// `revoked`, or why not (`refused`, `busy`, `unavailable`).
    pub outcome: String,
}

/// Tenant × vendor × scope set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    credential: CredentialKey,
    scopes: String,
}

/// A token held, sealed.
#[derive(Clone)]
struct Held {
    sealed: Vec<u8>,
    fingerprint: Fingerprint,
    /// The grant material it was fetched with, and after a rotation of its
    /// refresh token the material stored then: a call that leased either
    /// may use it.
    grants: Vec<Fingerprint>,
    issued: Instant,
    lifetime: Duration,
    refresh_at: Instant,
}

impl Held {
    fn expires(&self) -> Instant {
        self.issued + self.lifetime
    }

    /// [`Held::expires`] on the wall clock, Unix milliseconds.
    fn expires_ms(&self) -> u64 {
        let now = Instant::now();
        let expires = self.expires();
        let ms = |d: Duration| d.as_millis() as u64;
        if expires >= now {
            shared::now_ms() + ms(expires - now)
        } else {
            shared::now_ms().saturating_sub(ms(now - expires))
        }
    }
}

/// Why a tenant × vendor gets no fetch now.
#[derive(Debug, Clone)]
enum Blocked {
    /// The provider refused this grant material.
    Reauth { grant: Fingerprint, error: String },
    /// The provider asked for a pause.
    Busy { until: Instant, cause: String },
}

/// A rotated refresh token not yet stored, with the access token issued
/// beside it (unused until the refresh token is stored).
struct Unstored {
    material: Vec<u8>,
    token: TokenKey,
    held: Held,
}

/// A token endpoint that failed without saying how long to wait is asked
/// again after this.
const BUSY_BACKOFF: Duration = Duration::from_secs(1);

/// The fleet's lock outlives the token request's timeout by this much
/// (storing a rotated refresh token, publishing the token).
const LOCK_MARGIN: Duration = Duration::from_secs(5);

/// How often a replica waiting on another's fetch looks for its token.
const FLEET_POLL: Duration = Duration::from_millis(25);

/// What the fleet says about a fetch.
enum Turn {
    /// Another replica's token, now held here.
    Adopted(Held),
    /// This replica holds the fleet's lock (its fencing token).
    Ours(u64),
    /// Redis does not answer: this replica fetches on its own.
    Alone,
}

/// The tokens. Shared behind an `Arc`.
pub struct Tokens<G> {
    vault: Vault,
    grants: Arc<G>,
    held: Mutex<HashMap<TokenKey, Held>>,
    blocked: Mutex<HashMap<CredentialKey, Blocked>>,
    unstored: Mutex<HashMap<CredentialKey, Unstored>>,
    /// One fetch per tenant × vendor at a time.
    locks: Mutex<HashMap<CredentialKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Background refreshes started and not finished.
    refreshing: Mutex<HashSet<TokenKey>>,
    /// The last token a vendor refused (401), per scope set: not adopted
    /// from the fleet again.
    rejected: Mutex<HashMap<TokenKey, Fingerprint>>,
    /// The fleet's tokens, when Valet runs as one.
    shared: Option<Shared>,
    metrics: valet_telemetry::Metrics,
}

impl<G> std::fmt::Debug for Tokens<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").finish_non_exhaustive()
    }
}

impl<G: Grants> Tokens<G> {
    /// No tokens yet; `vault` seals them, `grants` is where material lives.
    pub fn new(vault: Vault, grants: G, metrics: valet_telemetry::Metrics) -> Self {
        Self {
            vault,
            grants: Arc::new(grants),
            held: Mutex::default(),
            blocked: Mutex::default(),
            unstored: Mutex::default(),
            locks: Mutex::default(),
            refreshing: Mutex::default(),
            rejected: Mutex::default(),
            shared: None,
            metrics,
        }
    }

    /// Shares tokens with the fleet through `shared` (see [`crate::shared`]).
    pub fn with_shared(mut self, shared: Shared) -> Self {
        self.shared = Some(shared);
        self
    }

    /// An access token for a call to `vendor` (an OAuth vendor) as `key`,
    /// of kind `write`, which leased `grant` (see the module docs).
    pub async fn access_token(
        self: &Arc<Self>,
        vendor: &Arc<Vendor>,
        key: &CredentialKey,
        write: bool,
        grant: &Fingerprint,
    ) -> Result<AccessToken, TokenError> {
        let spec = vendor.oauth().expect("an OAuth vendor");
        let token = TokenKey {
            credential: key.clone(),
            scopes: spec.scopes_for(write).join(" "),
        };
        let now = Instant::now();
        if let Some(held) = self
            .held(&token)
            .filter(|h| h.grants.contains(grant) && now < h.expires())
        {
            if now >= held.refresh_at {
                self.refresh_in_background(vendor, &token);
            }
            return self.open(&token, &held);
        }
        self.check_blocked(vendor, key, Some(grant), now)?;
        let fetch = tokio::spawn(
            self.clone()
                .fetch(vendor.clone(), token, Some(grant.clone()), None),
        );
        fetch.await.unwrap_or_else(|_| {
            Err(TokenError::EndpointUnavailable {
                vendor: vendor.name().to_owned(),
                cause: "the token fetch was abandoned".into(),
            })
        })
    }

    /// The vendor refused `used` (a 401): forget it if it is still the token
    /// held (here and in the fleet), so the next [`Tokens::access_token`]
    /// fetches a new one.
    pub async fn reject(&self, key: &CredentialKey, scopes: &str, used: &Fingerprint) {
        let token = TokenKey {
            credential: key.clone(),
            scopes: scopes.to_owned(),
        };
        {
            let mut held = self.held.lock().expect("lock");
            if held.get(&token).is_some_and(|h| &h.fingerprint == used) {
                held.remove(&token);
            }
        }
        self.rejected.lock().expect("lock").insert(token, used.clone());
        if let Some(shared) = &self.shared {
            let at = shared::token_key(&key.tenant, &key.vendor, scopes);
            if let Err(e) = shared.drop_if(&at, used.as_str()).await {
                tracing::warn!(credential = %key, error = %e, "cannot drop a refused OAuth token from the fleet");
            }
        }
    }

    /// Forgets everything about `key` (its grant material was replaced or
    /// deleted by an administrator), in the fleet too.
    pub async fn forget(&self, key: &CredentialKey) {
        self.held
            .lock()
            .expect("lock")
            .retain(|t, _| &t.credential != key);
        self.blocked.lock().expect("lock").remove(key);
        if let Some(shared) = &self.shared
            && let Err(e) = shared.forget(&key.tenant, &key.vendor).await
        {
            tracing::warn!(credential = %key, error = %e, "cannot drop the fleet's OAuth tokens of a replaced credential");
        }
    }

    /// Revokes at the provider (RFC 7009, when the vendor has a
    /// `revocation_url`) every access token held for `key` here or
    /// published by the fleet, and the refresh token in `material`; then
    /// forgets them. Says what became of each, by fingerprint.
    pub async fn revoke(&self, vendor: &Arc<Vendor>, key: &CredentialKey, material: &Secret) -> Vec<Revoked> {
        let mut revoked = Vec::new();
        let parsed = vendor
            .oauth()
            .and_then(|spec| GrantMaterial::parse(material, spec).ok());
        if let (Some(parsed), Some(_)) = (parsed, vendor.revocation_endpoint()) {
            for (kind, token, fingerprint) in self.revocable(key, &parsed).await {
                let outcome = match request::revoke(vendor, &parsed, &token, kind).await {
                    Ok(()) => "revoked".to_owned(),
                    Err(e) => {
                        tracing::warn!(credential = %key, kind = kind.as_str(), error = %e, "an OAuth token could not be revoked");
                        e.outcome().to_owned()
                    }
                };
                revoked.push(Revoked {
                    kind: kind.as_str(),
                    fingerprint,
                    outcome,
                });
            }
        }
        self.forget(key).await;
        revoked
    }

    /// The access tokens held or published for `key`, and `material`'s
    /// refresh token, each once.
    async fn revocable(
        &self,
        key: &CredentialKey,
        material: &GrantMaterial,
    ) -> Vec<(TokenKind, Secret, Fingerprint)> {
        let mut found: Vec<(TokenKind, Secret, Fingerprint)> = Vec::new();
        let held: Vec<(TokenKey, Held)> = self
            .held
            .lock()
            .expect("lock")
            .iter()
            .filter(|(t, _)| &t.credential == key)
            .map(|(t, h)| (t.clone(), h.clone()))
            .collect();
        for (token, h) in held {
            if let Ok(plain) = self.vault.open_data(&key.tenant, &label(&token), &h.sealed) {
                found.push((TokenKind::Access, Secret::new(plain), h.fingerprint));
            }
        }
        if let Some(shared) = &self.shared {
            for p in shared.all(&key.tenant, &key.vendor).await.unwrap_or_default() {
                let token = TokenKey {
                    credential: key.clone(),
                    scopes: p.scopes.clone(),
                };
                let fingerprint = Fingerprint::from_hex(&p.fingerprint);
                if found.iter().any(|(_, _, f)| *f == fingerprint) {
                    continue;
                }
                if let Some(plain) = p
                    .sealed_bytes()
                    .and_then(|s| self.vault.open_data(&key.tenant, &label(&token), &s).ok())
                {
                    found.push((TokenKind::Access, Secret::new(plain), fingerprint));
                }
            }
        }
        if let Some(refresh) = &material.refresh_token {
            let secret = Secret::new(refresh.as_bytes().to_vec());
            let fingerprint = self.vault.fingerprint(&secret);
            found.push((TokenKind::Refresh, secret, fingerprint));
        }
        found
    }

    fn rejected(&self, token: &TokenKey) -> Option<Fingerprint> {
        self.rejected.lock().expect("lock").get(token).cloned()
    }

    /// Whether `key` is waiting for new grant material.
    pub fn reauth_required(&self, key: &CredentialKey) -> bool {
        matches!(
            self.blocked.lock().expect("lock").get(key),
            Some(Blocked::Reauth { .. })
        )
    }

    fn held(&self, token: &TokenKey) -> Option<Held> {
        self.held.lock().expect("lock").get(token).cloned()
    }

    fn open(&self, token: &TokenKey, held: &Held) -> Result<AccessToken, TokenError> {
        let plain = self
            .vault
            .open_data(&token.credential.tenant, &label(token), &held.sealed)
            .map_err(|_| TokenError::Store("a held access token does not open".into()))?;
        Ok(AccessToken {
            secret: Secret::new(plain),
            fingerprint: held.fingerprint.clone(),
            scopes: token.scopes.clone(),
        })
    }

    /// Refuses at once when the provider refused `grant` (any grant, when
    /// `None`) or asked for a pause.
    fn check_blocked(
        &self,
        vendor: &Vendor,
        key: &CredentialKey,
        grant: Option<&Fingerprint>,
        now: Instant,
    ) -> Result<(), TokenError> {
        match self.blocked.lock().expect("lock").get(key) {
            Some(Blocked::Reauth {
                grant: refused,
                error,
            }) if grant.is_none_or(|g| g == refused) => Err(TokenError::ReauthRequired {
                tenant: key.tenant.clone(),
                vendor: key.vendor.clone(),
                error: error.clone(),
            }),
            Some(Blocked::Busy { until, cause }) if now < *until => Err(TokenError::EndpointUnavailable {
                vendor: vendor.name().to_owned(),
                cause: cause.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Starts one background fetch for `token` unless one is running.
    fn refresh_in_background(self: &Arc<Self>, vendor: &Arc<Vendor>, token: &TokenKey) {
        // Not while the provider asked for a pause (or refused the grant).
        if self
            .check_blocked(vendor, &token.credential, None, Instant::now())
            .is_err()
        {
            return;
        }
        if !self.refreshing.lock().expect("lock").insert(token.clone()) {
            return;
        }
        let (this, vendor, token) = (self.clone(), vendor.clone(), token.clone());
        tokio::spawn(async move {
            let held = this.held(&token).map(|h| h.fingerprint);
            if let Err(e) = this.clone().fetch(vendor, token.clone(), None, held).await {
                tracing::warn!(credential = %token.credential, error = %e, "background OAuth token refresh failed; the held token is used until it expires");
            }
            this.refreshing.lock().expect("lock").remove(&token);
        });
    }

    /// The fetch, under the tenant × vendor's lock. `leased`: the grant
    /// material the waiting call leased (a token another fetch got with it
    /// while this one waited for the lock is used at once). `replacing`:
    /// the held token a background refresh (or a vendor's 401) set out to
    /// replace (if another fetch has replaced it meanwhile, there is nothing
    /// to do).
    async fn fetch(
        self: Arc<Self>,
        vendor: Arc<Vendor>,
        token: TokenKey,
        leased: Option<Fingerprint>,
        replacing: Option<Fingerprint>,
    ) -> Result<AccessToken, TokenError> {
        let lock = self.lock_for(&token.credential);
        let _one_at_a_time = lock.lock().await;
        let key = &token.credential;
        let replacing = replacing.or_else(|| self.rejected(&token));
        let fresh = |h: &Held| Instant::now() < h.expires() && replacing.as_ref() != Some(&h.fingerprint);
        if let Some(h) = self
            .held(&token)
            .filter(|h| leased.as_ref().is_some_and(|l| h.grants.contains(l)) && fresh(h))
        {
            return self.open(&token, &h);
        }
        if let Some((stored, held)) = self.store_unstored(key).await?
            && stored == token
        {
            return self.open(&token, &held);
        }
        let current = self.grants.current(key).await?;
        let grant = current.1.clone();
        let held = self.held(&token);
        if let Some(h) = held.as_ref().filter(|h| h.grants.contains(&grant) && fresh(h)) {
            return self.open(&token, h);
        }
        self.check_blocked(&vendor, key, Some(&grant), Instant::now())?;
        let Some(shared) = self.shared.clone() else {
            return self.exchange(&vendor, &token, held, current, None).await;
        };
        match self
            .fleet_turn(&shared, &vendor, &token, replacing.as_ref())
            .await?
        {
            Turn::Adopted(held) => self.open(&token, &held),
            Turn::Alone => self.exchange(&vendor, &token, held, current, None).await,
            Turn::Ours(fence) => {
                // Read again under the fleet's lock: another replica may
                // have rotated the refresh token while this one waited.
                let current = self.grants.current(key).await?;
                let result = self.exchange(&vendor, &token, held, current, Some(fence)).await;
                if let Err(e) = shared.unlock(&key.tenant, &key.vendor, fence).await {
                    tracing::warn!(credential = %key, error = %e, "cannot release the fleet's OAuth lock; it expires by itself");
                }
                result
            }
        }
    }

    /// With a fleet: a token another replica published (fetched while this
    /// one waited), or the fleet's lock for this replica to fetch, or —
    /// Redis not answering — this replica on its own.
    async fn fleet_turn(
        &self,
        shared: &Shared,
        vendor: &Vendor,
        token: &TokenKey,
        replacing: Option<&Fingerprint>,
    ) -> Result<Turn, TokenError> {
        let key = &token.credential;
        let published = shared::token_key(&key.tenant, &key.vendor, &token.scopes);
        let ttl = vendor
            .token_endpoint()
            .map_or(Duration::from_secs(30), |e| e.timeout())
            + LOCK_MARGIN;
        // Without Redis a replica may fetch on its own with client
        // credentials, but never present a rotating refresh token another
        // replica might be presenting at the same moment.
        let rotating = vendor
            .oauth()
            .is_some_and(|o| o.grant == valet_egress::Grant::RefreshToken);
        let alone = |e: String| {
            if rotating {
                tracing::warn!(credential = %key, error = %e, "the fleet's OAuth lock in Redis is unavailable; no refresh token is presented without it");
                return Err(TokenError::EndpointUnavailable {
                    vendor: vendor.name().to_owned(),
                    cause: "the fleet's lock in Redis is unavailable, and a refresh token is never presented without it".into(),
                });
            }
            tracing::warn!(credential = %key, error = %e, "the fleet's OAuth tokens in Redis are unavailable; this replica fetches its own");
            Ok(Turn::Alone)
        };
        let give_up = tokio::time::Instant::now() + ttl + LOCK_MARGIN;
        loop {
            match shared.get(&published).await {
                Ok(Some(p)) => {
                    if let Some(held) = self.adopt(vendor, token, &p, replacing) {
                        return Ok(Turn::Adopted(held));
                    }
                }
                Ok(None) => {}
                Err(e) => return alone(e),
            }
            match shared.lock(&key.tenant, &key.vendor, ttl).await {
                Ok(Some(fence)) => {
                    // The holder before may have published as it let go.
                    if let Ok(Some(p)) = shared.get(&published).await
                        && let Some(held) = self.adopt(vendor, token, &p, replacing)
                    {
                        let _ = shared.unlock(&key.tenant, &key.vendor, fence).await;
                        return Ok(Turn::Adopted(held));
                    }
                    return Ok(Turn::Ours(fence));
                }
                Ok(None) => {}
                Err(e) => return alone(e),
            }
            // Another replica is fetching: wait for its token or its lock's end.
            loop {
                if tokio::time::Instant::now() > give_up {
                    return Err(TokenError::EndpointUnavailable {
                        vendor: vendor.name().to_owned(),
                        cause: "another replica's token fetch did not finish".into(),
                    });
                }
                tokio::time::sleep(FLEET_POLL).await;
                let published_now = matches!(shared.get(&published).await, Ok(Some(p)) if self.adopt(vendor, token, &p, replacing).is_some());
                if published_now || !shared.locked(&key.tenant, &key.vendor).await.unwrap_or(false) {
                    break;
                }
            }
        }
    }

    /// A published token, held here if it is current and not `replacing`.
    fn adopt(
        &self,
        vendor: &Vendor,
        token: &TokenKey,
        p: &Published,
        replacing: Option<&Fingerprint>,
    ) -> Option<Held> {
        let now_ms = shared::now_ms();
        if p.expires_ms <= now_ms || replacing.is_some_and(|r| r.as_str() == p.fingerprint) {
            return None;
        }
        let sealed = p.sealed_bytes()?;
        // It must open here (same master key) before it is used.
        self.vault
            .open_data(&token.credential.tenant, &label(token), &sealed)
            .ok()?;
        let age = Duration::from_millis(now_ms.saturating_sub(p.issued_ms));
        let issued = Instant::now().checked_sub(age)?;
        let lifetime = Duration::from_millis(p.expires_ms.saturating_sub(p.issued_ms));
        let refresh_before = vendor.oauth().map_or(Duration::ZERO, |o| o.refresh_before);
        let held = Held {
            sealed,
            fingerprint: Fingerprint::from_hex(&p.fingerprint),
            grants: vec![
                Fingerprint::from_hex(&p.grant_before),
                Fingerprint::from_hex(&p.grant_after),
            ],
            issued,
            lifetime,
            refresh_at: refresh_at(issued, lifetime, refresh_before),
        };
        self.held
            .lock()
            .expect("lock")
            .insert(token.clone(), held.clone());
        Some(held)
    }

    /// Asks the token endpoint with `material` (read under this replica's
    /// lock, and under the fleet's when `fence` is held) and puts the new
    /// token in force: audited, a rotated refresh token stored first,
    /// published to the fleet when `fence` is held.
    async fn exchange(
        &self,
        vendor: &Arc<Vendor>,
        token: &TokenKey,
        held: Option<Held>,
        (material, grant): (Secret, Fingerprint),
        fence: Option<u64>,
    ) -> Result<AccessToken, TokenError> {
        let key = &token.credential;
        let spec = vendor.oauth().expect("an OAuth vendor");
        let parsed = GrantMaterial::parse(&material, spec).map_err(TokenError::Material)?;
        drop(material);
        let scopes: Vec<String> = token.scopes.split_whitespace().map(str::to_owned).collect();
        let old = held.as_ref().map(|h| (h.fingerprint.clone(), h.expires_ms()));
        let answer = request::token(vendor, &parsed, &scopes).await;
        let outcome = match &answer {
            Ok(_) => "issued",
            Err(e) => e.outcome(),
        };
        self.metrics.oauth_token_request(vendor.name(), outcome);
        let issued = match answer {
            Ok(issued) => issued,
            Err(e) => {
                return Err(self
                    .failed(vendor, token, &grant, spec.grant.as_str(), old, e)
                    .await);
            }
        };
        self.blocked.lock().expect("lock").remove(key);
        let fingerprint = self.vault.fingerprint(&issued.access);
        let rotated = rotated(&parsed, &issued);
        let record = Fetch {
            key,
            grant: spec.grant.as_str(),
            scopes: &token.scopes,
            old: old.as_ref().map(|(f, l)| (f, *l)),
            new: Some((
                &fingerprint,
                shared::now_ms() + issued.lifetime.as_millis() as u64,
            )),
            rotated: rotated.is_some(),
            outcome,
        };
        let audited = self.grants.record(&record).await;
        let now = Instant::now();
        let issued_ms = shared::now_ms();
        let mut new = Held {
            sealed: self
                .vault
                .seal_data(&key.tenant, &label(token), issued.access.expose()),
            fingerprint,
            grants: vec![grant.clone()],
            issued: now,
            lifetime: issued.lifetime,
            refresh_at: refresh_at(now, issued.lifetime, spec.refresh_before),
        };
        if let Some(material) = rotated {
            // Stored before the new access token is used, even if the
            // record above failed: the old refresh token is spent.
            match self.grants.replace(key, &material).await {
                Ok(stored) => new.grants.push(stored),
                Err(e) => {
                    self.keep_unstored(key, &material, token, new);
                    return Err(e);
                }
            }
        }
        audited?;
        self.held.lock().expect("lock").insert(token.clone(), new.clone());
        self.rejected.lock().expect("lock").remove(token);
        if let (Some(shared), Some(fence)) = (&self.shared, fence) {
            let published = Published {
                sealed: Published::encode(&new.sealed),
                fingerprint: new.fingerprint.to_string(),
                grant_before: grant.to_string(),
                grant_after: new.grants.last().expect("one").to_string(),
                issued_ms,
                expires_ms: issued_ms + new.lifetime.as_millis() as u64,
                fence,
                scopes: token.scopes.clone(),
            };
            let at = shared::token_key(&key.tenant, &key.vendor, &token.scopes);
            if let Err(e) = shared.publish(&key.tenant, &key.vendor, &at, &published).await {
                tracing::warn!(credential = %key, error = %e, "cannot publish the OAuth token to the fleet; other replicas fetch their own");
            }
        }
        self.open(token, &new)
    }

    /// A failed fetch: blocked if the provider refused the grant or asked
    /// for a pause, audited, and the call's error.
    async fn failed(
        &self,
        vendor: &Vendor,
        token: &TokenKey,
        grant: &Fingerprint,
        grant_name: &'static str,
        old: Option<(Fingerprint, u64)>,
        e: RequestError,
    ) -> TokenError {
        let key = &token.credential;
        let record = Fetch {
            key,
            grant: grant_name,
            scopes: &token.scopes,
            old: old.as_ref().map(|(f, l)| (f, *l)),
            new: None,
            rotated: false,
            outcome: e.outcome(),
        };
        if let Err(audit) = self.grants.record(&record).await {
            tracing::error!(credential = %key, error = %audit, "cannot audit a failed OAuth token fetch");
        }
        let name = vendor.name().to_owned();
        match e {
            RequestError::Reauth(error) => {
                tracing::error!(credential = %key, %error, "the OAuth provider refused the grant; calls are refused until new grant material is stored");
                self.blocked.lock().expect("lock").insert(
                    key.clone(),
                    Blocked::Reauth {
                        grant: grant.clone(),
                        error: error.clone(),
                    },
                );
                TokenError::ReauthRequired {
                    tenant: key.tenant.clone(),
                    vendor: key.vendor.clone(),
                    error,
                }
            }
            RequestError::Refused(error) => TokenError::Refused { vendor: name, error },
            RequestError::Busy { status, retry_after } => {
                self.pause(key, format!("it answered {status}"), retry_after, name)
            }
            RequestError::Unavailable(cause) => self.pause(key, cause, None, name),
        }
    }

    /// The provider is busy or unreachable: no fetch for `key` until
    /// `retry_after` (or [`BUSY_BACKOFF`]) has passed.
    fn pause(
        &self,
        key: &CredentialKey,
        cause: String,
        retry_after: Option<Duration>,
        vendor: String,
    ) -> TokenError {
        let until = Instant::now() + retry_after.unwrap_or(BUSY_BACKOFF);
        let busy = Blocked::Busy {
            until,
            cause: cause.clone(),
        };
        self.blocked.lock().expect("lock").insert(key.clone(), busy);
        TokenError::EndpointUnavailable { vendor, cause }
    }

    fn lock_for(&self, key: &CredentialKey) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .expect("lock")
            .entry(key.clone())
            .or_default()
            .clone()
    }

    /// Keeps a rotated refresh token that could not be stored, sealed, with
    /// the access token issued beside it.
    fn keep_unstored(&self, key: &CredentialKey, material: &Secret, token: &TokenKey, held: Held) {
        tracing::error!(credential = %key, "a rotated OAuth refresh token could not be stored; it is kept in memory and stored before any other refresh");
        self.metrics.oauth_refresh_token_unstored(1);
        let sealed = self
            .vault
            .seal_data(&key.tenant, UNSTORED_LABEL, material.expose());
        self.unstored.lock().expect("lock").insert(
            key.clone(),
            Unstored {
                material: sealed,
                token: token.clone(),
                held,
            },
        );
    }

    /// Stores a kept refresh token, if there is one: the held token issued
    /// with it is then put in force and returned. Fails (and keeps it) while
    /// the store still cannot take it.
    async fn store_unstored(&self, key: &CredentialKey) -> Result<Option<(TokenKey, Held)>, TokenError> {
        let Some((sealed, token, held)) = self
            .unstored
            .lock()
            .expect("lock")
            .get(key)
            .map(|u| (u.material.clone(), u.token.clone(), u.held.clone()))
        else {
            return Ok(None);
        };
        let material = self
            .vault
            .open_data(&key.tenant, UNSTORED_LABEL, &sealed)
            .map(Secret::new)
            .map_err(|_| TokenError::Store("a kept refresh token does not open".into()))?;
        let stored = self.grants.replace(key, &material).await?;
        self.unstored.lock().expect("lock").remove(key);
        self.metrics.oauth_refresh_token_unstored(-1);
        tracing::info!(credential = %key, "the kept OAuth refresh token is stored");
        let mut held = held;
        held.grants.push(stored);
        self.held
            .lock()
            .expect("lock")
            .insert(token.clone(), held.clone());
        Ok(Some((token, held)))
    }
}

/// What a held token is sealed under (the AAD binds it to its tenant,
/// vendor and scope set).
fn label(token: &TokenKey) -> String {
    format!("oauth-access-token/{}/{}", token.credential.vendor, token.scopes)
}

const UNSTORED_LABEL: &str = "oauth-unstored-grant";

/// The new grant material, if the provider returned a refresh token other
/// than the one presented.
fn rotated(material: &GrantMaterial, issued: &Issued) -> Option<Secret> {
    let new = issued.refresh.as_ref()?;
    let same = material
        .refresh_token
        .as_ref()
        .is_some_and(|old| old.as_bytes() == new.expose());
    if same {
        return None;
    }
    let mut next = material.clone();
    next.refresh_token = Some(String::from_utf8_lossy(new.expose()).into_owned());
    Some(next.to_secret())
}

/// When a token issued `now` for `lifetime` is replaced: `refresh_before`
/// ahead of its expiry, less up to a tenth of its lifetime of jitter (so a
/// fleet's tokens do not all come due at once); halfway, for a token that
/// lives no longer than `refresh_before`.
fn refresh_at(now: Instant, lifetime: Duration, refresh_before: Duration) -> Instant {
    if lifetime <= refresh_before {
        return now + lifetime / 2;
    }
    let mut byte = [0u8; 1];
    let jitter = match getrandom::fill(&mut byte) {
        Ok(()) => (lifetime - refresh_before).min(lifetime / 10) * u32::from(byte[0]) / 255,
        Err(_) => Duration::ZERO,
    };
    now + (lifetime - refresh_before - jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_comes_before_expiry() {
        let now = Instant::now();
        for _ in 0..100 {
            let at = refresh_at(now, Duration::from_secs(300), Duration::from_secs(60));
            assert!(at <= now + Duration::from_secs(240));
            assert!(at >= now + Duration::from_secs(210));
        }
        let short = refresh_at(now, Duration::from_secs(30), Duration::from_secs(60));
        assert_eq!(short, now + Duration::from_secs(15));
    }
}
