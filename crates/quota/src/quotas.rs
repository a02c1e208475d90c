//! The quota engine: the effective policy set, where run-time policies are
//! kept, and the check a call goes through.
//!
//! Effective policies are the config file's defaults, overridden (by id) by
//! run-time policies set through the Admin API. Run-time policies persist:
//! embedded in `quotas.json` under the state dir; in fleet mode in a Redis
//! hash, with a version every replica polls twice a second, so a change
//! reaches all replicas within a second without a restart.
//!
//! The version key is the record that the hash is real (and the hash repeats
//! it in a `~version` field, so losing the hash alone is seen too): every change sets
//! it (to Redis's clock in µs, or one more than before, so versions only
//! grow and a restored store's next change outranks anything lost), and it
//! stays when an admin deletes the last policy. A version that is missing
//! or lower than the one a replica holds means the store lost data (Redis
//! restarted without persistence, a failover to a replica that lagged):
//! the replica keeps its last known set, logs and counts it, and
//! re-publishes that set — one replica wins, the rest converge on the
//! highest version. It never applies an empty set because a key is gone.

use crate::limiter::{Decision, Embedded, Limiter, OnBackendError, Shared};
use crate::policy::{Mode, Policy, select};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

const POLICIES_KEY: &str = "valet:quota:policies";
const VERSION_KEY: &str = "valet:quota:version";

/// The field of the policy hash that repeats the version: the hash and the
/// version key are two Redis keys, and either can be lost alone (an
/// eviction, a partial restore). A hash whose mark is not the version key's
/// value lost its set. No policy id starts with `~`.
const MARK: &str = "~version";

/// Puts this replica's set back, with its version, unless the store holds
/// that version or a newer one, intact (its hash marked with it). KEYS:
/// policies, version. ARGV: the version, then id, policy pairs. Returns 1
/// when it wrote.
const RESTORE_LUA: &str = r#"
local raw = redis.call('GET', KEYS[2])
local stored = tonumber(raw or '0')
if stored >= tonumber(ARGV[1]) and raw == redis.call('HGET', KEYS[1], '~version') then return 0 end
redis.call('DEL', KEYS[1])
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], '~version', ARGV[1])
redis.call('SET', KEYS[2], ARGV[1])
return 1
"#;

static RESTORE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RESTORE_LUA));

/// One change (ARGV[2] `put` or `del` of id ARGV[3], policy ARGV[4]) on top
/// of the stored set — or, when the store lost data (its version is below
/// ARGV[1], this replica's, or its hash lost its mark), on top of this
/// replica's set (pairs from ARGV[5]). Returns {new version, restored
/// (0/1), the set after}.
const WRITE_LUA: &str = r#"
local raw = redis.call('GET', KEYS[2])
local stored = tonumber(raw or '0')
local restored = 0
local intact = raw == redis.call('HGET', KEYS[1], '~version') or (not raw and tonumber(ARGV[1]) == 0)
if stored < tonumber(ARGV[1]) or not intact then
  redis.call('DEL', KEYS[1])
  for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
  if tonumber(ARGV[1]) > stored then stored = tonumber(ARGV[1]) end
  restored = 1
end
if ARGV[2] == 'put' then
  redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
else
  redis.call('HDEL', KEYS[1], ARGV[3])
end
local t = redis.call('TIME')
local version = tonumber(t[1]) * 1000000 + tonumber(t[2])
if version <= stored then version = stored + 1 end
local text = string.format('%d', version)
redis.call('HSET', KEYS[1], '~version', text)
redis.call('SET', KEYS[2], text)
local set = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i] ~= '~version' then set[#set + 1] = all[i + 1] end
end
return {version, restored, set}
"#;

static WRITE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(WRITE_LUA));
/// How often a fleet replica looks for policy changes.
pub const SYNC_EVERY: Duration = Duration::from_millis(500);

/// The outcome of checking one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No policy covers the call.
    Unlimited,
    /// Admitted under `policy` (the most specific one, or an aggregate cap
    /// when no per-tenant policy matched). `shadow` lists shadow policies
    /// this call exceeded: counted and reported, not refused.
    Admitted {
        /// The policy reported in `ratelimit` metadata.
        policy: Policy,
        /// Its bucket's state after this call.
        decision: Decision,
        /// Ids of shadow policies the call went over.
        shadow: Vec<String>,
    },
    /// Refused because the shared backend cannot answer and
    /// `on_backend_error = "deny"` — the backend's state, not the tenant's
    /// usage; nothing was counted.
    Unavailable(BackendUnavailable),
    /// Refused by an enforced policy, or paused by a vendor's 429.
    Refused {
        /// The refusing policy's id, or `vendor-pushback`.
        policy_id: String,
        /// When a call may succeed again.
        retry_after: Duration,
    },
}

/// The shared quota backend could not answer a check, and the configured
/// fallback refuses calls it cannot count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendUnavailable {
    /// When the backend is tried again.
    pub retry_after: Duration,
}

/// Why a policy change failed.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    /// The policy store could not be read or written.
    #[error("quota policy store: {0}")]
    Store(String),
}

enum Store {
    File(PathBuf),
    Redis(redis::aio::ConnectionManager),
}

/// The engine.
pub struct Quotas {
    /// The config file's policies; replaced by [`Quotas::replace_defaults`].
    defaults: RwLock<Vec<Policy>>,
    runtime: RwLock<Vec<Policy>>,
    effective: RwLock<Arc<Vec<Policy>>>,
    store: Store,
    limiter: Arc<dyn Limiter>,
    /// Serialises changes so read-modify-write of the file cannot interleave.
    writes: tokio::sync::Mutex<()>,
    version: AtomicI64,
    /// Times this replica found the shared policy store had lost data.
    store_losses: AtomicU64,
    /// The last decision seen per bucket, for usage reports.
    last: std::sync::Mutex<std::collections::HashMap<String, (Decision, std::time::Instant)>>,
}

/// Buckets remembered for usage reports before the memory is cleared.
const MAX_REMEMBERED: usize = 100_000;

/// One bucket's state in a usage report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// The policy's id.
    pub policy_id: String,
    /// Calls admissible now.
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset: Duration,
}

impl std::fmt::Debug for Quotas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quotas")
            .field("policies", &self.list().len())
            .finish_non_exhaustive()
    }
}

impl Quotas {
    /// Embedded: in-process limiter, run-time policies in `path`.
    pub fn open_local(defaults: Vec<Policy>, path: PathBuf) -> Result<Self, QuotaError> {
        let runtime = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|_| QuotaError::Store(format!("{} is corrupt", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(QuotaError::Store(format!("{}: {e}", path.display()))),
        };
        Ok(Self::new(
            defaults,
            runtime,
            Store::File(path),
            Arc::new(Embedded::default()),
        ))
    }

    /// Whether the shared backend's fallback is standing in for Redis now.
    pub fn fallback_active(&self) -> bool {
        self.limiter.degraded()
    }

    /// Whether the policy store answers: always for the file, a PING for
    /// Redis.
    pub async fn probe(&self) -> Result<(), QuotaError> {
        match &self.store {
            Store::File(_) => Ok(()),
            Store::Redis(conn) => {
                let mut conn = conn.clone();
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .map(|_| ())
                    .map_err(|e| QuotaError::Store(e.to_string()))
            }
        }
    }

    /// Fleet: the shared Redis limiter, run-time policies in Redis.
    pub async fn open_redis(
        defaults: Vec<Policy>,
        url: &str,
        on_error: OnBackendError,
        replicas: u32,
    ) -> Result<Self, QuotaError> {
        let shared = Shared::connect(url, on_error, replicas)
            .await
            .map_err(|e| QuotaError::Store(e.to_string()))?;
        let mut conn = shared.connection();
        // Redis down at start: serve the default policies (under
        // `on_backend_error`) until the sync loop reaches it and loads the
        // run-time ones.
        let (version, runtime) = match load_redis(&mut conn).await {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::warn!(error = %e, "quota policy store unreachable at start; using the default policies until it answers");
                (None, Vec::new())
            }
        };
        let quotas = Self::new(defaults, runtime, Store::Redis(conn), Arc::new(shared));
        quotas.version.store(version.unwrap_or(0), Ordering::SeqCst);
        Ok(quotas)
    }

    fn new(defaults: Vec<Policy>, runtime: Vec<Policy>, store: Store, limiter: Arc<dyn Limiter>) -> Self {
        let quotas = Self {
            defaults: RwLock::new(defaults),
            runtime: RwLock::new(runtime),
            effective: RwLock::new(Arc::new(Vec::new())),
            store,
            limiter,
            writes: tokio::sync::Mutex::new(()),
            version: AtomicI64::new(0),
            store_losses: AtomicU64::new(0),
            last: Default::default(),
        };
        quotas.rebuild();
        quotas
    }

    fn rebuild(&self) {
        let runtime = self.runtime.read().expect("lock");
        let defaults = self.defaults.read().expect("lock");
        let mut effective: Vec<Policy> = defaults
            .iter()
            .filter(|d| !runtime.iter().any(|r| r.id() == d.id()))
            .cloned()
            .collect();
        effective.extend(runtime.iter().cloned());
        effective.sort_by_key(Policy::id);
        *self.effective.write().expect("lock") = Arc::new(effective);
    }

    /// Puts a reloaded config file's policies in place of the old ones;
    /// run-time policies still override them by id. Buckets are kept, so a
    /// tenant's spent budget is not refilled by a reload.
    pub fn replace_defaults(&self, defaults: Vec<Policy>) {
        *self.defaults.write().expect("lock") = defaults;
        self.rebuild();
    }

    /// Every effective policy, by id.
    pub fn list(&self) -> Vec<Policy> {
        self.effective.read().expect("lock").as_ref().clone()
    }

    /// The effective policy with `id`.
    pub fn get(&self, id: &str) -> Option<Policy> {
        self.effective
            .read()
            .expect("lock")
            .iter()
            .find(|p| p.id() == id)
            .cloned()
    }

    /// Sets (or replaces) a run-time policy; returns the one it replaced.
    pub async fn put(&self, policy: Policy) -> Result<Option<Policy>, QuotaError> {
        let _guard = self.writes.lock().await;
        let before = self.get(&policy.id());
        let mut next = self.runtime.read().expect("lock").clone();
        next.retain(|p| p.id() != policy.id());
        next.push(policy.clone());
        let stored = self.persist(next, Change::Put(&policy)).await?;
        *self.runtime.write().expect("lock") = stored;
        self.rebuild();
        Ok(before)
    }

    /// Removes a run-time policy (a config default with the same id shows
    /// again); returns what was removed, `None` if there was none.
    pub async fn delete(&self, id: &str) -> Result<Option<Policy>, QuotaError> {
        let _guard = self.writes.lock().await;
        let mut next = self.runtime.read().expect("lock").clone();
        let Some(at) = next.iter().position(|p| p.id() == id) else {
            return Ok(None);
        };
        let removed = next.remove(at);
        let stored = self.persist(next, Change::Delete(id)).await?;
        *self.runtime.write().expect("lock") = stored;
        self.rebuild();
        Ok(Some(removed))
    }

    /// Writes a change; returns the run-time set now stored: `next` for the
    /// file; for Redis, the stored set after the change, which includes
    /// changes other replicas made that this one has not synced yet.
    async fn persist(&self, next: Vec<Policy>, change: Change<'_>) -> Result<Vec<Policy>, QuotaError> {
        match &self.store {
            Store::File(path) => {
                let bytes = serde_json::to_vec_pretty(&next).expect("policies serialise");
                valet_durable::write_atomically(path, &bytes)
                    .map_err(|e| QuotaError::Store(format!("{}: {e}", path.display())))?;
                Ok(next)
            }
            Store::Redis(conn) => {
                let mut conn = conn.clone();
                let known = self.version.load(Ordering::SeqCst);
                let mut script = WRITE.prepare_invoke();
                script.key(POLICIES_KEY).key(VERSION_KEY).arg(known);
                match change {
                    Change::Put(p) => {
                        script
                            .arg("put")
                            .arg(p.id())
                            .arg(serde_json::to_string(p).expect("a policy serialises"));
                    }
                    Change::Delete(id) => {
                        script.arg("del").arg(id).arg("");
                    }
                }
                // This replica's set before the change, in case the store
                // lost it.
                for p in self.runtime.read().expect("lock").iter() {
                    script
                        .arg(p.id())
                        .arg(serde_json::to_string(p).expect("a policy serialises"));
                }
                let (version, restored, raw): (i64, i64, Vec<String>) = script
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| QuotaError::Store(e.to_string()))?;
                if restored == 1 {
                    self.store_lost(known, None);
                    tracing::error!(
                        known_version = known,
                        "re-published this replica's last known quota policies under the change"
                    );
                }
                let stored = parse_policies(&raw)?;
                self.version.store(version, Ordering::SeqCst);
                Ok(stored)
            }
        }
    }

    /// Fleet mode: picks up changes made by other replicas, and repairs a
    /// store that lost data (see the module docs). Returns whether the
    /// policies changed. Embedded mode has nothing to sync.
    pub async fn sync(&self) -> Result<bool, QuotaError> {
        let Store::Redis(conn) = &self.store else {
            return Ok(false);
        };
        let mut conn = conn.clone();
        let (stored, mark): (Option<i64>, Option<i64>) = redis::pipe()
            .atomic()
            .get(VERSION_KEY)
            .hget(POLICIES_KEY, MARK)
            .query_async(&mut conn)
            .await
            .map_err(|e| QuotaError::Store(e.to_string()))?;
        let _guard = self.writes.lock().await;
        let known = self.version.load(Ordering::SeqCst);
        // A version whose hash is not marked with it: the set was lost.
        let stored = stored.filter(|v| mark == Some(*v));
        match stored {
            Some(v) if v == known => Ok(false),
            // Nothing was ever stored, here or anywhere this replica knows.
            None if known == 0 => Ok(false),
            Some(v) if v > known => {
                let (version, runtime) = load_redis(&mut conn).await?;
                *self.runtime.write().expect("lock") = runtime;
                self.version.store(version.unwrap_or(0), Ordering::SeqCst);
                self.rebuild();
                Ok(true)
            }
            // Missing, or older than what this replica already saw.
            _ => {
                self.store_lost(known, stored);
                let runtime = self.runtime.read().expect("lock").clone();
                let mut restore = RESTORE.prepare_invoke();
                restore.key(POLICIES_KEY).key(VERSION_KEY).arg(known);
                for p in &runtime {
                    restore
                        .arg(p.id())
                        .arg(serde_json::to_string(p).expect("a policy serialises"));
                }
                let wrote: i64 = restore
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| QuotaError::Store(e.to_string()))?;
                if wrote == 1 {
                    tracing::error!(
                        version = known,
                        policies = runtime.len(),
                        "re-published this replica's last known quota policies"
                    );
                } else {
                    tracing::warn!("another replica re-published the quota policies first");
                }
                Ok(false)
            }
        }
    }

    /// Logs and counts a store found to have lost data.
    fn store_lost(&self, known: i64, stored: Option<i64>) {
        self.store_losses.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            known_version = known,
            stored_version = ?stored,
            "the shared quota policy store lost data (version missing or went backwards); keeping this replica's last known policies, never an empty set"
        );
    }

    /// How many times this replica found the shared policy store had lost
    /// data (`valet_quota_policy_store_lost_total`).
    pub fn policy_store_losses(&self) -> u64 {
        self.store_losses.load(Ordering::Relaxed)
    }

    /// Runs [`Quotas::sync`] every [`SYNC_EVERY`] until the engine is dropped.
    pub fn spawn_sync(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        if !matches!(self.store, Store::Redis(_)) {
            return None;
        }
        let weak = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(SYNC_EVERY);
            loop {
                tick.tick().await;
                let Some(quotas) = weak.upgrade() else { return };
                if let Err(e) = quotas.sync().await {
                    tracing::warn!(error = %e, "quota policy sync failed; keeping the last known policies");
                }
            }
        }))
    }

    /// Checks one call: the vendor's push-back pause, the most specific
    /// policy, then every aggregate cap.
    pub async fn check(&self, tenant: &str, vendor: &str, read: bool) -> Verdict {
        let policies = self.effective.read().expect("lock").clone();
        let applicable = select(&policies, tenant, vendor, read);
        let pause_key = format!("{tenant}/{vendor}");
        let mut reported: Option<(Policy, Decision)> = None;
        let mut shadow = Vec::new();

        if applicable.primary.is_none()
            && let Some(left) = self.limiter.paused(&pause_key).await
        {
            return pushback(left);
        }
        let checks = applicable
            .primary
            .into_iter()
            .map(|p| (p, true))
            .chain(applicable.aggregates.into_iter().map(|p| (p, false)));
        for (policy, primary) in checks {
            let decision = match self
                .limiter
                .check(
                    &policy.bucket(tenant),
                    primary.then_some(pause_key.as_str()),
                    policy,
                )
                .await
            {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(error = %e, "quota check failed; admitting");
                    continue;
                }
            };
            if decision.paused {
                return pushback(decision.retry_after);
            }
            if decision.unavailable {
                if policy.mode == Mode::Enforce {
                    return Verdict::Unavailable(BackendUnavailable {
                        retry_after: decision.retry_after,
                    });
                }
                // A shadow policy refuses nothing, and nothing was counted.
                continue;
            }
            self.remember(policy.bucket(tenant), decision);
            if !decision.allowed {
                if policy.mode == Mode::Enforce {
                    return Verdict::Refused {
                        policy_id: policy.id(),
                        retry_after: decision.retry_after,
                    };
                }
                tracing::info!(policy = %policy, tenant, vendor, "shadow quota exceeded; call admitted");
                shadow.push(policy.id());
            }
            reported.get_or_insert_with(|| (policy.clone(), decision));
        }
        match reported {
            Some((policy, decision)) => Verdict::Admitted {
                policy,
                decision,
                shadow,
            },
            None => Verdict::Unlimited,
        }
    }

    fn remember(&self, bucket: String, decision: Decision) {
        let mut last = self.last.lock().expect("lock");
        if last.len() >= MAX_REMEMBERED {
            last.clear();
        }
        last.insert(bucket, (decision, std::time::Instant::now()));
    }

    /// Each applicable policy's bucket for a tenant, vendor and operation,
    /// counting nothing: read from Redis in fleet mode; in process, as last
    /// seen by this replica and projected to now (a bucket never seen is
    /// full).
    pub async fn usage(&self, tenant: &str, vendor: &str, read: bool) -> Vec<Usage> {
        let policies = self.effective.read().expect("lock").clone();
        let applicable = select(&policies, tenant, vendor, read);
        let mut usage = Vec::new();
        for p in applicable.primary.into_iter().chain(applicable.aggregates) {
            let bucket = p.bucket(tenant);
            let (remaining, reset) = match self.limiter.peek(&bucket, p).await {
                Some(d) => (d.remaining, d.reset),
                None => self.projected(&bucket, p),
            };
            usage.push(Usage {
                policy_id: p.id(),
                remaining,
                reset,
            });
        }
        usage
    }

    fn projected(&self, bucket: &str, p: &Policy) -> (u32, Duration) {
        match self.last.lock().expect("lock").get(bucket) {
            None => (p.burst, Duration::ZERO),
            Some((d, at)) => {
                let elapsed = at.elapsed();
                let refilled = (elapsed.as_nanos() / p.emission_interval().as_nanos().max(1)) as u32;
                (
                    d.remaining.saturating_add(refilled).min(p.burst),
                    d.reset.saturating_sub(elapsed),
                )
            }
        }
    }

    /// A vendor answered 429: refuse this tenant × vendor locally for `for_`.
    pub async fn pause(&self, tenant: &str, vendor: &str, for_: Duration) {
        self.limiter.pause(&format!("{tenant}/{vendor}"), for_).await;
    }
}

fn pushback(left: Duration) -> Verdict {
    Verdict::Refused {
        policy_id: "vendor-pushback".into(),
        retry_after: left,
    }
}

/// A change to the run-time set.
enum Change<'a> {
    Put(&'a Policy),
    Delete(&'a str),
}

/// The stored version (`None` if there is none) and set, read together.
async fn load_redis(
    conn: &mut redis::aio::ConnectionManager,
) -> Result<(Option<i64>, Vec<Policy>), QuotaError> {
    let (version, all): (Option<i64>, Vec<(String, String)>) = redis::pipe()
        .atomic()
        .get(VERSION_KEY)
        .hgetall(POLICIES_KEY)
        .query_async(conn)
        .await
        .map_err(|e| QuotaError::Store(e.to_string()))?;
    let mut mark = None;
    let mut raw = Vec::with_capacity(all.len());
    for (field, value) in all {
        if field == MARK {
            mark = value.parse::<i64>().ok();
        } else {
            raw.push(value);
        }
    }
    // A version whose hash is not marked with it holds no set this replica
    // may take as the fleet's: it starts from the config, and syncs once a
    // replica that knew the set has re-published it.
    Ok((version.filter(|v| mark == Some(*v)), parse_policies(&raw)?))
}

fn parse_policies(raw: &[String]) -> Result<Vec<Policy>, QuotaError> {
    raw.iter()
        .map(|r| serde_json::from_str(r).map_err(|_| QuotaError::Store("a stored policy is corrupt".into())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{OperationMatch, Period};

    fn policy(tenant: &str, vendor: &str, burst: u32, mode: Mode, aggregate: bool) -> Policy {
        Policy {
            tenant: tenant.into(),
            vendor: vendor.into(),
            operation: OperationMatch::Any,
            rate: 1,
            period: Period::Hour,
            burst,
            mode,
            aggregate,
        }
    }

    fn admitted(v: &Verdict) -> bool {
        matches!(v, Verdict::Admitted { .. } | Verdict::Unlimited)
    }

    #[tokio::test]
    async fn specific_policies_shadow_and_aggregate_caps() {
        let dir = tempfile::tempdir().unwrap();
        let defaults = vec![
            policy("*", "stripe", 2, Mode::Enforce, false),
            policy("acme", "stripe", 3, Mode::Enforce, false),
            policy("*", "github", 1, Mode::Shadow, false),
            policy("*", "slack", 3, Mode::Enforce, true),
        ];
        let q = Quotas::open_local(defaults, dir.path().join("quotas.json")).unwrap();
        // acme's own policy (3) outranks the vendor-wide one (2).
        let acme: Vec<bool> = futures_check(&q, "acme", "stripe", 4).await;
        assert_eq!(acme, [true, true, true, false]);
        // Tenant isolation: globex has its own bucket under the * policy.
        assert_eq!(
            futures_check(&q, "globex", "stripe", 3).await,
            [true, true, false]
        );
        // Shadow: never refuses, but reports.
        let v1 = q.check("acme", "github", true).await;
        let v2 = q.check("acme", "github", true).await;
        assert!(admitted(&v1) && admitted(&v2));
        assert!(matches!(&v2, Verdict::Admitted { shadow, .. } if shadow == &vec!["*/github/*".to_owned()]));
        // Aggregate: three calls across all tenants.
        let spread: Vec<bool> = [
            q.check("a", "slack", true).await,
            q.check("b", "slack", true).await,
            q.check("c", "slack", true).await,
            q.check("d", "slack", true).await,
        ]
        .iter()
        .map(admitted)
        .collect();
        assert_eq!(spread, [true, true, true, false]);
        assert_eq!(q.check("x", "unknown", true).await, Verdict::Unlimited);
    }

    async fn futures_check(q: &Quotas, tenant: &str, vendor: &str, n: usize) -> Vec<bool> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(admitted(&q.check(tenant, vendor, true).await));
        }
        out
    }

    #[tokio::test]
    async fn run_time_policies_override_defaults_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quotas.json");
        let defaults = vec![policy("*", "stripe", 1, Mode::Enforce, false)];
        let q = Quotas::open_local(defaults.clone(), path.clone()).unwrap();
        let before = q
            .put(policy("*", "stripe", 5, Mode::Enforce, false))
            .await
            .unwrap();
        assert_eq!(before.map(|p| p.burst), Some(1));
        assert_eq!(q.get("*/stripe/*").unwrap().burst, 5);
        let reopened = Quotas::open_local(defaults, path).unwrap();
        assert_eq!(reopened.get("*/stripe/*").unwrap().burst, 5);
        reopened.delete("*/stripe/*").await.unwrap();
        assert_eq!(
            reopened.get("*/stripe/*").unwrap().burst,
            1,
            "the default shows again"
        );
    }
}
