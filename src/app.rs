//! Valet's shared state, opened from the config: state dir, master key,
//! credential vault, API keys, audit log, vendor registry.
//!
//! First start with an empty state dir creates the master key (unless it
//! comes from elsewhere) and a bootstrap admin API key, written to
//! `<state dir>/admin.key` with mode 0600 and never logged.

use crate::config::{Config, MasterKeySource, QuotaBackend, SecretsBackend, Validated};
use crate::readiness::{Readiness, Required};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;
use valet_access::{ApiKey, Caller, Grant, KeyStore, LastUse};
use valet_audit::{AuditError, AuditLog, Event};
use valet_credentials::aws::SdkConfig;
use valet_credentials::cache::CacheSettings;
use valet_credentials::{LeaseAudit, LeaseEvent, LocalStore, MasterKey, SecretStore, Vault, aws};
use valet_egress::{BreakerState, Limits, Vendors};
use valet_quota::Quotas;
use valet_telemetry::Metrics;

/// The actor recorded for changes Valet makes itself.
pub const SYSTEM_ACTOR: &str = "valet";

/// Why Valet could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is wrong (exit 64).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// State could not be opened or created.
    #[error("{0}")]
    State(String),
}

/// Everything a call or an admin request needs.
#[derive(Debug)]
pub struct App {
    /// API keys.
    pub keys: Arc<KeyStore>,
    /// When and from where each key last authenticated (this replica).
    pub last_use: LastUse,
    /// Where [`App::last_use`] is flushed.
    pub last_use_path: PathBuf,
    /// API key lifetimes.
    pub api_keys: crate::config::ApiKeysConfig,
    /// Proxies whose x-forwarded-for names a call's source.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Sealed credentials.
    pub vault: Vault,
    /// OAuth vendors' access tokens, sealed ([`crate::oauth`]).
    pub tokens: crate::oauth::AppTokens,
    /// Configured vendors (replaced by a config reload, [`crate::reload`]).
    pub registry: Arc<Vendors>,
    /// The audit log.
    pub audit: AuditLog,
    /// When a call's lease entry must be durable (`[audit] durability`).
    pub audit_durability: valet_audit::Durability,
    /// How long sealed segments keep each class (`[audit] retention_days`).
    pub audit_retention: valet_audit::retention::Retention,
    /// The log's shipping to Redis (`[audit] ship`), when configured.
    pub audit_ship: Option<valet_audit::ship::Shipper>,
    /// The log's shipping to an OTLP collector (`[audit] otlp`).
    pub audit_otlp: Option<valet_audit::ship::Shipper>,
    /// Size limits.
    pub limits: Limits,
    /// Room for the vendor answers all calls hold at once.
    pub answers: valet_egress::AnswerBudget,
    /// Quota policies and their enforcement.
    pub quotas: Arc<Quotas>,
    /// Longest pause a vendor's 429 may impose.
    pub max_pushback: Duration,
    /// Idempotency records.
    pub idempotency: valet_idempotency::Store,
    /// Their retention and in-flight lease.
    pub idempotency_config: crate::config::IdempotencyConfig,
    /// Calls since the last purge of expired idempotency records.
    pub idempotency_calls: std::sync::atomic::AtomicU64,
    /// How long a credential may go unreplaced before it is due for
    /// rotation (`secrets.rotation_reminder_days`).
    pub rotation_reminder_ms: u64,
    /// Credentials past due, as last counted ([`crate::reminder`]).
    pub rotation_overdue: Arc<std::sync::atomic::AtomicU64>,
    /// Where the bootstrap admin key was written, if this start created it.
    pub bootstrap_key: Option<PathBuf>,
    /// Counters and histograms for `/metrics` and OTLP.
    pub metrics: Metrics,
    /// Whether this replica should receive calls.
    pub readiness: Readiness,
    /// Which backends readiness requires.
    pub required: Required,
    /// Where each kind of state lives, for `valet status`.
    pub topology: Topology,
    /// When this process opened its state.
    pub started: std::time::Instant,
    /// An exclusive lock on the state dir, held while this `App` lives: two
    /// processes on one state dir would interleave the audit chain and undo
    /// each other's revocations.
    _lock: std::fs::File,
}

/// Where each kind of state lives: "local" (the state dir), "redis" or
/// "aws".
#[derive(Debug, Clone, Copy)]
pub struct Topology {
    /// Sealed credentials.
    pub secrets: &'static str,
    /// API keys, client identities, tenant status.
    pub control: &'static str,
    /// Quota policies and buckets.
    pub quota: &'static str,
    /// Idempotency records.
    pub idempotency: &'static str,
}

impl Topology {
    /// What `config` chose.
    pub fn from_config(config: &Config) -> Self {
        let redis_or_local = |redis: bool| if redis { "redis" } else { "local" };
        Self {
            secrets: match config.secrets.backend {
                SecretsBackend::Aws => "aws",
                SecretsBackend::Local => "local",
            },
            control: redis_or_local(config.control.backend == QuotaBackend::Redis),
            quota: redis_or_local(config.quota.backend == QuotaBackend::Redis),
            idempotency: redis_or_local(config.idempotency.backend == QuotaBackend::Redis),
        }
    }
}

/// How to start beyond the config file: things only a test harness sets.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Static AWS credentials instead of the standard chain (tests against
    /// the Secrets Manager emulator; never from configuration).
    pub aws_static_credentials: Option<(String, String)>,
}

impl App {
    /// Validates `config`, then opens (creating on first start) everything
    /// it names.
    pub async fn open(config: &Config) -> Result<Self, StartError> {
        Self::open_with(config, &StartOptions::default()).await
    }

    /// [`App::open`] with [`StartOptions`].
    pub async fn open_with(config: &Config, options: &StartOptions) -> Result<Self, StartError> {
        Self::start(&config.clone().validate()?, options).await
    }

    /// Opens everything a validated config names, using the registry and
    /// limits its validation built.
    pub async fn start(config: &Validated, options: &StartOptions) -> Result<Self, StartError> {
        let registry = Arc::new(Vendors::new(config.registry().clone()));
        let limits = *config.limits();
        let dir = &config.state.dir;
        valet_durable::create_private_dir(dir).map_err(|e| state_err(dir, e))?;
        let lock = lock_state_dir(dir)?;

        let secrets = &config.secrets;
        let uses_aws = secrets.backend == SecretsBackend::Aws
            || matches!(secrets.master_key, Some(MasterKeySource::AwsSecret(_)));
        let aws = match uses_aws {
            false => None,
            true => Some(
                aws::sdk_config(&aws::AwsConnection {
                    region: secrets.region.clone().unwrap_or_default(),
                    endpoint_url: secrets.endpoint_url.clone(),
                    static_credentials: options.aws_static_credentials.clone(),
                })
                .await,
            ),
        };

        let metrics = Metrics::new(&config.telemetry).map_err(|e| StartError::State(e.to_string()))?;
        let master = Arc::new(load_master_key(config, dir, aws.as_ref()).await?);
        let index_key = audit_index_key(&master);
        let store: Arc<dyn SecretStore> = match (secrets.backend, &aws) {
            (SecretsBackend::Aws, Some(sdk)) => {
                let settings = CacheSettings {
                    ttl: Duration::from_millis(secrets.cache_ttl_ms),
                    max_stale: Duration::from_millis(secrets.max_stale_ms),
                    refresh_budget: Duration::from_millis(secrets.refresh_budget_ms),
                    capacity: secrets.cache_capacity,
                };
                Arc::new(aws::AwsStore::new(sdk, &secrets.prefix, settings).with_metrics(metrics.clone()))
            }
            _ => Arc::new(
                LocalStore::open(&dir.join("credentials")).map_err(|e| StartError::State(e.to_string()))?,
            ),
        };
        let vault = Vault::new(master, store);
        let keys = Arc::new(open_control(config, dir).await?);
        keys.spawn_sync(Duration::from_millis(config.control.poll_interval_ms));
        let last_use_path = dir.join("apikeys.lastuse.json");
        let last_use = LastUse::load(&last_use_path).unwrap_or_else(|why| {
            tracing::warn!(%why, "API key last-use file is unreadable; last-use times start empty");
            LastUse::default()
        });
        let segmenting = valet_audit::log::Segmenting {
            max_bytes: config.audit.segment_max_bytes,
            max_age_ms: config.audit.segment_max_age_hours.saturating_mul(3_600_000),
        };
        let audit = AuditLog::open_indexed(
            &dir.join("audit.log"),
            config.audit.durability,
            segmenting,
            Some(index_key),
        )
        .map_err(|e| StartError::State(e.to_string()))?;
        let shippers = start_shipping(config, &audit, &metrics)?;
        let quotas = Arc::new(open_quotas(config, dir).await?);
        let idempotency = open_idempotency(config, dir).await?;
        let purged = idempotency
            .purge_expired(now_ms())
            .await
            .map_err(|e| StartError::State(e.to_string()))?;
        if purged > 0 {
            tracing::info!(purged, "removed expired idempotency records");
        }
        quotas.spawn_sync();
        let readiness = Readiness::default();
        register_gauges(&metrics, &quotas, &readiness, &registry);
        register_control_gauges(&metrics, &keys);
        let rotation_overdue = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let overdue = Arc::clone(&rotation_overdue);
        metrics.gauge(
            "valet.credentials.rotation_overdue",
            "Credentials not replaced within secrets.rotation_reminder_days, as last counted",
            move || overdue.load(std::sync::atomic::Ordering::Relaxed) as i64,
        );
        register_key_gauges(&metrics, &keys, &config.api_keys);

        // A fleet replica that could not reach Redis does not know whether
        // the fleet has keys: it bootstraps nothing.
        let bootstrap_key = if keys.is_empty() && keys.staleness_ms().is_none() {
            bootstrap_admin_key(&keys, &audit, dir).await?
        } else {
            None
        };
        let mut tokens = valet_oauth::Tokens::new(
            vault.clone(),
            crate::oauth::AppGrants::new(vault.clone(), audit.clone()),
            metrics.clone(),
        );
        // A fleet shares its OAuth access tokens, and fetches them under one
        // lock, through the Redis of its shared state.
        if let Some(url) = config.redis_url.as_deref().filter(|u| !u.is_empty()) {
            let shared = valet_oauth::shared::Shared::connect(url).map_err(StartError::State)?;
            tokens = tokens.with_shared(shared);
        }
        let tokens = Arc::new(tokens);
        Ok(Self {
            tokens,
            keys,
            last_use,
            last_use_path,
            api_keys: config.api_keys.clone(),
            trusted_proxies: config.server.trusted_proxies.clone(),
            vault,
            registry,
            audit,
            audit_durability: config.audit.durability,
            audit_ship: shippers.redis,
            audit_otlp: shippers.otlp,
            audit_retention: config.audit.retention_days.retention(),
            limits,
            answers: valet_egress::AnswerBudget::new(config.limits.max_buffered_response_bytes),
            quotas,
            max_pushback: Duration::from_millis(config.quota.max_pushback_ms),
            idempotency,
            idempotency_config: config.idempotency.clone(),
            idempotency_calls: Default::default(),
            rotation_reminder_ms: u64::from(config.secrets.rotation_reminder_days) * 86_400_000,
            rotation_overdue,
            bootstrap_key,
            metrics,
            readiness,
            required: Required::from_config(config),
            topology: Topology::from_config(config),
            started: std::time::Instant::now(),
            _lock: lock,
        })
    }
}

async fn load_master_key(
    config: &Config,
    dir: &Path,
    aws: Option<&SdkConfig>,
) -> Result<MasterKey, StartError> {
    let default_path = dir.join("master.key");
    let source = config
        .secrets
        .master_key
        .clone()
        .unwrap_or(MasterKeySource::File(default_path));
    match source {
        MasterKeySource::File(path) => {
            if !path.exists() && holds_sealed_credentials(&dir.join("credentials")) {
                return Err(StartError::State(format!(
                    "master key file {} is missing, but {} holds sealed credentials: restore the key (a new one could not decrypt them)",
                    path.display(),
                    dir.join("credentials").display()
                )));
            }
            let (key, created) =
                MasterKey::load_or_create(&path).map_err(|e| StartError::State(e.to_string()))?;
            if created {
                tracing::info!(path = %path.display(), key_id = key.id(), "created a new master key");
            }
            Ok(key)
        }
        MasterKeySource::Env(var) => {
            tracing::warn!(
                variable = %var,
                "master key read from an environment variable: environments leak into crash reports and orchestrator logs; prefer a 0600 file or a secrets manager"
            );
            MasterKey::from_env(&var).map_err(|e| StartError::State(e.to_string()))
        }
        MasterKeySource::AwsSecret(id) => {
            let sdk = aws.expect("an AWS config is built whenever an aws_secret master key is named");
            let text = aws::read_secret_string(sdk, &id).await.map_err(|e| {
                StartError::State(format!("master key from Secrets Manager secret {id}: {e}"))
            })?;
            MasterKey::from_base64(&text, &id).map_err(|e| StartError::State(e.to_string()))
        }
    }
}

/// Creates the first admin key and writes it to `admin.key` (0600); `None`
/// if another replica of a new fleet recorded its own first.
async fn bootstrap_admin_key(
    keys: &KeyStore,
    audit: &AuditLog,
    dir: &Path,
) -> Result<Option<PathBuf>, StartError> {
    let grant = Grant {
        tenants: Vec::new(),
        vendors: Vec::new(),
        operations: Default::default(),
        admin: true,
        permissions: Default::default(),
    };
    // admin.key first: if we crash before the key store records the key,
    // the store is still empty and the next start bootstraps again.
    let key = ApiKey::generate();
    let path = dir.join("admin.key");
    let text = zeroize::Zeroizing::new(format!("{}\n", key.expose()));
    valet_durable::write_atomically(&path, text.as_bytes()).map_err(|e| state_err(&path, e))?;
    let added = keys
        .add_first(&key, "bootstrap-admin", grant.clone())
        .await
        .map_err(|e| StartError::State(e.to_string()))?;
    let Some(record) = added else {
        std::fs::remove_file(&path).map_err(|e| state_err(&path, e))?;
        tracing::info!("another replica bootstrapped the fleet's admin key; use its admin.key");
        return Ok(None);
    };
    audit
        .append(
            SYSTEM_ACTOR,
            Event::ApiKeyCreate {
                key_id: record.id.clone(),
                name: record.name.clone(),
                tenants: grant.tenants,
                vendors: grant.vendors,
                operations: Vec::new(),
                admin: true,
                permissions: Vec::new(),
                expires_ms: None,
                client_identity: None,
                allow_cidrs: Vec::new(),
            },
        )
        .await
        .map_err(|e| StartError::State(e.to_string()))?;
    tracing::info!(path = %path.display(), key_id = %record.id, "wrote the bootstrap admin API key");
    Ok(Some(path))
}

/// The control state: embedded files, or the fleet's Redis (see
/// [`valet_access::control`]).
async fn open_control(config: &Config, dir: &Path) -> Result<KeyStore, StartError> {
    let keys = dir.join("apikeys.json");
    match config.control.backend {
        QuotaBackend::Local => KeyStore::open(&keys).map_err(|e| StartError::State(e.to_string())),
        QuotaBackend::Redis => {
            let settings = valet_access::SharedSettings {
                redis_url: config.redis_url.clone().unwrap_or_default(),
                snapshot: dir.join("control.snapshot.json"),
                import_from: keys,
                max_stale: Duration::from_millis(config.control.max_stale_ms),
            };
            KeyStore::open_shared(&settings)
                .await
                .map_err(|e| StartError::State(format!("control store: {e}")))
        }
    }
}

async fn open_quotas(config: &Config, dir: &Path) -> Result<Quotas, StartError> {
    let q = &config.quota;
    let defaults = q.policies.clone();
    match q.backend {
        QuotaBackend::Local => Quotas::open_local(defaults, dir.join("quotas.json"))
            .map_err(|e| StartError::State(e.to_string())),
        QuotaBackend::Redis => {
            let url = config.redis_url_for(&q.redis_url).unwrap_or_default();
            Quotas::open_redis(defaults, url, q.on_backend_error, q.replicas)
                .await
                .map_err(|e| StartError::State(format!("quota.redis_url: {e}")))
        }
    }
}

async fn open_idempotency(config: &Config, dir: &Path) -> Result<valet_idempotency::Store, StartError> {
    let idem = &config.idempotency;
    Ok(match idem.backend {
        QuotaBackend::Local => valet_idempotency::Store::Embedded(
            valet_idempotency::Embedded::open(
                &dir.join("idempotency.redb"),
                now_ms(),
                idem.lease_ms,
                idem.retention_ms,
            )
            .map_err(|e| StartError::State(e.to_string()))?,
        ),
        QuotaBackend::Redis => valet_idempotency::Store::Shared(
            valet_idempotency::Shared::connect(config.redis_url_for(&idem.redis_url).unwrap_or_default())
                .await
                .map_err(|e| StartError::State(format!("idempotency.redis_url: {e}")))?,
        ),
    })
}

/// The key the audit log's segment index is signed with, derived from the
/// master key (`valet audit verify --config` derives the same).
pub fn audit_index_key(master: &MasterKey) -> valet_audit::index::IndexKey {
    valet_audit::index::IndexKey::new(master.derive(b"audit-index"))
}

/// The audit log's shippers (`[audit] ship`, `[audit] otlp`), as started.
pub struct Shippers {
    /// To Redis: the fleet's copy and the anchor.
    pub redis: Option<valet_audit::ship::Shipper>,
    /// To an OTLP collector.
    pub otlp: Option<valet_audit::ship::Shipper>,
}

/// Starts each shipper `[audit]` asks for, and their gauges (labelled by
/// `sink`).
fn start_shipping(config: &Config, audit: &AuditLog, metrics: &Metrics) -> Result<Shippers, StartError> {
    use valet_audit::ship::{OtlpShipping, RedisShipping, ShipSettings, Shipper};
    let failed = |e: valet_audit::ship::ShipError| StartError::State(e.to_string());
    let redis = match &config.audit.ship {
        None => None,
        Some(ship) => {
            let settings = ShipSettings {
                behind_limit: ship.behind_limit,
                when_behind: ship.when_behind,
            };
            let redis = RedisShipping {
                redis_url: config
                    .redis_url_for(&ship.redis_url)
                    .unwrap_or_default()
                    .to_owned(),
                max_stream_entries: ship.max_stream_entries,
                replica: host_name(),
            };
            Some(Shipper::start(audit, settings, redis).map_err(failed)?)
        }
    };
    let otlp = match &config.audit.otlp {
        None => None,
        Some(otlp) => {
            let settings = ShipSettings {
                behind_limit: otlp.behind_limit,
                when_behind: otlp.when_behind,
            };
            let to = OtlpShipping {
                endpoint: config.otlp_endpoint_for(otlp).unwrap_or_default().to_owned(),
                replica: host_name(),
            };
            Some(Shipper::start_otlp(audit, settings, to).map_err(failed)?)
        }
    };
    let sinks: Vec<(String, Shipper)> = [("redis", &redis), ("otlp", &otlp)]
        .into_iter()
        .filter_map(|(name, s)| s.clone().map(|s| (name.to_owned(), s)))
        .collect();
    if !sinks.is_empty() {
        let each = |read: fn(&valet_audit::ship::ShipStatus) -> i64| {
            let sinks = sinks.clone();
            move || {
                sinks
                    .iter()
                    .map(|(n, s)| (n.clone(), read(&s.status())))
                    .collect()
            }
        };
        metrics.labelled_gauge(
            "valet.audit.ship.behind",
            "Durable audit entries not yet shipped, by sink ([audit] ship: redis, [audit] otlp: otlp)",
            "sink",
            each(|s| s.behind as i64),
        );
        metrics.labelled_gauge(
            "valet.audit.ship.up",
            "1 while the last send of audit entries to the sink succeeded",
            "sink",
            each(|s| i64::from(s.up)),
        );
        metrics.labelled_gauge(
            "valet.audit.ship.failures",
            "Failed sends of audit entries to the sink since start (each retried)",
            "sink",
            each(|s| s.failures as i64),
        );
    }
    Ok(Shippers { redis, otlp })
}

/// This machine's host name ("localhost" if it has none).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Gauges read at collection time: readiness, Secrets Manager degraded,
/// and the quota fallback.
fn register_gauges(metrics: &Metrics, quotas: &Arc<Quotas>, readiness: &Readiness, registry: &Arc<Vendors>) {
    metrics.build_info(crate::VERSION, crate::REVISION);
    let ready = readiness.clone();
    metrics.gauge("valet.ready", "1 while this replica is SERVING", move || {
        i64::from(ready.is_ready())
    });
    let losses = Arc::clone(quotas);
    let degraded = readiness.clone();
    metrics.gauge(
        "valet.secrets_manager.degraded",
        "1 while Secrets Manager fails its probe and calls are served from the cache (within max_stale)",
        move || i64::from(degraded.secrets_manager_degraded()),
    );
    let quotas = Arc::clone(quotas);
    metrics.gauge(
        "valet.quota.fallback_active",
        "1 while the local fallback stands in for the shared quota backend",
        move || i64::from(quotas.fallback_active()),
    );
    metrics.counter_fn(
        "valet.log.lines_dropped",
        "Log lines dropped because stdout fell too far behind (the buffer was full)",
        valet_telemetry::lines::dropped,
    );
    metrics.counter_fn(
        "valet.quota.policy_store_lost",
        "Times this replica found the shared quota policy store had lost data and kept its last known policies",
        move || losses.policy_store_losses(),
    );
    let registry = Arc::clone(registry);
    metrics.vendor_gauge(
        "valet.vendor.circuit_state",
        "Each vendor's circuit breaker: 0 closed, 1 half-open, 2 open",
        move || {
            registry
                .current()
                .vendors()
                .map(|v| {
                    let state = match v.breaker_state() {
                        BreakerState::Closed => 0,
                        BreakerState::HalfOpen => 1,
                        BreakerState::Open => 2,
                    };
                    (v.name().to_owned(), state)
                })
                .collect()
        },
    );
}

/// The control state's gauges: stale, and losses of the shared store.
fn register_control_gauges(metrics: &Metrics, keys: &Arc<KeyStore>) {
    let stale = Arc::downgrade(keys);
    metrics.gauge(
        "valet.control.stale",
        "1 while calls are refused because the shared control state was not confirmed within control.max_stale_ms",
        move || i64::from(stale.upgrade().is_some_and(|k| k.staleness_ms().is_some())),
    );
    let lost = Arc::downgrade(keys);
    metrics.counter_fn(
        "valet.control.store_lost",
        "Times this replica found the shared control store empty and re-published its last known state",
        move || lost.upgrade().map_or(0, |k| k.store_losses()),
    );
}

/// `valet_api_keys_expiring`: valid keys that expire within
/// `api_keys.expiring_window_days`, read at collection time, so a rotation
/// due soon shows on a dashboard before callers start failing.
fn register_key_gauges(metrics: &Metrics, keys: &Arc<KeyStore>, config: &crate::config::ApiKeysConfig) {
    let keys = Arc::clone(keys);
    let window_ms = config.expiring_window_days.saturating_mul(86_400_000);
    metrics.gauge(
        "valet.api_keys.expiring",
        "Valid API keys that expire within api_keys.expiring_window_days",
        move || {
            let now = now_ms();
            let expiring = keys
                .list()
                .iter()
                .filter(|k| k.expires_within(now, window_ms))
                .count();
            i64::try_from(expiring).unwrap_or(i64::MAX)
        },
    );
}

impl App {
    /// Writes the API keys' last uses to their file if any changed; a
    /// failure is logged (last use informs, it never decides access).
    pub fn flush_last_use(&self) {
        if let Err(e) = self.last_use.flush(&self.last_use_path) {
            tracing::warn!(path = %self.last_use_path.display(), error = %e, "cannot write API key last-use times");
        }
    }
}

/// Now, Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn lock_state_dir(dir: &Path) -> Result<std::fs::File, StartError> {
    let path = dir.join("lock");
    let file = valet_durable::open_private(&path).map_err(|e| state_err(&path, e))?;
    file.try_lock().map_err(|_| {
        StartError::State(format!(
            "state dir {} is in use by another valet process",
            dir.display()
        ))
    })?;
    Ok(file)
}

/// Whether the local store's directory holds any sealed credential.
fn holds_sealed_credentials(dir: &Path) -> bool {
    let Ok(tenants) = std::fs::read_dir(dir) else {
        return false;
    };
    tenants.flatten().any(|t| {
        std::fs::read_dir(t.path())
            .map(|files| {
                files
                    .flatten()
                    .any(|f| f.file_name().to_string_lossy().ends_with(".json"))
            })
            .unwrap_or(false)
    })
}

fn state_err(path: &Path, e: std::io::Error) -> StartError {
    StartError::State(format!("state {}: {e}", path.display()))
}

/// Runs `job` now and then every `period` for as long as `app` lives; the
/// task holds only a weak reference, so it ends with the app.
pub fn every<F, Fut>(app: &Arc<App>, period: Duration, job: F)
where
    F: Fn(Arc<App>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let weak = Arc::downgrade(app);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            let Some(app) = weak.upgrade() else { return };
            job(app).await;
        }
    });
}

/// How a caller is named in the audit log: key id and name.
pub fn actor(caller: &Caller) -> String {
    format!("{}:{}", caller.id, caller.name)
}

impl App {
    /// Probes the backends readiness requires (see [`crate::readiness`]);
    /// returns whether the replica is ready afterwards.
    pub async fn probe(&self) -> bool {
        let backends = crate::readiness::Backends {
            audit: &self.audit,
            vault: &self.vault,
            idempotency: &self.idempotency,
            quotas: &self.quotas,
            keys: &self.keys,
        };
        crate::readiness::probe(&self.readiness, self.required, backends).await
    }

    /// Appends to the audit log under its own span, counting failures.
    pub async fn record(&self, actor: &str, event: Event) -> Result<(), AuditError> {
        let span = valet_telemetry::sampling::span(|| {
            tracing::info_span!(
                "valet.audit.append",
                valet.audit.event = event.kind(),
                otel.status_code = tracing::field::Empty
            )
        });
        let result = self.audit.append(actor, event).instrument(span.clone()).await;
        if result.is_err() {
            span.record("otel.status_code", "ERROR");
            self.metrics.audit_write_failed();
        }
        result
    }
}

/// Records credential leases in the audit log (the glue between the vault's
/// [`LeaseAudit`] and the audit crate), as durably as `[audit] durability`
/// asks before the credential is used.
pub struct LeaseRecorder<'a> {
    /// Valet, whose audit log records the lease.
    pub app: &'a App,
    /// With `before_answer`: the entry, written but not yet durable; the
    /// caller's answer waits for it ([`crate::call::audited`]).
    pub unsynced: std::sync::Mutex<Option<valet_audit::Written>>,
    /// For an OAuth vendor, the scope set the call's token is for.
    pub scopes: Option<String>,
    /// The caller's source address, when known.
    pub source: Option<std::net::IpAddr>,
}

impl<'a> LeaseRecorder<'a> {
    /// Records leases for `app`.
    pub fn new(app: &'a App) -> Self {
        Self {
            app,
            unsynced: std::sync::Mutex::new(None),
            scopes: None,
            source: None,
        }
    }

    /// Records, too, the OAuth scope set the call's token is for.
    pub fn with_scopes(mut self, scopes: Option<String>) -> Self {
        self.scopes = scopes;
        self
    }

    /// Records, too, where the call came from.
    pub fn with_source(mut self, source: Option<std::net::IpAddr>) -> Self {
        self.source = source;
        self
    }

    /// The entry the answer must wait for, if any.
    pub fn into_unsynced(self) -> Option<valet_audit::Written> {
        self.unsynced
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The audit entry of a lease; `scopes` for an OAuth call's token, `source`
/// the caller's address.
pub fn lease_entry(e: &LeaseEvent<'_>, scopes: Option<String>, source: Option<std::net::IpAddr>) -> Event {
    Event::CredentialLease {
        tenant: e.key.tenant.clone(),
        vendor: e.key.vendor.clone(),
        fingerprint: e.fingerprint.to_string(),
        reason: e.reason.to_owned(),
        request_id: e.request_id.to_owned(),
        scopes,
        source: source.map(|ip| ip.to_string()),
    }
}

impl LeaseAudit for LeaseRecorder<'_> {
    async fn record_lease(&self, e: &LeaseEvent<'_>) -> Result<(), String> {
        let event = lease_entry(e, self.scopes.clone(), self.source);
        let app = self.app;
        let durability = app.audit_durability;
        if durability == valet_audit::Durability::BeforeSend {
            return app.record(e.caller, event).await.map_err(|err| err.to_string());
        }
        // Written now; durable in the background (`os`) or before the
        // answer (`before_answer`, see `call::audited`).
        let span = valet_telemetry::sampling::span(|| {
            tracing::info_span!(
                "valet.audit.append",
                valet.audit.event = event.kind(),
                valet.audit.durability = durability.as_str(),
                otel.status_code = tracing::field::Empty
            )
        });
        match span.in_scope(|| app.audit.append_written(e.caller, &event)) {
            Ok(written) => {
                let unsynced = (durability == valet_audit::Durability::BeforeAnswer).then_some(written);
                *self
                    .unsynced
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = unsynced;
                Ok(())
            }
            Err(err) => {
                span.record("otel.status_code", "ERROR");
                app.metrics.audit_write_failed();
                Err(err.to_string())
            }
        }
    }
}
