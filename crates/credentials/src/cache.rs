//! The ciphertext cache in front of a remote secret store.
//!
//! Only sealed records are cached — AWS's own caching client keeps
//! plaintext; this one never sees it. An entry is fresh for `ttl`; after
//! that the next `get` asks the source for the current version id (a cheap
//! DescribeSecret) and fetches the value (GetSecretValue) only if the version
//! changed. One refresh per key runs at a time (single-flight), as a task of
//! its own: callers wait for it instead of sending their own requests, and a
//! caller that gives up (its deadline) does not cancel it.
//!
//! When the source is unavailable, an entry confirmed within `max_stale` is
//! served stale; after that the call fails rather than inject something
//! unverified. A caller holding such an entry waits at most
//! `refresh_budget` from the refresh's start for the source's answer, so a
//! hung source costs a call the budget, not the SDK's timeouts; the refresh
//! carries on in the background. A refresh that fails, or outlasts the
//! budget, sets a re-check backoff: until then the entry is served without
//! asking again, so an outage costs one request per key per backoff.
//!
//! Missing credentials are cached too, so a caller retrying a tenant without
//! one does not hammer the source. At most `capacity` keys are kept, in a
//! `moka` map: the least recently used is evicted, in constant time (moka's
//! LRU policy, not its default TinyLFU admission, which could turn away a
//! new tenant's first entry and so cost its next call another fetch). The
//! map holds only the entries; the refresh state machine above — version
//! checks, stale-if-error, the budget — is this module's, as moka's own
//! `try_get_with` single-flight knows nothing of serving a stale entry while
//! it refreshes.

use crate::key::CredentialKey;
use crate::store::{StoreError, StoredCredential};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use valet_telemetry::{CacheLookup, Metrics};

/// Where the cache's clock comes from; tests and benchmarks drive it.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// Cache settings.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    /// How long an entry is served without a version check.
    pub ttl: Duration,
    /// How long past its last confirmation an entry may be served while the
    /// source is unavailable.
    pub max_stale: Duration,
    /// How long a caller holding an entry within `max_stale` waits for a
    /// refresh before it is served that entry instead. Counted from the
    /// refresh's start, so callers joining a refresh that has already
    /// outlasted it do not wait at all.
    pub refresh_budget: Duration,
    /// Most keys kept.
    pub capacity: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            max_stale: Duration::from_secs(3600),
            refresh_budget: Duration::from_millis(300),
            capacity: 10_000,
        }
    }
}

/// Why the source could not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceError {
    /// Unreachable, throttling, failing: a cached record may be served stale.
    Unavailable(String),
    /// It answered with something that is not a Valet sealed record: never
    /// papered over with a stale one.
    Corrupt(String),
}

/// What the source answers about a key's current version.
pub trait Source: Send + Sync + 'static {
    /// The current version id, `None` if the credential does not exist.
    fn version(
        &self,
        key: &CredentialKey,
    ) -> impl Future<Output = Result<Option<String>, SourceError>> + Send;
    /// The current version id and record, `None` if it does not exist.
    fn fetch(
        &self,
        key: &CredentialKey,
    ) -> impl Future<Output = Result<Option<(String, StoredCredential)>, SourceError>> + Send;
}

/// A cached answer: the record (or its absence) at a version.
#[derive(Debug, Clone)]
struct Cached {
    /// `None`: the source said there is no such credential.
    cred: Option<StoredCredential>,
    version: Option<String>,
    /// When the source last confirmed this answer.
    confirmed: Instant,
    /// After a failed or overlong refresh, the stale answer is served without
    /// asking the source again until then, so an outage costs one request per
    /// key per backoff, not one per call.
    retry_at: Option<Instant>,
}

/// How long a key whose refresh failed is served stale before the source is
/// asked again.
const FAILED_REFRESH_BACKOFF: Duration = Duration::from_secs(1);

/// What a refresh ends with: the current record (or its absence).
type Outcome = Result<Option<StoredCredential>, SourceError>;

#[derive(Debug)]
struct Entry {
    state: RwLock<Option<Cached>>,
    /// The one refresh in flight for this key, if any.
    refreshing: Mutex<Option<Refresh>>,
}

impl Entry {
    fn new(state: Option<Cached>) -> Self {
        Self {
            state: RwLock::new(state),
            refreshing: Mutex::new(None),
        }
    }
}

/// A refresh in flight, as its waiters see it.
#[derive(Debug, Clone)]
struct Refresh {
    /// When it started, on the runtime's clock: the budget is real waiting.
    started: tokio::time::Instant,
    /// Its outcome, once it has one; closed without one if the task died.
    done: watch::Receiver<Option<Outcome>>,
    /// Set by the first waiter that gave up on it (it outlasted the budget).
    overran: Arc<AtomicBool>,
}

/// The cache. Cheap to share behind an `Arc`.
pub struct Cache {
    settings: CacheSettings,
    clock: Clock,
    entries: moka::sync::Cache<CredentialKey, Arc<Entry>>,
    metrics: Metrics,
    /// Lookups by how they were served, for [`Cache::stats`].
    counts: [std::sync::atomic::AtomicU64; 3],
}

/// What the cache holds and how it has served, for `valet status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Credentials cached now.
    pub entries: u64,
    /// Lookups answered from the cache (or by another lookup's refresh).
    pub hits: u64,
    /// Lookups that asked the store.
    pub misses: u64,
    /// Lookups served a stale record while the store did not answer.
    pub stale: u64,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// An empty cache on the real clock.
    pub fn new(settings: CacheSettings) -> Self {
        Self::with_clock(settings, Arc::new(Instant::now))
    }

    /// An empty cache on `clock`.
    pub fn with_clock(settings: CacheSettings, clock: Clock) -> Self {
        let entries = moka::sync::Cache::builder()
            .max_capacity(settings.capacity as u64)
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .build();
        Self {
            settings,
            clock,
            entries,
            metrics: Metrics::default(),
            counts: Default::default(),
        }
    }

    /// The record for `key`, from cache when fresh, else from `source`.
    pub async fn get<S: Source>(
        &self,
        key: &CredentialKey,
        source: &Arc<S>,
    ) -> Result<Option<StoredCredential>, StoreError> {
        let entry = self.entry(key);
        let now = (self.clock)();
        if let Some(hit) = self.fresh(&entry, now) {
            self.served(CacheLookup::Hit);
            return Ok(hit);
        }
        let (refresh, started_here) = self.refresh(key, &entry, source);
        let (cred, stale) = self.wait(key, &entry, refresh).await?;
        self.served(match (stale, started_here) {
            (true, _) => CacheLookup::Stale,
            (false, true) => CacheLookup::Miss,
            (false, false) => CacheLookup::Hit, // answered by another's refresh
        });
        Ok(cred)
    }

    /// Counts the lookup and names it on the current span (the lease's).
    fn served(&self, lookup: CacheLookup) {
        let slot = match lookup {
            CacheLookup::Hit => 0,
            CacheLookup::Miss => 1,
            CacheLookup::Stale => 2,
        };
        self.counts[slot].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.metrics.cache_lookup(lookup);
        tracing::Span::current().record("valet.cache", lookup.as_str());
    }

    /// Entries now and lookups so far.
    pub fn stats(&self) -> CacheStats {
        let count = |i: usize| self.counts[i].load(std::sync::atomic::Ordering::Relaxed);
        CacheStats {
            entries: {
                // Evictions are applied in batches; count after them.
                self.entries.run_pending_tasks();
                self.entries.entry_count()
            },
            hits: count(0),
            misses: count(1),
            stale: count(2),
        }
    }

    /// Counts lookups in `metrics` from now on.
    pub fn set_metrics(&mut self, metrics: Metrics) {
        self.metrics = metrics;
    }

    /// Checks `key` with the source now, whatever its age (joining a refresh
    /// already in flight); true if the current version differs from the
    /// cached one. While the source is unavailable the cached answer stands.
    pub async fn revalidate<S: Source>(
        &self,
        key: &CredentialKey,
        source: &Arc<S>,
    ) -> Result<bool, StoreError> {
        let entry = self.entry(key);
        let version = || {
            entry
                .state
                .read()
                .expect("lock")
                .as_ref()
                .and_then(|c| c.version.clone())
        };
        let before = version();
        let (refresh, _) = self.refresh(key, &entry, source);
        self.wait(key, &entry, refresh).await?;
        Ok(before != version())
    }

    /// Records what was just written through this process. A fresh entry
    /// replaces the old one, so a refresh already in flight (which writes into
    /// the entry it started with) cannot overwrite this newer answer.
    pub fn insert(&self, key: &CredentialKey, version: String, cred: StoredCredential) {
        let cached = Cached {
            cred: Some(cred),
            version: Some(version),
            confirmed: (self.clock)(),
            retry_at: None,
        };
        self.entries
            .insert(key.clone(), Arc::new(Entry::new(Some(cached))));
    }

    /// Forgets `key`, so the next `get` asks the source.
    pub fn invalidate(&self, key: &CredentialKey) {
        self.entries.invalidate(key);
    }

    fn fresh(&self, entry: &Entry, now: Instant) -> Option<Option<StoredCredential>> {
        let state = entry.state.read().expect("lock");
        let cached = state.as_ref()?;
        let young = now.saturating_duration_since(cached.confirmed) < self.settings.ttl;
        let backing_off = cached.retry_at.is_some_and(|at| now < at);
        (young || backing_off).then(|| cached.cred.clone())
    }

    /// The cached answer if it may still be served stale (within
    /// `max_stale` of its confirmation).
    fn servable(&self, entry: &Entry) -> Option<Cached> {
        let now = (self.clock)();
        entry
            .state
            .read()
            .expect("lock")
            .clone()
            .filter(|c| now.saturating_duration_since(c.confirmed) <= self.settings.max_stale)
    }

    /// The refresh in flight for `entry`, started here if there is none; true
    /// if it was started by this call.
    fn refresh<S: Source>(
        &self,
        key: &CredentialKey,
        entry: &Arc<Entry>,
        source: &Arc<S>,
    ) -> (Refresh, bool) {
        let mut refreshing = entry.refreshing.lock().expect("lock");
        if let Some(running) = refreshing.as_ref() {
            return (running.clone(), false);
        }
        let (tx, done) = watch::channel(None);
        let refresh = Refresh {
            started: tokio::time::Instant::now(),
            done,
            overran: Arc::new(AtomicBool::new(false)),
        };
        *refreshing = Some(refresh.clone());
        drop(refreshing);
        let task = RefreshTask {
            key: key.clone(),
            entry: entry.clone(),
            clock: self.clock.clone(),
            max_stale: self.settings.max_stale,
            done: tx,
        };
        tokio::spawn(task.run(source.clone()));
        (refresh, true)
    }

    /// Waits for `refresh`: for its answer, or — while the cached entry may be
    /// served stale — until the refresh budget is spent. Returns the record
    /// and whether it is the stale one.
    async fn wait(
        &self,
        key: &CredentialKey,
        entry: &Entry,
        refresh: Refresh,
    ) -> Result<(Option<StoredCredential>, bool), StoreError> {
        let mut done = refresh.done.clone();
        let answered = async move { done.wait_for(Option::is_some).await.ok().and_then(|o| o.clone()) };
        let outcome = if self.servable(entry).is_some() {
            let budget_over = refresh.started + self.settings.refresh_budget;
            match tokio::time::timeout_at(budget_over, answered).await {
                Ok(outcome) => outcome,
                Err(_) => return self.overran(key, entry, &refresh),
            }
        } else {
            answered.await
        };
        match outcome {
            Some(Ok(cred)) => Ok((cred, false)),
            Some(Err(SourceError::Corrupt(what))) => Err(StoreError::Corrupt { context: what }),
            Some(Err(SourceError::Unavailable(cause))) => match self.servable(entry) {
                Some(old) => Ok((old.cred, true)),
                None => Err(StoreError::Unavailable(cause)),
            },
            // The task ended without an answer (the runtime is going away).
            None => match self.servable(entry) {
                Some(old) => Ok((old.cred, true)),
                None => Err(StoreError::Unavailable("the refresh was abandoned".into())),
            },
        }
    }

    /// The refresh outlasted the budget: serve the cached entry, and back off
    /// so the next callers are served it without waiting at all.
    fn overran(
        &self,
        key: &CredentialKey,
        entry: &Entry,
        refresh: &Refresh,
    ) -> Result<(Option<StoredCredential>, bool), StoreError> {
        let Some(old) = self.servable(entry) else {
            return Err(StoreError::Unavailable(
                "the secret store did not answer within the refresh budget".into(),
            ));
        };
        if !refresh.overran.swap(true, Ordering::Relaxed) {
            let now = (self.clock)();
            back_off(entry, now, self.settings.max_stale);
            tracing::warn!(
                credential = %key,
                budget_ms = self.settings.refresh_budget.as_millis() as u64,
                stale_for_ms = now.saturating_duration_since(old.confirmed).as_millis() as u64,
                "secret store slow; serving the cached credential while the refresh continues"
            );
        }
        Ok((old.cred, true))
    }

    /// `key`'s entry, made empty if it has none; concurrent first lookups
    /// get the same one (`get_with` runs one initialiser), so they share one
    /// refresh.
    fn entry(&self, key: &CredentialKey) -> Arc<Entry> {
        self.entries
            .get(key)
            .unwrap_or_else(|| self.entries.get_with(key.clone(), || Arc::new(Entry::new(None))))
    }
}

/// Serves `entry`'s cached answer without asking the source until a backoff
/// from `now` — never past `max_stale`.
fn back_off(entry: &Entry, now: Instant, max_stale: Duration) {
    if let Some(state) = entry.state.write().expect("lock").as_mut() {
        let until_too_stale = (state.confirmed + max_stale).saturating_duration_since(now);
        let at = now + FAILED_REFRESH_BACKOFF.min(until_too_stale);
        state.retry_at = Some(state.retry_at.map_or(at, |was| was.max(at)));
    }
}

/// One refresh of one key, run as its own task so that no caller's deadline
/// cancels it.
struct RefreshTask {
    key: CredentialKey,
    entry: Arc<Entry>,
    clock: Clock,
    max_stale: Duration,
    done: watch::Sender<Option<Outcome>>,
}

impl RefreshTask {
    async fn run<S: Source>(self, source: Arc<S>) {
        // However the task ends — answered, failed, or dropped unfinished
        // with the runtime — the key is left with no refresh in flight and,
        // unless the source answered, backing off.
        struct Finish<'a>(&'a RefreshTask, bool);
        impl Drop for Finish<'_> {
            fn drop(&mut self) {
                let Finish(task, answered) = *self;
                if !answered {
                    back_off(&task.entry, (task.clock)(), task.max_stale);
                }
                *task.entry.refreshing.lock().expect("lock") = None;
            }
        }
        let mut finish = Finish(&self, false);
        let now = (self.clock)();
        let cached = self.entry.state.read().expect("lock").clone();
        let outcome = ask(&self.key, cached.as_ref(), &*source).await;
        let outcome = match outcome {
            Ok((cred, version)) => {
                *self.entry.state.write().expect("lock") = Some(Cached {
                    cred: cred.clone(),
                    version,
                    confirmed: now,
                    retry_at: None,
                });
                finish.1 = true;
                Ok(cred)
            }
            Err(SourceError::Corrupt(what)) => {
                // What the source holds is unreadable: the record cached
                // before is no longer what it holds, so it is not served.
                *self.entry.state.write().expect("lock") = None;
                finish.1 = true;
                Err(SourceError::Corrupt(what))
            }
            Err(SourceError::Unavailable(cause)) => {
                match cached {
                    Some(c) => tracing::warn!(
                        credential = %self.key,
                        %cause,
                        stale_for_ms = (self.clock)().saturating_duration_since(c.confirmed).as_millis() as u64,
                        "secret store unavailable; the cached credential is served until max_stale"
                    ),
                    None => tracing::warn!(credential = %self.key, %cause, "secret store unavailable"),
                }
                Err(SourceError::Unavailable(cause))
            }
        };
        drop(finish);
        self.done.send_replace(Some(outcome));
    }
}

/// Asks the source for `key`'s current answer: a version check first when
/// something is cached, the value only if it changed.
async fn ask(
    key: &CredentialKey,
    cached: Option<&Cached>,
    source: &impl Source,
) -> Result<(Option<StoredCredential>, Option<String>), SourceError> {
    let fetch = || async {
        Ok(match source.fetch(key).await? {
            Some((v, cred)) => (Some(cred), Some(v)),
            None => (None, None),
        })
    };
    match cached {
        Some(old) => match source.version(key).await? {
            v if v == old.version => Ok((old.cred.clone(), v)),
            None => Ok((None, None)),
            Some(_) => fetch().await,
        },
        None => fetch().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;
    use crate::fingerprint::Fingerprint;
    use std::sync::atomic::AtomicUsize;

    /// A source with a version and switches to make it fail or hang (until
    /// `unhang`, then fail, as a timed-out request does); counts calls.
    #[derive(Default)]
    struct Fake {
        version: Mutex<Option<String>>,
        down: std::sync::atomic::AtomicBool,
        hang: std::sync::atomic::AtomicBool,
        unhang: tokio::sync::Notify,
        fetches: AtomicUsize,
        checks: AtomicUsize,
    }

    fn record(v: &str) -> StoredCredential {
        StoredCredential {
            envelope: Envelope {
                v: 1,
                kid: "k".into(),
                nonce: v.into(),
                ct: v.into(),
            },
            fingerprint: serde_json::from_str(&format!("\"{v}\""))
                .map(|f: Fingerprint| f)
                .unwrap(),
            last4: String::new(),
            created_ms: 0,
            updated_ms: 0,
        }
    }

    impl Source for Fake {
        async fn version(&self, _key: &CredentialKey) -> Result<Option<String>, SourceError> {
            self.checks.fetch_add(1, Ordering::SeqCst);
            if self.hang.load(Ordering::SeqCst) {
                self.unhang.notified().await;
                return Err(SourceError::Unavailable("timed out".into()));
            }
            if self.down.load(Ordering::SeqCst) {
                return Err(SourceError::Unavailable("down".into()));
            }
            Ok(self.version.lock().unwrap().clone())
        }
        async fn fetch(
            &self,
            _key: &CredentialKey,
        ) -> Result<Option<(String, StoredCredential)>, SourceError> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            if self.down.load(Ordering::SeqCst) {
                return Err(SourceError::Unavailable("down".into()));
            }
            Ok(self
                .version
                .lock()
                .unwrap()
                .clone()
                .map(|v| (v.clone(), record(&v))))
        }
    }

    struct ManualClock(Mutex<Instant>);
    impl ManualClock {
        fn advance(&self, d: Duration) {
            *self.0.lock().unwrap() += d;
        }
    }

    fn setup() -> (Arc<Cache>, Arc<ManualClock>, Arc<Fake>) {
        let clock = Arc::new(ManualClock(Mutex::new(Instant::now())));
        let c = clock.clone();
        let settings = CacheSettings {
            ttl: Duration::from_secs(300),
            max_stale: Duration::from_secs(3600),
            refresh_budget: Duration::from_secs(1),
            capacity: 2,
        };
        let cache = Arc::new(Cache::with_clock(
            settings,
            Arc::new(move || *c.0.lock().unwrap()),
        ));
        let fake = Arc::new(Fake::default());
        *fake.version.lock().unwrap() = Some("v1".into());
        (cache, clock, fake)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_cold_gets_fetch_once() {
        let (cache, _, fake) = setup();
        let key = CredentialKey::new("t", "v");
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let (cache, fake, key) = (cache.clone(), fake.clone(), key.clone());
                tokio::spawn(async move { cache.get(&key, &fake).await })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap().unwrap().is_some());
        }
        assert_eq!(fake.fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn expiry_checks_the_version_before_fetching() {
        let (cache, clock, fake) = setup();
        let key = CredentialKey::new("t", "v");
        cache.get(&key, &fake).await.unwrap();
        clock.advance(Duration::from_secs(301));
        cache.get(&key, &fake).await.unwrap();
        assert_eq!(
            (
                fake.fetches.load(Ordering::SeqCst),
                fake.checks.load(Ordering::SeqCst)
            ),
            (1, 1)
        );
        // A new version outside: fetched at the next expiry.
        *fake.version.lock().unwrap() = Some("v2".into());
        clock.advance(Duration::from_secs(301));
        let got = cache.get(&key, &fake).await.unwrap().unwrap();
        assert_eq!(got.envelope.ct, "v2");
        assert_eq!(fake.fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn stale_if_error_then_unavailable() {
        let (cache, clock, fake) = setup();
        let key = CredentialKey::new("t", "v");
        cache.get(&key, &fake).await.unwrap();
        fake.down.store(true, Ordering::SeqCst);
        clock.advance(Duration::from_secs(1800));
        assert!(cache.get(&key, &fake).await.unwrap().is_some(), "served stale");
        clock.advance(Duration::from_secs(1801));
        assert!(matches!(
            cache.get(&key, &fake).await,
            Err(StoreError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn revalidate_sees_an_outside_change_and_lru_bounds_size() {
        let (cache, _, fake) = setup();
        let key = CredentialKey::new("t", "v");
        cache.get(&key, &fake).await.unwrap();
        assert!(!cache.revalidate(&key, &fake).await.unwrap());
        *fake.version.lock().unwrap() = Some("v2".into());
        assert!(cache.revalidate(&key, &fake).await.unwrap());
        for t in ["a", "b", "c"] {
            cache.get(&CredentialKey::new(t, "v"), &fake).await.unwrap();
        }
        assert_eq!(cache.stats().entries, 2);
    }

    /// The refresh in flight for `key`, to await its end.
    fn in_flight(cache: &Cache, key: &CredentialKey) -> Refresh {
        let entry = cache.entry(key);
        let refresh = entry.refreshing.lock().unwrap().clone();
        refresh.expect("a refresh in flight")
    }

    async fn ended(refresh: Refresh) -> Option<Outcome> {
        let mut done = refresh.done;
        done.wait_for(Option::is_some).await.ok().and_then(|o| o.clone())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_source_costs_the_budget_once_and_one_request() {
        let (cache, clock, fake) = setup();
        let key = CredentialKey::new("t", "v");
        cache.get(&key, &fake).await.unwrap();
        clock.advance(Duration::from_secs(301));
        fake.hang.store(true, Ordering::SeqCst);
        let began = tokio::time::Instant::now();

        // A caller whose deadline is shorter than the budget (1 s) gives up;
        // the refresh it started goes on.
        let gave_up = tokio::time::timeout(Duration::from_millis(100), cache.get(&key, &fake)).await;
        assert!(gave_up.is_err());
        let refresh = in_flight(&cache, &key);
        // The next caller waits out the rest of the budget, not the hang.
        let got = cache.get(&key, &fake).await.unwrap();
        assert_eq!(got.unwrap().envelope.ct, "v1", "served stale");
        let waited = began.elapsed();
        assert!(
            (Duration::from_millis(950)..Duration::from_secs(5)).contains(&waited),
            "{waited:?}"
        );
        // Then the backoff: served at once without asking.
        let started = tokio::time::Instant::now();
        cache.get(&key, &fake).await.unwrap().unwrap();
        assert!(started.elapsed() < Duration::from_millis(500));
        // Past the backoff, the hung refresh (already over budget) is joined:
        // no wait, no second request.
        clock.advance(Duration::from_secs(2));
        let started = tokio::time::Instant::now();
        cache.get(&key, &fake).await.unwrap().unwrap();
        assert!(started.elapsed() < Duration::from_millis(500));
        assert_eq!(fake.checks.load(Ordering::SeqCst), 1, "single-flight");

        // The request finally fails: a backoff from then on.
        fake.hang.store(false, Ordering::SeqCst);
        fake.down.store(true, Ordering::SeqCst);
        fake.unhang.notify_one();
        assert!(matches!(
            ended(refresh).await,
            Some(Err(SourceError::Unavailable(_)))
        ));
        clock.advance(Duration::from_millis(500));
        cache.get(&key, &fake).await.unwrap().unwrap();
        assert_eq!(fake.checks.load(Ordering::SeqCst), 1, "backing off");
        clock.advance(Duration::from_millis(600));
        fake.down.store(false, Ordering::SeqCst);
        cache.get(&key, &fake).await.unwrap().unwrap();
        assert_eq!(
            fake.checks.load(Ordering::SeqCst),
            2,
            "asked again after the backoff"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_source_with_nothing_servable_is_waited_for() {
        let (cache, clock, fake) = setup();
        let key = CredentialKey::new("t", "v");
        cache.get(&key, &fake).await.unwrap();
        clock.advance(Duration::from_secs(3601));
        fake.hang.store(true, Ordering::SeqCst);
        let waited = tokio::time::timeout(Duration::from_millis(1500), cache.get(&key, &fake)).await;
        assert!(waited.is_err(), "too stale to serve: no budget applies");
        let refresh = in_flight(&cache, &key);
        fake.unhang.notify_one();
        assert!(matches!(
            ended(refresh).await,
            Some(Err(SourceError::Unavailable(_)))
        ));
        fake.hang.store(false, Ordering::SeqCst);
        fake.down.store(true, Ordering::SeqCst);
        assert!(matches!(
            cache.get(&key, &fake).await,
            Err(StoreError::Unavailable(_))
        ));
    }
}
