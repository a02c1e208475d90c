//! The configuration file: one typed tree, checked once at start-up.
//!
//! Every table and field refuses unknown keys, so a typo is an error that
//! names the key rather than a setting silently ignored. Paths are relative
//! to the working directory.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use valet_egress::{AuthScheme, Limits, Registry, Vendor, VendorSpec};

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners.
    #[serde(default)]
    pub server: ServerConfig,
    /// Where Valet keeps its state.
    #[serde(default)]
    pub state: StateConfig,
    /// Where the master key comes from.
    #[serde(default)]
    pub secrets: SecretsConfig,
    /// The audit log.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Size limits on calls.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Per-tenant quotas.
    #[serde(default)]
    pub quota: QuotaConfig,
    /// Idempotency records.
    #[serde(default)]
    pub idempotency: IdempotencyConfig,
    /// Who may call: API keys, client identities, tenant status.
    #[serde(default)]
    pub control: ControlConfig,
    /// Redis URL for all of Valet's shared state (control state, quotas,
    /// idempotency records), e.g. `redis://10.0.0.5:6379`. A feature's own
    /// `redis_url` (`quota.redis_url`, `idempotency.redis_url`) overrides it.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// Caller API key lifetimes.
    #[serde(default)]
    pub api_keys: ApiKeysConfig,
    /// Traces, metrics and their labels.
    #[serde(default)]
    pub telemetry: valet_telemetry::Settings,
    /// The vendor registry: the only places credentials are sent.
    #[serde(default)]
    pub vendors: Vec<VendorConfig>,
}

/// Listen addresses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The Gateway service (`valet.v1.Gateway`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The Admin service, on its own listener so it can be firewalled apart.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    /// Plain HTTP for operators: `GET /metrics` (Prometheus text),
    /// `/healthz` (alive) and `/readyz` (serving).
    #[serde(default = "default_ops_listen")]
    pub ops_listen: SocketAddr,
    /// How often required backends (Redis, Secrets Manager, the audit log)
    /// are checked; one that fails turns health NOT_SERVING until it answers.
    #[serde(default = "default_health_probe_interval_ms")]
    pub health_probe_interval_ms: u64,
    /// After SIGTERM/SIGINT, how long in-flight calls may take to finish
    /// before their connections are closed.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// After SIGTERM/SIGINT, how long to keep accepting calls while health
    /// already says NOT_SERVING, so load balancers that poll health see the
    /// replica leave before its listeners close (e.g. your probe period).
    #[serde(default)]
    pub drain_delay_ms: u64,
    /// Gateway calls handled at once; more are refused at once with
    /// RESOURCE_EXHAUSTED `OVERLOADED` instead of queueing.
    #[serde(default = "default_max_concurrent_calls")]
    pub max_concurrent_calls: usize,
    /// Connections each gRPC listener (Gateway, Admin) holds open at once;
    /// one more is closed as soon as it is accepted, so idle or abandoned
    /// connections cannot use up the process's file descriptors.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long a new connection may take to finish its TLS handshake and
    /// send the first bytes of HTTP/2 before it is closed.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// How often an HTTP/2 PING is sent on a connection that has been
    /// silent; 0: never. Finds peers that vanished without closing.
    #[serde(default = "default_http2_keepalive_interval_ms")]
    pub http2_keepalive_interval_ms: u64,
    /// How long a PING may go unanswered before its connection is closed.
    #[serde(default = "default_http2_keepalive_timeout_ms")]
    pub http2_keepalive_timeout_ms: u64,
    /// TLS (and, with `client_ca_file`, mutual TLS) on the Gateway and Admin
    /// listeners. Unset: plain HTTP/2, for loopback or behind a proxy.
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// Proxies (CIDRs) in front of Valet whose `x-forwarded-for` is
    /// believed: when a call's TCP peer is one of them, its source address
    /// (for keys bound with `allow_cidrs`, and last use) is the first
    /// x-forwarded-for hop, read from the right, that is not a trusted
    /// proxy. Empty: the TCP peer is the source and x-forwarded-for is
    /// ignored, so a caller cannot claim an address.
    #[serde(default)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// `[api_keys]`: how long caller API keys may live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysConfig {
    /// The longest lifetime a new key may be given, in days; a longer
    /// request is refused with INVALID_ARGUMENT `TTL_INVALID`.
    #[serde(default = "default_max_lifetime_days")]
    pub max_lifetime_days: u64,
    /// The `valet_api_keys_expiring` gauge counts valid keys that expire
    /// within this many days.
    #[serde(default = "default_expiring_window_days")]
    pub expiring_window_days: u64,
}

impl Default for ApiKeysConfig {
    fn default() -> Self {
        Self {
            max_lifetime_days: default_max_lifetime_days(),
            expiring_window_days: default_expiring_window_days(),
        }
    }
}

impl ApiKeysConfig {
    /// The longest lifetime, in seconds.
    pub fn max_lifetime_seconds(&self) -> u64 {
        self.max_lifetime_days.saturating_mul(86_400)
    }
}

fn default_max_lifetime_days() -> u64 {
    valet_access::issue::MAX_TTL_SECONDS / 86_400
}

fn default_expiring_window_days() -> u64 {
    7
}

/// `[server.tls]`: the listeners' certificate, and optionally the CA whose
/// client certificates are required.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// PEM certificate chain presented to clients.
    pub cert_file: PathBuf,
    /// PEM private key for it (keep it mode 0600).
    pub key_file: PathBuf,
    /// PEM CA bundle; when set, every client must present a certificate it
    /// signed (mTLS), and a call without an API key is made as the key bound
    /// (at creation, `client_identity`) to the certificate's first DNS SAN.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            admin_listen: default_admin_listen(),
            ops_listen: default_ops_listen(),
            health_probe_interval_ms: default_health_probe_interval_ms(),
            shutdown_grace_ms: default_shutdown_grace_ms(),
            drain_delay_ms: 0,
            max_concurrent_calls: default_max_concurrent_calls(),
            max_connections: default_max_connections(),
            handshake_timeout_ms: default_handshake_timeout_ms(),
            http2_keepalive_interval_ms: default_http2_keepalive_interval_ms(),
            http2_keepalive_timeout_ms: default_http2_keepalive_timeout_ms(),
            tls: None,
            trusted_proxies: Vec::new(),
        }
    }
}

fn default_ops_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}

fn default_health_probe_interval_ms() -> u64 {
    5000
}

fn default_shutdown_grace_ms() -> u64 {
    30_000
}

fn default_max_concurrent_calls() -> usize {
    1024
}

fn default_max_connections() -> usize {
    1000
}

fn default_handshake_timeout_ms() -> u64 {
    10_000
}

fn default_http2_keepalive_interval_ms() -> u64 {
    30_000
}

fn default_http2_keepalive_timeout_ms() -> u64 {
    10_000
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50051))
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50052))
}

/// The state directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Holds the master key (by default), sealed credentials, API key hashes,
    /// the audit log and the bootstrap `admin.key`. Created with mode 0700.
    #[serde(default = "default_state_dir")]
    pub dir: PathBuf,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: default_state_dir(),
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(".valet")
}

/// The audit log (`<state.dir>/audit.log`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Seal the current segment (`audit.log`) once it holds this many
    /// bytes; 0: never by size.
    #[serde(default = "default_segment_max_bytes")]
    pub segment_max_bytes: u64,
    /// Seal it once its first entry is this many hours old; 0: never by age.
    #[serde(default = "default_segment_max_age_hours")]
    pub segment_max_age_hours: u64,
    /// How long sealed segments keep each class of entry, in days
    /// (lifecycle entries are kept for good).
    #[serde(default)]
    pub retention_days: RetentionDays,
    /// When a call's credential lease entry must be on disk:
    /// `before_answer` (default: written before the credential is used, the
    /// answer held until it is fsync'd), `before_send` (fsync'd before the
    /// credential is used) or `os` (written before use, fsync'd in the
    /// background: survives a Valet crash, not a power loss).
    #[serde(default)]
    pub durability: valet_audit::Durability,
    /// Ship every durable entry to a Redis stream: off the box, the
    /// fleet's copy (fleet queries) and the anchor `valet audit verify
    /// --anchor` checks the file against. Off when absent.
    #[serde(default)]
    pub ship: Option<ShipConfig>,
    /// Ship every durable entry as an OTLP log record to a collector (on
    /// to a SIEM). Off when absent.
    #[serde(default)]
    pub otlp: Option<OtlpShipConfig>,
}

/// `[audit] otlp = { … }`: shipping to an OpenTelemetry Collector.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpShipConfig {
    /// The collector's OTLP/gRPC endpoint; default: `telemetry.otlp_endpoint`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Durable entries not yet shipped past which `when_behind` applies.
    #[serde(default = "default_behind_limit")]
    pub behind_limit: u64,
    /// `continue` (default) or `refuse`, as for `ship`.
    #[serde(default)]
    pub when_behind: valet_audit::ship::WhenBehind,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            segment_max_bytes: default_segment_max_bytes(),
            segment_max_age_hours: default_segment_max_age_hours(),
            retention_days: RetentionDays::default(),
            durability: valet_audit::Durability::default(),
            ship: None,
            otlp: None,
        }
    }
}

fn default_segment_max_bytes() -> u64 {
    64 << 20
}

fn default_segment_max_age_hours() -> u64 {
    24
}

/// `[audit] retention_days = { … }`: days each class is kept.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionDays {
    /// Security events: key and credential changes, refusals, the kill
    /// switch, reads of the log.
    #[serde(default = "default_security_days")]
    pub security: u32,
    /// Per-record access: credential leases, OAuth token requests.
    #[serde(default = "default_access_days")]
    pub access: u32,
    /// Operational changes: quota policies, idempotency purges.
    #[serde(default = "default_access_days")]
    pub operational: u32,
}

impl Default for RetentionDays {
    fn default() -> Self {
        Self {
            security: default_security_days(),
            access: default_access_days(),
            operational: default_access_days(),
        }
    }
}

impl RetentionDays {
    /// As the audit crate takes it.
    pub fn retention(&self) -> valet_audit::retention::Retention {
        let ms = |days: u32| u64::from(days) * 86_400_000;
        valet_audit::retention::Retention {
            security_ms: ms(self.security),
            access_ms: ms(self.access),
            operational_ms: ms(self.operational),
        }
    }
}

fn default_security_days() -> u32 {
    400
}

fn default_access_days() -> u32 {
    90
}

/// `[audit] ship = { … }`: where and how the log is shipped.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShipConfig {
    /// The Redis to ship to; default: the top-level `redis_url`.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// Durable entries not yet shipped past which `when_behind` applies.
    #[serde(default = "default_behind_limit")]
    pub behind_limit: u64,
    /// `continue` (default: the local file alone, the lag reported for an
    /// alert) or `refuse` (every new entry, so every call, refused with
    /// AUDIT_UNAVAILABLE until the backlog is under the limit).
    #[serde(default)]
    pub when_behind: valet_audit::ship::WhenBehind,
    /// Trim the stream to about this many entries (0, the default: never).
    #[serde(default)]
    pub max_stream_entries: u64,
}

fn default_behind_limit() -> u64 {
    10_000
}

/// Secrets settings: where sealed credentials and the master key live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// `local` (the embedded encrypted store under the state dir) or `aws`
    /// (AWS Secrets Manager, for fleets).
    #[serde(default)]
    pub backend: SecretsBackend,
    /// Where the master key comes from; default: `<state dir>/master.key`,
    /// created on first start.
    #[serde(default)]
    pub master_key: Option<MasterKeySource>,
    /// AWS region (required for `backend = "aws"` or an `aws_secret` master
    /// key). Credentials come from the standard AWS chain: environment,
    /// profile, web identity (IRSA), container or instance role.
    #[serde(default)]
    pub region: Option<String>,
    /// A Secrets Manager endpoint other than AWS's (an emulator, a VPC
    /// endpoint).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Secret names are `<prefix>/<tenant>/<vendor>`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// How long a cached (sealed) credential is used before a version check.
    #[serde(default = "default_cache_ttl_ms")]
    pub cache_ttl_ms: u64,
    /// How long past its last confirmation a cached credential may be used
    /// while Secrets Manager is unavailable; after that calls fail with
    /// UNAVAILABLE.
    #[serde(default = "default_max_stale_ms")]
    pub max_stale_ms: u64,
    /// How long a call holding a cached credential (within `max_stale_ms`)
    /// waits for a refresh from Secrets Manager before it uses the cached
    /// one; the refresh carries on in the background. Bounds what a hung or
    /// slow Secrets Manager adds to a call, whatever the caller's deadline.
    #[serde(default = "default_refresh_budget_ms")]
    pub refresh_budget_ms: u64,
    /// Most credentials cached; the least recently used are evicted.
    #[serde(default = "default_cache_capacity")]
    pub cache_capacity: usize,
    /// A credential not replaced for this many days is due for rotation:
    /// `credential list` says so, and `valet_credentials_rotation_overdue`
    /// counts it.
    #[serde(default = "default_rotation_reminder_days")]
    pub rotation_reminder_days: u32,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        Self {
            backend: SecretsBackend::Local,
            master_key: None,
            region: None,
            endpoint_url: None,
            prefix: default_prefix(),
            cache_ttl_ms: default_cache_ttl_ms(),
            max_stale_ms: default_max_stale_ms(),
            refresh_budget_ms: default_refresh_budget_ms(),
            cache_capacity: default_cache_capacity(),
            rotation_reminder_days: default_rotation_reminder_days(),
        }
    }
}

fn default_prefix() -> String {
    "valet".into()
}
fn default_cache_ttl_ms() -> u64 {
    300_000
}
fn default_max_stale_ms() -> u64 {
    3_600_000
}
/// Enough for a healthy Secrets Manager (tens of milliseconds), well under
/// any sane call deadline.
fn default_refresh_budget_ms() -> u64 {
    300
}
/// Past the SDK's per-attempt timeout (5 s) a budget no longer bounds
/// anything.
const MAX_REFRESH_BUDGET_MS: u64 = 5_000;
fn default_cache_capacity() -> usize {
    10_000
}
fn default_rotation_reminder_days() -> u32 {
    90
}

/// Where sealed credentials are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretsBackend {
    /// One encrypted file per credential under the state dir.
    #[default]
    Local,
    /// AWS Secrets Manager, one secret per tenant × vendor.
    Aws,
}

/// A master key source. Never the key itself: the config file is not a place
/// for secrets.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MasterKeySource {
    /// A file holding 32 bytes in base64, mode 0600 (created if missing).
    File(PathBuf),
    /// An environment variable holding 32 bytes in base64. Discouraged:
    /// environments leak into crash reports and orchestrator logs.
    Env(String),
    /// An AWS Secrets Manager secret (name or ARN) holding 32 bytes in
    /// base64, so other IAM policies guard the key than the ciphertexts.
    AwsSecret(String),
}

/// `[control]`: where API keys, client identities and tenant status live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// `local` (files in the state dir; one replica) or `redis` (shared by
    /// the fleet, at the top-level `redis_url`): a key created, a key
    /// revoked or a tenant disabled on one replica holds on all of them
    /// within a second.
    #[serde(default)]
    pub backend: QuotaBackend,
    /// With `redis`: how long a replica keeps serving from its last
    /// confirmed state while Redis does not answer. Past it, calls are
    /// refused with UNAVAILABLE `CONTROL_STATE_STALE` and health is
    /// NOT_SERVING, rather than honour a key that may have been revoked.
    #[serde(default = "default_control_max_stale_ms")]
    pub max_stale_ms: u64,
    /// With `redis`: how often the shared version is polled, besides the
    /// change notices on pub/sub (the fallback when a notice is lost).
    #[serde(default = "default_control_poll_interval_ms")]
    pub poll_interval_ms: u64,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            backend: QuotaBackend::Local,
            max_stale_ms: default_control_max_stale_ms(),
            poll_interval_ms: default_control_poll_interval_ms(),
        }
    }
}

fn default_control_max_stale_ms() -> u64 {
    30_000
}
fn default_control_poll_interval_ms() -> u64 {
    250
}

/// Idempotency records: how long they are kept and how long a call holds
/// its key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyConfig {
    /// `local` (an embedded database under the state dir) or `redis`
    /// (shared by every replica).
    #[serde(default)]
    pub backend: QuotaBackend,
    /// Redis URL for `backend = "redis"`.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// How long a key's record (and its sealed response) is kept after the
    /// vendor answers; a record whose outcome is still unsettled is kept this
    /// long beyond its lease. At least `lease_ms`.
    #[serde(default = "default_retention_ms")]
    pub retention_ms: u64,
    /// How long a call holds its key while talking to the vendor; after a
    /// lost call, retries with the key wait this long. Keep it above the
    /// longest vendor timeout.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            backend: QuotaBackend::Local,
            redis_url: None,
            retention_ms: default_retention_ms(),
            lease_ms: default_lease_ms(),
        }
    }
}

fn default_retention_ms() -> u64 {
    86_400_000
}
fn default_lease_ms() -> u64 {
    120_000
}

/// Quotas: where they are enforced and the default policies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// `local` (in process; one replica) or `redis` (every replica shares one
    /// limit).
    #[serde(default)]
    pub backend: QuotaBackend,
    /// Redis URL for `backend = "redis"`, e.g. `redis://127.0.0.1:6379`.
    #[serde(default)]
    pub redis_url: Option<String>,
    /// When Redis cannot answer: `local` (an in-process limiter at
    /// rate / replicas), `deny` or `allow`.
    #[serde(default)]
    pub on_backend_error: valet_quota::OnBackendError,
    /// How many replicas share the limits (for the `local` fallback).
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// Longest pause a vendor's 429 Retry-After can impose, milliseconds.
    #[serde(default = "default_max_pushback_ms")]
    pub max_pushback_ms: u64,
    /// Default policies; run-time policies with the same key override them.
    #[serde(default)]
    pub policies: Vec<valet_quota::Policy>,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            backend: QuotaBackend::Local,
            redis_url: None,
            on_backend_error: valet_quota::OnBackendError::Local,
            replicas: default_replicas(),
            max_pushback_ms: default_max_pushback_ms(),
            policies: Vec::new(),
        }
    }
}

fn default_replicas() -> u32 {
    1
}
fn default_max_pushback_ms() -> u64 {
    600_000
}

/// Where quotas (and idempotency records) are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaBackend {
    /// In process.
    #[default]
    Local,
    /// In Redis, shared by every replica.
    Redis,
}

/// Size limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request body a caller may send, bytes.
    #[serde(default = "default_max_request_body")]
    pub max_request_body_bytes: usize,
    /// Largest vendor response body returned, bytes; larger answers fail
    /// with RESOURCE_EXHAUSTED.
    #[serde(default = "default_max_response_body")]
    pub max_response_body_bytes: usize,
    /// Most headers a caller may send.
    #[serde(default = "default_max_header_count")]
    pub max_header_count: usize,
    /// Largest total size of a caller's header names and values, bytes.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most vendor answer bytes held in memory by all calls together; an
    /// answer that finds no room within 250 ms fails with RESOURCE_EXHAUSTED
    /// `RESPONSE_BUFFER_EXHAUSTED`. At least `max_response_body_bytes`.
    #[serde(default = "default_max_buffered_response")]
    pub max_buffered_response_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_request_body_bytes: default_max_request_body(),
            max_response_body_bytes: default_max_response_body(),
            max_header_count: default_max_header_count(),
            max_header_bytes: default_max_header_bytes(),
            max_buffered_response_bytes: default_max_buffered_response(),
        }
    }
}

fn default_max_buffered_response() -> usize {
    256 << 20
}

fn default_max_request_body() -> usize {
    Limits::default().max_request_body_bytes
}
fn default_max_response_body() -> usize {
    Limits::default().max_response_body_bytes
}
fn default_max_header_count() -> usize {
    Limits::default().max_header_count
}
fn default_max_header_bytes() -> usize {
    Limits::default().max_header_bytes
}

/// One vendor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VendorConfig {
    /// The name callers use in `CallRequest.vendor`.
    pub name: String,
    /// Every call's path is appended to this; the credential is never sent
    /// to any other origin.
    pub base_url: String,
    /// Permit `http://` base URLs. Only for loopback tests: a credential over
    /// plain HTTP can be read by anyone on the path.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// How the credential is injected.
    pub auth: AuthConfig,
    /// PEM file of CA certificates to trust for this vendor instead of the
    /// public web roots (a private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Per-request timeout, milliseconds; the caller's gRPC deadline wins if
    /// sooner.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The request a rotation makes with the new credential before it is
    /// committed, e.g. `{ method = "GET", path = "/v1/me" }`; only a 2xx
    /// answer commits. Without it, rotation is refused.
    #[serde(default)]
    pub verify: Option<VerifyConfig>,
    /// The header a vendor dedupes by (e.g. `Idempotency-Key`): Valet sends
    /// the caller's key there, namespaced per tenant, so the vendor dedupes
    /// Valet's own retries too.
    #[serde(default)]
    pub idempotency_header: Option<String>,
    /// Whether WRITE calls must carry an idempotency key.
    #[serde(default = "default_true")]
    pub require_idempotency_key: bool,
    /// When failed attempts are retried (safe calls only).
    #[serde(default)]
    pub retry: valet_egress::RetryPolicy,
    /// When calls to a failing vendor are paused.
    #[serde(default)]
    pub breaker: valet_egress::BreakerPolicy,
    /// Allow the vendor's host to be (or resolve to) a loopback, private,
    /// link-local or other special address. Off: such a host is refused,
    /// which is what stops a vendor entry or a DNS answer from pointing a
    /// credential at cloud metadata or an internal service.
    #[serde(default)]
    pub allow_private_addresses: bool,
    /// Requests in flight to this vendor at once; more are refused with
    /// RESOURCE_EXHAUSTED `VENDOR_OVERLOADED`.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// Connect to these addresses instead of looking the host up (split
    /// horizon, pinning). They are checked like DNS answers, so a private
    /// one still needs `allow_private_addresses`. TLS still verifies the
    /// certificate against the host name.
    #[serde(default)]
    pub resolve_to: Vec<std::net::IpAddr>,
}

impl VendorConfig {
    /// A vendor entry with every optional field at its file default, as if
    /// only `name`, `base_url` and `auth` were written.
    pub fn new(name: impl Into<String>, base_url: impl Into<String>, auth: AuthConfig) -> Self {
        Self {
            name: name.into(),
            base_url: base_url.into(),
            allow_insecure_http: false,
            auth,
            ca_file: None,
            timeout_ms: default_timeout_ms(),
            verify: None,
            idempotency_header: None,
            require_idempotency_key: default_true(),
            retry: Default::default(),
            breaker: Default::default(),
            allow_private_addresses: false,
            max_concurrent_requests: default_max_concurrent_requests(),
            resolve_to: Vec::new(),
        }
    }
}

fn default_max_concurrent_requests() -> usize {
    512
}

fn default_true() -> bool {
    true
}

/// A vendor's credential check.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// HTTP method (GET, HEAD, OPTIONS, POST, ...).
    pub method: String,
    /// Path (and query) relative to the base URL.
    pub path: String,
}

fn default_timeout_ms() -> u64 {
    30_000
}

/// A vendor's auth scheme.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "scheme", rename_all = "lowercase", deny_unknown_fields)]
pub enum AuthConfig {
    /// `Authorization: Bearer <secret>`. (Empty struct variants, not unit
    /// variants, so serde refuses unknown keys beside `scheme`.)
    Bearer {},
    /// `<name>: <secret>`.
    Header {
        /// The header name, e.g. `X-Api-Key`.
        name: String,
    },
    /// `Authorization: Basic ...`; the secret is `user:password`.
    Basic {},
    /// `?<name>=<secret>`.
    Query {
        /// The query parameter, e.g. `api_key`.
        name: String,
    },
    /// OAuth 2.0: the stored secret is the tenant's grant material, and
    /// calls carry `Authorization: Bearer <access token>` fetched with it.
    #[serde(rename = "oauth2")]
    OAuth2 {
        /// The provider's token endpoint; checked like `base_url` (https,
        /// no private addresses unless `allow_private_addresses`).
        token_url: String,
        /// `client_credentials` or `refresh_token`.
        grant: GrantConfig,
        /// `client_secret_basic` (default), `client_secret_post` or
        /// `private_key_jwt`.
        #[serde(default)]
        client_auth: ClientAuthConfig,
        /// Scopes asked for by calls whose operation has none of its own.
        #[serde(default)]
        scopes: Vec<String>,
        /// Scopes for READ calls (default: `scopes`).
        #[serde(default)]
        read_scopes: Vec<String>,
        /// Scopes for WRITE calls (default: `scopes`).
        #[serde(default)]
        write_scopes: Vec<String>,
        /// The `audience` parameter some providers want.
        #[serde(default)]
        audience: Option<String>,
        /// RFC 7009 endpoint where tokens are revoked when the tenant is
        /// offboarded or disabled as compromised; checked like `token_url`.
        #[serde(default)]
        revocation_url: Option<String>,
        /// Mutual TLS (RFC 8705): each tenant's grant material holds a
        /// client certificate and key, used for the token endpoint and the
        /// vendor (a connection pool per tenant), so tokens can be bound.
        #[serde(default)]
        mtls: bool,
        /// A token is replaced this long before it expires, milliseconds.
        #[serde(default = "default_refresh_before_ms")]
        refresh_before_ms: u64,
    },
}

/// How an OAuth vendor's access tokens are obtained.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantConfig {
    /// The tenant's client id and secret.
    ClientCredentials,
    /// A refresh token from the tenant's consent flow.
    RefreshToken,
}

/// How Valet authenticates to an OAuth vendor's token endpoint.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthConfig {
    /// HTTP Basic.
    #[default]
    ClientSecretBasic,
    /// In the form body.
    ClientSecretPost,
    /// A JWT signed with the tenant's private key (RFC 7523).
    PrivateKeyJwt,
}

fn default_refresh_before_ms() -> u64 {
    60_000
}

/// A configuration problem; the message names the file and the key.
#[derive(Debug, thiserror::Error)]
#[error("config {path}: {message}")]
pub struct ConfigError {
    path: String,
    message: String,
}

impl ConfigError {
    /// The same problem, named as `path`'s.
    pub fn at(self, path: &Path) -> Self {
        Self {
            path: path.display().to_string(),
            message: self.message,
        }
    }
}

/// A configuration that passed every check, with what checking it built:
/// the vendor registry (each vendor's TLS client included) and the limits
/// are built here once and handed to start-up, not rebuilt from the file.
#[derive(Debug, Clone)]
pub struct Validated {
    config: Config,
    registry: Registry,
    limits: Limits,
}

impl Validated {
    /// The vendors, checked and their clients built.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The size limits, checked.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

impl std::ops::Deref for Validated {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.config
    }
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Validated, ConfigError> {
        Self::read(path)?.validate().map_err(|e| e.at(path))
    }

    /// Reads and parses `path` without the checks [`Config::validate`]
    /// makes, so command-line overrides can be applied first.
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let fail = |message: String| ConfigError {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        toml::from_str(&text).map_err(|e| fail(e.to_string().trim_end().to_owned()))
    }

    /// Checks values that parse but are wrong, keeping what the checks built.
    pub fn validate(self) -> Result<Validated, ConfigError> {
        let (registry, limits) = self.build()?;
        Ok(Validated {
            config: self,
            registry,
            limits,
        })
    }

    /// Checks values that parse but are wrong; keeps nothing it built.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.build().map(drop)
    }

    /// Every check, and the registry and limits they build.
    fn build(&self) -> Result<(Registry, Limits), ConfigError> {
        let registry = self.registry()?;
        let limits = self.limits()?;
        self.check_secrets()?;
        self.telemetry.validate().map_err(invalid)?;
        for (key, value) in [
            (
                "server.health_probe_interval_ms",
                self.server.health_probe_interval_ms,
            ),
            ("server.max_connections", self.server.max_connections as u64),
            (
                "server.max_concurrent_calls",
                self.server.max_concurrent_calls as u64,
            ),
            ("server.handshake_timeout_ms", self.server.handshake_timeout_ms),
            (
                "server.http2_keepalive_timeout_ms",
                self.server.http2_keepalive_timeout_ms,
            ),
        ] {
            if value == 0 {
                return Err(invalid(format!("{key} must be greater than 0")));
            }
        }
        self.check_quota()?;
        self.check_audit()?;
        let keys = &self.api_keys;
        if !(1..=36_500).contains(&keys.max_lifetime_days) {
            return Err(invalid("api_keys.max_lifetime_days must be 1 to 36500".into()));
        }
        if !(1..=3650).contains(&keys.expiring_window_days) {
            return Err(invalid("api_keys.expiring_window_days must be 1 to 3650".into()));
        }
        Ok((registry, limits))
    }

    /// The collector audit entries go to: `[audit] otlp`'s own endpoint,
    /// or else the telemetry one.
    pub fn otlp_endpoint_for<'a>(&'a self, otlp: &'a OtlpShipConfig) -> Option<&'a str> {
        otlp.endpoint
            .as_deref()
            .or(self.telemetry.otlp_endpoint.as_deref())
            .filter(|e| !e.is_empty())
    }

    /// The Redis URL a feature uses: its own, or else the shared one.
    pub fn redis_url_for<'a>(&'a self, own: &'a Option<String>) -> Option<&'a str> {
        own.as_deref()
            .or(self.redis_url.as_deref())
            .filter(|u| !u.is_empty())
    }

    fn check_audit(&self) -> Result<(), ConfigError> {
        let r = &self.audit.retention_days;
        for (key, days) in [
            ("security", r.security),
            ("access", r.access),
            ("operational", r.operational),
        ] {
            if !(1..=36_500).contains(&days) {
                return Err(invalid(format!("audit.retention_days.{key} must be 1 to 36500")));
            }
        }
        if let Some(ship) = &self.audit.ship
            && self.redis_url_for(&ship.redis_url).is_none()
        {
            return Err(invalid(
                "audit.ship.redis_url: required to ship the audit log (or set the top-level redis_url)"
                    .into(),
            ));
        }
        if let Some(otlp) = &self.audit.otlp
            && self.otlp_endpoint_for(otlp).is_none()
        {
            return Err(invalid(
                "audit.otlp.endpoint: required to ship the audit log over OTLP (or set telemetry.otlp_endpoint)"
                    .into(),
            ));
        }
        Ok(())
    }

    fn check_quota(&self) -> Result<(), ConfigError> {
        let q = &self.quota;
        if q.backend == QuotaBackend::Redis && self.redis_url_for(&q.redis_url).is_none() {
            return Err(invalid(
                "quota.redis_url: required with backend = \"redis\" (or set the top-level redis_url)".into(),
            ));
        }
        let idem = &self.idempotency;
        if idem.backend == QuotaBackend::Redis && self.redis_url_for(&idem.redis_url).is_none() {
            return Err(invalid(
                "idempotency.redis_url: required with backend = \"redis\" (or set the top-level redis_url)"
                    .into(),
            ));
        }
        let control = &self.control;
        if control.backend == QuotaBackend::Redis && self.redis_url.as_deref().is_none_or(str::is_empty) {
            return Err(invalid(
                "redis_url: required with control.backend = \"redis\"".into(),
            ));
        }
        if control.max_stale_ms == 0 || control.poll_interval_ms == 0 {
            return Err(invalid(
                "control: max_stale_ms and poll_interval_ms must be greater than 0".into(),
            ));
        }
        if idem.backend == QuotaBackend::Redis && self.secrets.master_key.is_none() {
            return Err(invalid(
                "secrets.master_key: required with idempotency.backend = \"redis\": every replica must open the responses the others sealed".into(),
            ));
        }
        if idem.retention_ms == 0 || idem.lease_ms == 0 {
            return Err(invalid(
                "idempotency: retention_ms and lease_ms must be greater than 0".into(),
            ));
        }
        if idem.retention_ms < idem.lease_ms {
            return Err(invalid(format!(
                "idempotency.retention_ms ({}) must be at least lease_ms ({}): a record must outlive the call that holds its key",
                idem.retention_ms, idem.lease_ms
            )));
        }
        if q.replicas == 0 {
            return Err(invalid("quota.replicas: must be greater than 0".into()));
        }
        for (i, p) in q.policies.iter().enumerate() {
            self.check_policy(p)
                .map_err(|e| invalid(format!("quota.policies[{i}].{e}")))?;
        }
        Ok(())
    }

    /// Checks a quota policy: its values, and that its vendor is configured.
    pub fn check_policy(&self, p: &valet_quota::Policy) -> Result<(), String> {
        p.check().map_err(|e| e.to_string())?;
        if p.vendor != "*" && !self.vendors.iter().any(|v| v.name == p.vendor) {
            return Err(format!("vendor: '{}' is not a configured vendor", p.vendor));
        }
        Ok(())
    }

    fn check_secrets(&self) -> Result<(), ConfigError> {
        let s = &self.secrets;
        let uses_aws =
            s.backend == SecretsBackend::Aws || matches!(s.master_key, Some(MasterKeySource::AwsSecret(_)));
        if uses_aws && s.region.as_deref().is_none_or(str::is_empty) {
            return Err(invalid(
                "secrets.region: required when Secrets Manager is used".into(),
            ));
        }
        if s.backend == SecretsBackend::Aws && s.master_key.is_none() {
            return Err(invalid(
                "secrets.master_key: required with backend = \"aws\": every replica must use the same key (for example { aws_secret = \"valet-master-key\" })".into(),
            ));
        }
        if let Some(MasterKeySource::AwsSecret(id)) = &s.master_key
            && id.starts_with(&format!("{}/", s.prefix))
        {
            return Err(invalid(format!(
                "secrets.master_key: the key's secret '{id}' is under the credential prefix '{}/', so one IAM policy would grant both; name it outside the prefix",
                s.prefix
            )));
        }
        if s.max_stale_ms < s.cache_ttl_ms {
            return Err(invalid(
                "secrets.max_stale_ms: must be at least secrets.cache_ttl_ms".into(),
            ));
        }
        let prefix_ok = !s.prefix.is_empty()
            && !s.prefix.starts_with('/')
            && !s.prefix.ends_with('/')
            && s.prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_+=.@-".contains(&b));
        if !prefix_ok {
            return Err(invalid(
                "secrets.prefix: must be letters, digits and /_+=.@- without a leading or trailing '/'"
                    .into(),
            ));
        }
        for (key, value) in [
            ("secrets.cache_ttl_ms", s.cache_ttl_ms),
            ("secrets.max_stale_ms", s.max_stale_ms),
        ] {
            if value == 0 {
                return Err(invalid(format!("{key}: must be greater than 0")));
            }
        }
        if s.cache_capacity == 0 {
            return Err(invalid("secrets.cache_capacity: must be greater than 0".into()));
        }
        if self.secrets.rotation_reminder_days == 0 {
            return Err(invalid(
                "secrets.rotation_reminder_days: must be greater than 0".into(),
            ));
        }
        if !(1..=MAX_REFRESH_BUDGET_MS).contains(&s.refresh_budget_ms) {
            return Err(invalid(format!(
                "secrets.refresh_budget_ms: must be between 1 and {MAX_REFRESH_BUDGET_MS}"
            )));
        }
        if let Some(url) = &s.endpoint_url
            && url
                .parse::<http::Uri>()
                .ok()
                .and_then(|u| u.scheme().cloned())
                .is_none()
        {
            return Err(invalid("secrets.endpoint_url: must be an absolute URL".into()));
        }
        Ok(())
    }

    /// The size limits, checked.
    fn limits(&self) -> Result<Limits, ConfigError> {
        let l = &self.limits;
        let positive = [
            ("limits.max_request_body_bytes", l.max_request_body_bytes),
            ("limits.max_response_body_bytes", l.max_response_body_bytes),
            ("limits.max_header_count", l.max_header_count),
            ("limits.max_header_bytes", l.max_header_bytes),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(invalid(format!("{key}: must be greater than 0")));
        }
        if l.max_buffered_response_bytes < l.max_response_body_bytes {
            return Err(invalid(format!(
                "limits.max_buffered_response_bytes ({}) must be at least max_response_body_bytes ({}), or no answer of the largest size could ever be read",
                l.max_buffered_response_bytes, l.max_response_body_bytes
            )));
        }
        Ok(Limits {
            max_request_body_bytes: l.max_request_body_bytes,
            max_response_body_bytes: l.max_response_body_bytes,
            max_header_count: l.max_header_count,
            max_header_bytes: l.max_header_bytes,
        })
    }

    /// The vendor registry, each vendor checked and its client built.
    fn registry(&self) -> Result<Registry, ConfigError> {
        let mut seen = std::collections::HashSet::new();
        let mut vendors = Vec::with_capacity(self.vendors.len());
        for (i, v) in self.vendors.iter().enumerate() {
            // Errors name the vendor as people know it, and the key's path.
            let key = |field: &str| format!("vendor '{}': vendors[{i}].{field}", v.name);
            valet_credentials::valid_name(&v.name).map_err(|e| invalid(format!("{}: {e}", key("name"))))?;
            if !seen.insert(v.name.as_str()) {
                return Err(invalid(format!(
                    "{}: vendor '{}' is defined twice",
                    key("name"),
                    v.name
                )));
            }
            if v.timeout_ms == 0 {
                return Err(invalid(format!("{}: must be greater than 0", key("timeout_ms"))));
            }
            let auth = auth_scheme(&v.auth).map_err(|(field, e)| invalid(format!("{}: {e}", key(field))))?;
            let verify = match &v.verify {
                None => None,
                Some(verify) => {
                    Some(verify_request(verify).map_err(|e| invalid(format!("{}: {e}", key("verify"))))?)
                }
            };
            let idempotency_header = match &v.idempotency_header {
                None => None,
                Some(name) => Some(http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    invalid(format!(
                        "{}: '{name}' is not a valid header name",
                        key("idempotency_header")
                    ))
                })?),
            };
            let spec = VendorSpec {
                require_idempotency_key: v.require_idempotency_key,
                idempotency_header,
                verify,
                name: v.name.clone(),
                base_url: v.base_url.clone(),
                allow_insecure_http: v.allow_insecure_http,
                auth,
                ca_file: v.ca_file.clone(),
                timeout: Duration::from_millis(v.timeout_ms),
                retry: v.retry.clone(),
                breaker: v.breaker.clone(),
                allow_private_addresses: v.allow_private_addresses,
                max_concurrent_requests: v.max_concurrent_requests,
                resolve_to: v.resolve_to.clone(),
            };
            vendors.push(Vendor::new(spec).map_err(|e| invalid(key(&e.to_string())))?);
        }
        Ok(Registry::new(vendors))
    }
}

fn verify_request(verify: &VerifyConfig) -> Result<valet_egress::VerifyRequest, String> {
    let method = valet_egress::request::method(&verify.method).map_err(|e| format!("method: {e}"))?;
    let rel = valet_egress::path::parse(&verify.path).map_err(|e| e.to_string())?;
    Ok(valet_egress::VerifyRequest {
        method,
        path: rel.path.to_owned(),
        query: rel.query.map(str::to_owned),
    })
}

/// The scheme, or the field at fault (under `auth.`) and why.
fn auth_scheme(auth: &AuthConfig) -> Result<AuthScheme, (&'static str, String)> {
    Ok(match auth {
        AuthConfig::Bearer {} => AuthScheme::Bearer,
        AuthConfig::Basic {} => AuthScheme::Basic,
        AuthConfig::Header { name } => {
            let header = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ("auth.name", format!("'{name}' is not a valid header name")))?;
            let reserved = [
                "host",
                "content-length",
                "transfer-encoding",
                "connection",
                "cookie",
            ];
            if reserved.contains(&header.as_str()) {
                return Err(("auth.name", format!("'{name}' cannot carry a credential")));
            }
            AuthScheme::Header(header)
        }
        AuthConfig::Query { name } => {
            let ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !ok {
                return Err((
                    "auth.name",
                    format!("'{name}' must be letters, digits, '_', '-' or '.'"),
                ));
            }
            AuthScheme::Query(name.clone())
        }
        AuthConfig::OAuth2 {
            token_url,
            grant,
            client_auth,
            scopes,
            read_scopes,
            write_scopes,
            audience,
            revocation_url,
            refresh_before_ms,
            mtls,
        } => {
            for (field, list) in [
                ("auth.scopes", scopes),
                ("auth.read_scopes", read_scopes),
                ("auth.write_scopes", write_scopes),
            ] {
                if let Some(bad) = list.iter().find(|s| !valid_scope(s)) {
                    return Err((
                        field,
                        format!(
                            "'{bad}' is not a scope token (printable ASCII, no spaces, quotes or backslashes)"
                        ),
                    ));
                }
            }
            AuthScheme::OAuth2(std::sync::Arc::new(valet_egress::OAuthSpec {
                token_url: token_url.clone(),
                grant: match grant {
                    GrantConfig::ClientCredentials => valet_egress::Grant::ClientCredentials,
                    GrantConfig::RefreshToken => valet_egress::Grant::RefreshToken,
                },
                client_auth: match client_auth {
                    ClientAuthConfig::ClientSecretBasic => valet_egress::ClientAuth::ClientSecretBasic,
                    ClientAuthConfig::ClientSecretPost => valet_egress::ClientAuth::ClientSecretPost,
                    ClientAuthConfig::PrivateKeyJwt => valet_egress::ClientAuth::PrivateKeyJwt,
                },
                scopes: scopes.clone(),
                read_scopes: read_scopes.clone(),
                write_scopes: write_scopes.clone(),
                audience: audience.clone(),
                revocation_url: revocation_url.clone(),
                refresh_before: Duration::from_millis(*refresh_before_ms),
                mtls: *mtls,
            }))
        }
    })
}

/// RFC 6749 §3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
fn valid_scope(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

fn invalid(message: String) -> ConfigError {
    ConfigError {
        path: String::new(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        config.check().map_err(|e| e.message)?;
        Ok(config)
    }

    #[test]
    fn the_example_parses() {
        let text = include_str!("../valet.example.toml");
        let config = parse(text).unwrap();
        assert_eq!(config.vendors.len(), 1);
    }

    #[test]
    fn a_new_vendor_has_the_file_defaults() {
        let text = "[[vendors]]\nname = \"a\"\nbase_url = \"https://x\"\nauth = { scheme = \"bearer\" }\n";
        let parsed: Config = toml::from_str(text).unwrap();
        let built = VendorConfig::new("a", "https://x", AuthConfig::Bearer {});
        assert_eq!(format!("{:?}", parsed.vendors[0]), format!("{built:?}"));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[server]\nlisten = \"nope\"\n", "listen"),
            ("[server]\nlistn = \"127.0.0.1:1\"\n", "listn"),
            (
                "[[vendors]]\nname = \"a\"\nbase_url = \"http://x\"\nauth = { scheme = \"bearer\" }\n",
                "vendors[0].base_url",
            ),
            (
                "[[vendors]]\nname = \"stripe\"\nbase_url = \"http://x\"\nauth = { scheme = \"bearer\" }\n",
                "vendor 'stripe': vendors[0].base_url",
            ),
            (
                "[[vendors]]\nname = \"v6\"\nbase_url = \"https://[::ffff:169.254.169.254]\"\nauth = { scheme = \"bearer\" }\n",
                "vendor 'v6': vendors[0].base_url: is an IPv4-embedded address",
            ),
            (
                "[server]\nmax_concurrent_calls = 0\n",
                "server.max_concurrent_calls must be greater than 0",
            ),
            (
                "[idempotency]\nretention_ms = 2000\n",
                "idempotency.retention_ms (2000) must be at least lease_ms (120000)",
            ),
            (
                "[[vendors]]\nname = \"a b\"\nbase_url = \"https://x\"\nauth = { scheme = \"bearer\" }\n",
                "vendors[0].name",
            ),
            (
                "[[vendors]]\nname = \"a\"\nbase_url = \"https://x\"\nauth = { scheme = \"magic\" }\n",
                "magic",
            ),
            (
                "[[vendors]]\nname = \"a\"\nbase_url = \"https://x\"\nauth = { scheme = \"header\", name = \"bad name\" }\n",
                "vendors[0].auth.name",
            ),
            (
                "[[vendors]]\nname = \"a\"\nbase_url = \"https://x\"\nauth = { scheme = \"bearer\", extra = 1 }\n",
                "extra",
            ),
            (
                "[[vendors]]\nname = \"a\"\nbase_url = \"https://x\"\nauth = { scheme = \"oauth2\", token_url = \"https://169.254.169.254/token\", grant = \"client_credentials\" }\n",
                "vendors[0].auth.token_url: is a link-local address",
            ),
            (
                "[[vendors]]\nname = \"a\"\nbase_url = \"https://x\"\nauth = { scheme = \"oauth2\", token_url = \"http://login.example/token\", grant = \"client_credentials\" }\n",
                "vendors[0].auth.token_url: must use https",
            ),
            (
                "[[vendors]]\nname = \"a\"\nbase_url = \"https://x\"\nauth = { scheme = \"oauth2\", token_url = \"https://login.example/token\", grant = \"client_credentials\", read_scopes = [\"a b\"] }\n",
                "vendors[0].auth.read_scopes: 'a b' is not a scope token",
            ),
            (
                "[[vendors]]\nname = \"a\"\nbase_url = \"https://x\"\nauth = { scheme = \"oauth2\", token_url = \"https://login.example/token\", grant = \"password\" }\n",
                "unknown variant `password`",
            ),
            (
                "[[vendors]]\nname = \"a\"\nbase_url = \"https://x\"\nauth = { scheme = \"oauth2\", token_url = \"https://login.example/token\", grant = \"client_credentials\", client_auth = \"tls_client_auth\" }\n",
                "unknown variant `tls_client_auth`",
            ),
            ("[limits]\nmax_header_count = 0\n", "limits.max_header_count"),
            ("[secrets]\nbackend = \"aws\"\n", "secrets.region"),
            (
                "[secrets]\nbackend = \"aws\"\nregion = \"r\"\n",
                "secrets.master_key",
            ),
            (
                "[secrets]\nregion = \"r\"\nmaster_key = { aws_secret = \"valet/master\" }\n",
                "credential prefix",
            ),
            (
                "[secrets]\ncache_ttl_ms = 10\nmax_stale_ms = 5\n",
                "secrets.max_stale_ms",
            ),
            ("[idempotency]\nbackend = \"redis\"\n", "idempotency.redis_url"),
            ("[audit]\nship = {}\n", "audit.ship.redis_url"),
            ("[audit]\notlp = {}\n", "audit.otlp.endpoint"),
            (
                "[audit]\nretention_days = { access = 0 }\n",
                "audit.retention_days.access",
            ),
            ("[audit]\nship = { when_behind = \"stop\" }\n", "when_behind"),
            (
                "[idempotency]\nbackend = \"redis\"\nredis_url = \"redis://x\"\n",
                "secrets.master_key",
            ),
            ("[secrets]\nbackend = \"vault\"\n", "vault"),
            (
                "[secrets]\nmaster_key = { aws_secret = \"k\" }\n",
                "secrets.region",
            ),
            ("[secrets]\nprefix = \"/bad/\"\n", "secrets.prefix"),
            ("[secrets]\ncache_ttl_ms = 0\n", "secrets.cache_ttl_ms"),
            ("[secrets]\nrefresh_budget_ms = 0\n", "secrets.refresh_budget_ms"),
            (
                "[secrets]\nrefresh_budget_ms = 60000\n",
                "secrets.refresh_budget_ms",
            ),
            (
                "[[vendors]]\nname = \"a\"\nbase_url = \"https://x\"\nauth = { scheme = \"bearer\" }\nverify = { method = \"GET\", path = \"../me\" }\n",
                "vendors[0].verify",
            ),
        ];
        for (text, key) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(key), "{key} not in: {err}");
        }
    }
}
