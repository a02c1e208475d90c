//! AWS Secrets Manager as a [`SecretStore`], for fleets.
//!
//! One secret per tenant × vendor, named `<prefix>/<tenant>/<vendor>`, tagged
//! `valet:tenant`, `valet:vendor`, `valet:fingerprint` and `valet:last4` (so
//! a listing needs no secret values). Its value is Valet's own sealed record
//! — the AES-256-GCM envelope under the tenant's key — so read access to
//! Secrets Manager alone never yields a usable token.
//!
//! Reads go through the [`Cache`] (ciphertext only, version check on expiry,
//! single-flight, stale-if-error within a refresh budget). Writes through
//! this process update the cache at once. Rotation stages the new value as
//! AWSPENDING and promotes it to AWSCURRENT (the old value becomes
//! AWSPREVIOUS), as Secrets Manager's own rotation does. Throttling and
//! transient errors are retried by the SDK with exponential backoff and full
//! jitter, a bounded number of times.
//!
//! Every HTTP attempt to Secrets Manager is timed by an SDK interceptor
//! ([`AwsStore::with_metrics`]), so the request count and latency cover all
//! operations, retries included, from one place.

use crate::cache::{Cache, CacheSettings, Clock, Source, SourceError};
use crate::key::{CredentialKey, valid_name};
use crate::store::{CredentialMeta, SecretStore, StoreError, StoreFuture, StoredCredential};
pub use aws_config::SdkConfig;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::config::interceptors::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_sdk_secretsmanager::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType, Tag};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_types::config_bag::{Storable, StoreReplace};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use valet_telemetry::Metrics;

/// What a deleted credential's secret holds before it is deleted: two
/// versions of it push the sealed record out of `AWSCURRENT` and
/// `AWSPREVIOUS`.
const TOMBSTONE: &str = r#"{"valet":"deleted"}"#;

const CURRENT: &str = "AWSCURRENT";
const PENDING: &str = "AWSPENDING";

/// How to reach Secrets Manager.
#[derive(Debug, Clone)]
pub struct AwsConnection {
    /// The AWS region.
    pub region: String,
    /// An endpoint other than AWS's (an emulator, a VPC endpoint).
    pub endpoint_url: Option<String>,
    /// Static credentials instead of the standard chain (environment, profile,
    /// web identity / IRSA, container and instance roles). For tests against
    /// an emulator; never read from configuration.
    pub static_credentials: Option<(String, String)>,
}

/// Builds the SDK configuration: the standard credential chain, rustls with
/// ring, bounded retries with backoff and jitter, and timeouts so a hung
/// endpoint cannot hang calls.
pub async fn sdk_config(conn: &AwsConnection) -> SdkConfig {
    use aws_smithy_http_client::tls;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(conn.region.clone()))
        .http_client(http)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(4)
                .with_initial_backoff(Duration::from_millis(50))
                .with_max_backoff(Duration::from_secs(2)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_attempt_timeout(Duration::from_secs(5))
                .operation_timeout(Duration::from_secs(15))
                .build(),
        );
    if let Some(url) = &conn.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some((id, secret)) = &conn.static_credentials {
        loader = loader.credentials_provider(aws_credential_types::Credentials::new(
            id.clone(),
            secret.clone(),
            None,
            None,
            "valet-static",
        ));
    }
    loader.load().await
}

/// Reads a secret's current string value (the master key's source).
pub async fn read_secret_string(
    config: &SdkConfig,
    secret_id: &str,
) -> Result<zeroize::Zeroizing<String>, String> {
    let out = Client::new(config)
        .get_secret_value()
        .secret_id(secret_id)
        .send()
        .await
        .map_err(|e| describe(&e))?;
    out.secret_string()
        .map(|s| zeroize::Zeroizing::new(s.to_owned()))
        .ok_or_else(|| format!("secret {secret_id} has no string value"))
}

/// Sealed credentials in Secrets Manager, read through a ciphertext cache.
pub struct AwsStore {
    /// Shared with the cache's background refreshes.
    remote: Arc<Remote>,
    prefix: String,
    cache: Cache,
    /// When Secrets Manager last answered any request (readiness).
    answered: Answered,
}

impl std::fmt::Debug for AwsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The cache's view of Secrets Manager.
struct Remote {
    client: Client,
    prefix: String,
}

impl Remote {
    fn name(&self, key: &CredentialKey) -> String {
        format!("{}/{}/{}", self.prefix, key.tenant, key.vendor)
    }
}

impl Source for Remote {
    async fn version(&self, key: &CredentialKey) -> Result<Option<String>, SourceError> {
        match self
            .client
            .describe_secret()
            .secret_id(self.name(key))
            .send()
            .await
        {
            Ok(out) if out.deleted_date().is_some() => Ok(None),
            Ok(out) => Ok(stage_version(out.version_ids_to_stages(), CURRENT)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(SourceError::Unavailable(describe(&e))),
        }
    }

    async fn fetch(&self, key: &CredentialKey) -> Result<Option<(String, StoredCredential)>, SourceError> {
        let name = self.name(key);
        let out = match self
            .client
            .get_secret_value()
            .secret_id(&name)
            .version_stage(CURRENT)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(SourceError::Unavailable(describe(&e))),
        };
        let version = out.version_id().unwrap_or_default().to_owned();
        let cred = serde_json::from_str(out.secret_string().unwrap_or_default()).map_err(|_| {
            SourceError::Corrupt(format!("secret {name} does not hold a Valet sealed record"))
        })?;
        Ok(Some((version, cred)))
    }
}

impl AwsStore {
    /// Records Secrets Manager requests and cache lookups in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        let config = self
            .remote
            .client
            .config()
            .to_builder()
            .interceptor(Observe(metrics.clone()))
            .build();
        self.remote = Arc::new(Remote {
            client: Client::from_conf(config),
            prefix: self.prefix.clone(),
        });
        self.cache.set_metrics(metrics);
        self
    }

    /// A store on `config`, naming secrets `<prefix>/<tenant>/<vendor>`.
    pub fn new(config: &SdkConfig, prefix: &str, settings: CacheSettings) -> Self {
        Self::with_clock(
            config,
            prefix,
            settings,
            std::sync::Arc::new(std::time::Instant::now),
        )
    }

    /// The same, with the cache on `clock` (benchmarks simulate time).
    pub fn with_clock(config: &SdkConfig, prefix: &str, settings: CacheSettings, clock: Clock) -> Self {
        let prefix = prefix.trim_end_matches('/').to_owned();
        let answered = Answered::default();
        let client = aws_sdk_secretsmanager::config::Builder::from(config)
            .interceptor(answered.clone())
            .build();
        Self {
            remote: Arc::new(Remote {
                client: Client::from_conf(client),
                prefix: prefix.clone(),
            }),
            prefix,
            cache: Cache::with_clock(settings, clock),
            answered,
        }
    }

    /// The secret's name for `key`.
    pub fn secret_name(&self, key: &CredentialKey) -> String {
        self.remote.name(key)
    }

    fn client(&self) -> &Client {
        &self.remote.client
    }

    fn tags(key: &CredentialKey, cred: &StoredCredential) -> Vec<Tag> {
        [
            ("valet:tenant", key.tenant.as_str()),
            ("valet:vendor", key.vendor.as_str()),
            ("valet:fingerprint", cred.fingerprint.as_str()),
            ("valet:last4", cred.last4.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
    }

    async fn put_value(&self, key: &CredentialKey, cred: &StoredCredential) -> Result<String, StoreError> {
        let name = self.secret_name(key);
        let value = serde_json::to_string(cred).expect("a record serialises");
        let put = self
            .client()
            .put_secret_value()
            .secret_id(&name)
            .secret_string(&value)
            .send()
            .await;
        let version = match put {
            Ok(out) => {
                self.client()
                    .tag_resource()
                    .secret_id(&name)
                    .set_tags(Some(Self::tags(key, cred)))
                    .send()
                    .await
                    .map_err(|e| unavailable(&e))?;
                out.version_id().unwrap_or_default().to_owned()
            }
            Err(e) if not_found(&e) => self
                .client()
                .create_secret()
                .name(&name)
                .secret_string(&value)
                .set_tags(Some(Self::tags(key, cred)))
                .send()
                .await
                .map_err(|e| unavailable(&e))?
                .version_id()
                .unwrap_or_default()
                .to_owned(),
            Err(e) => return Err(unavailable(&e)),
        };
        Ok(version)
    }

    async fn stages(&self, key: &CredentialKey) -> Result<HashMap<String, Vec<String>>, StoreError> {
        let out = self
            .client()
            .describe_secret()
            .secret_id(self.secret_name(key))
            .send()
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(out.version_ids_to_stages().cloned().unwrap_or_default())
    }

    fn key_of(&self, name: &str) -> Option<CredentialKey> {
        let rest = name.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        let (tenant, vendor) = rest.split_once('/')?;
        (valid_name(tenant).is_ok() && valid_name(vendor).is_ok()).then(|| CredentialKey::new(tenant, vendor))
    }
}

impl SecretStore for AwsStore {
    fn probe(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            // Any answer from the service — "not found" included — means it
            // is reachable; no answer, or a server error (5xx, after the
            // SDK's retries), means it cannot serve a refresh now.
            let name = format!("{}/.valet-health", self.prefix);
            match self.client().describe_secret().secret_id(name).send().await {
                Ok(_) => Ok(()),
                Err(SdkError::ServiceError(e)) if e.raw().status().is_server_error() => {
                    Err(StoreError::Unavailable(format!(
                        "Secrets Manager answered HTTP {}",
                        e.raw().status().as_u16()
                    )))
                }
                Err(SdkError::ServiceError(_)) => Ok(()),
                Err(e) => Err(unavailable(&e)),
            }
        })
    }

    fn last_answered(&self) -> Option<Instant> {
        *self.answered.0.lock().expect("lock")
    }

    fn cache_stats(&self) -> Option<crate::cache::CacheStats> {
        Some(self.cache.stats())
    }

    fn get<'a>(&'a self, key: &'a CredentialKey) -> StoreFuture<'a, Option<StoredCredential>> {
        Box::pin(async move { self.cache.get(key, &self.remote).await })
    }

    fn put<'a>(&'a self, key: &'a CredentialKey, cred: StoredCredential) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let version = self.put_value(key, &cred).await?;
            self.cache.insert(key, version, cred);
            Ok(())
        })
    }

    fn delete<'a>(&'a self, key: &'a CredentialKey) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            // Forget it here first: from now on no call can lease it.
            self.cache.invalidate(key);
            // Overwrite before deleting: should the delete fail, or a
            // deleted secret be restored by other means, the sealed
            // record is no longer its current (or previous) version.
            for _ in 0..2 {
                let put = self
                    .client()
                    .put_secret_value()
                    .secret_id(self.secret_name(key))
                    .secret_string(TOMBSTONE)
                    .send()
                    .await;
                match put {
                    Ok(_) => {}
                    Err(e) if not_found(&e) => return Ok(false),
                    Err(e) => return Err(unavailable(&e)),
                }
            }
            let deleted = self
                .client()
                .delete_secret()
                .secret_id(self.secret_name(key))
                .force_delete_without_recovery(true)
                .send()
                .await;
            // And again: a call between the first invalidation and the delete
            // may have cached the old record.
            self.cache.invalidate(key);
            match deleted {
                Ok(_) => Ok(true),
                Err(e) if not_found(&e) => Ok(false),
                Err(e) => Err(unavailable(&e)),
            }
        })
    }

    fn list<'a>(&'a self, tenant: Option<&'a str>) -> StoreFuture<'a, Vec<(CredentialKey, CredentialMeta)>> {
        Box::pin(async move {
            let prefix = match tenant {
                Some(t) => format!("{}/{t}/", self.prefix),
                None => format!("{}/", self.prefix),
            };
            let filter = Filter::builder()
                .key(FilterNameStringType::Name)
                .values(&prefix)
                .build();
            let mut pages = self
                .client()
                .list_secrets()
                .filters(filter)
                .max_results(100)
                .into_paginator()
                .send();
            let mut found = Vec::new();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| unavailable(&e))?;
                for entry in page.secret_list() {
                    let Some(key) = entry.name().and_then(|n| self.key_of(n)) else {
                        continue;
                    };
                    if entry.deleted_date().is_some()
                        || !entry.name().unwrap_or_default().starts_with(&prefix)
                    {
                        continue;
                    }
                    let tag = |k: &str| {
                        entry
                            .tags()
                            .iter()
                            .find(|t| t.key() == Some(k))
                            .and_then(|t| t.value())
                            .unwrap_or_default()
                    };
                    let ms = |d: Option<&aws_sdk_secretsmanager::primitives::DateTime>| {
                        d.and_then(|d| d.to_millis().ok()).map_or(0, |m| m.max(0) as u64)
                    };
                    let meta = CredentialMeta {
                        fingerprint: crate::Fingerprint::from_hex(tag("valet:fingerprint")),
                        last4: tag("valet:last4").to_owned(),
                        created_ms: ms(entry.created_date()),
                        updated_ms: ms(entry.last_changed_date().or(entry.created_date())),
                    };
                    found.push((key, meta));
                }
            }
            found.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(found)
        })
    }

    fn refresh<'a>(&'a self, key: &'a CredentialKey) -> StoreFuture<'a, bool> {
        Box::pin(async move { self.cache.revalidate(key, &self.remote).await })
    }

    fn put_pending<'a>(&'a self, key: &'a CredentialKey, cred: StoredCredential) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let value = serde_json::to_string(&cred).expect("a record serialises");
            self.client()
                .put_secret_value()
                .secret_id(self.secret_name(key))
                .secret_string(value)
                .version_stages(PENDING)
                .send()
                .await
                .map_err(|e| unavailable(&e))?;
            Ok(())
        })
    }

    fn promote_pending<'a>(
        &'a self,
        key: &'a CredentialKey,
        expected: &'a crate::Fingerprint,
    ) -> StoreFuture<'a, StoredCredential> {
        Box::pin(async move {
            let name = self.secret_name(key);
            let stages = self.stages(key).await?;
            let pending = stage_version(Some(&stages), PENDING)
                .ok_or_else(|| StoreError::NoPending(key.to_string()))?;
            let current = stage_version(Some(&stages), CURRENT);
            // Promote only the version that was verified: another rotation
            // may have staged a different one since.
            let out = self
                .client()
                .get_secret_value()
                .secret_id(&name)
                .version_id(&pending)
                .send()
                .await
                .map_err(|e| unavailable(&e))?;
            let cred: StoredCredential = serde_json::from_str(out.secret_string().unwrap_or_default())
                .map_err(|_| StoreError::Corrupt {
                    context: name.clone(),
                })?;
            if cred.fingerprint != *expected {
                return Err(StoreError::NoPending(key.to_string()));
            }
            // AWSCURRENT moves to the pending version; Secrets Manager moves
            // AWSPREVIOUS to the version that held AWSCURRENT. From here on the
            // new credential is live, so what follows is best effort.
            self.client()
                .update_secret_version_stage()
                .secret_id(&name)
                .version_stage(CURRENT)
                .move_to_version_id(&pending)
                .set_remove_from_version_id(current)
                .send()
                .await
                .map_err(|e| unavailable(&e))?;
            self.cache.insert(key, pending.clone(), cred.clone());
            let unlabel = self
                .client()
                .update_secret_version_stage()
                .secret_id(&name)
                .version_stage(PENDING)
                .remove_from_version_id(&pending)
                .send()
                .await;
            let retag = self
                .client()
                .tag_resource()
                .secret_id(&name)
                .set_tags(Some(Self::tags(key, &cred)))
                .send()
                .await;
            if let Err(e) = unlabel
                .map(|_| ())
                .map_err(|e| describe(&e))
                .and(retag.map(|_| ()).map_err(|e| describe(&e)))
            {
                tracing::warn!(secret = %name, error = %e, "rotation committed, but tidying its labels or tags failed");
            }
            Ok(cred)
        })
    }

    fn discard_pending<'a>(&'a self, key: &'a CredentialKey) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let stages = self.stages(key).await?;
            let pending = stage_version(Some(&stages), PENDING)
                .ok_or_else(|| StoreError::NoPending(key.to_string()))?;
            self.client()
                .update_secret_version_stage()
                .secret_id(self.secret_name(key))
                .version_stage(PENDING)
                .remove_from_version_id(pending)
                .send()
                .await
                .map_err(|e| unavailable(&e))?;
            Ok(())
        })
    }
}

/// Notes when Secrets Manager last answered an HTTP attempt with anything
/// but a server error: a bound on when it last confirmed a cached record.
#[derive(Debug, Clone, Default)]
struct Answered(Arc<Mutex<Option<Instant>>>);

impl Intercept for Answered {
    fn name(&self) -> &'static str {
        "valet-answered"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if context.response().is_some_and(|r| !r.status().is_server_error()) {
            *self.0.lock().expect("lock") = Some(Instant::now());
        }
        Ok(())
    }
}

/// Times each HTTP attempt to Secrets Manager.
#[derive(Debug)]
struct Observe(Metrics);

/// When the current attempt started.
#[derive(Debug, Clone, Copy)]
struct AttemptStarted(std::time::Instant);

impl Storable for AttemptStarted {
    type Storer = StoreReplace<Self>;
}

impl Intercept for Observe {
    fn name(&self) -> &'static str {
        "valet-metrics"
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state()
            .store_put(AttemptStarted(std::time::Instant::now()));
        Ok(())
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(started) = cfg.load::<AttemptStarted>() {
            let operation = cfg.load::<Metadata>().map_or("unknown", |m| m.name());
            let ok = context.response().is_some_and(|r| r.status().is_success());
            self.0.secrets_manager_request(operation, ok, started.0.elapsed());
        }
        Ok(())
    }
}

/// The version id holding `stage`.
fn stage_version(stages: Option<&HashMap<String, Vec<String>>>, stage: &str) -> Option<String> {
    stages?
        .iter()
        .find(|(_, labels)| labels.iter().any(|l| l == stage))
        .map(|(id, _)| id.clone())
}

fn not_found<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    err.as_service_error().and_then(|e| e.code()) == Some("ResourceNotFoundException")
}

fn describe<E: std::error::Error + 'static, R: std::fmt::Debug + 'static>(err: &SdkError<E, R>) -> String {
    DisplayErrorContext(err).to_string()
}

fn unavailable<E: std::error::Error + 'static, R: std::fmt::Debug + 'static>(
    err: &SdkError<E, R>,
) -> StoreError {
    StoreError::Unavailable(describe(err))
}
