//! Every metric Valet keeps, in one place, with bounded labels.
//!
//! Instruments are OpenTelemetry's; one meter provider per [`Metrics`]
//! feeds two readers: a Prometheus registry rendered by [`Metrics::render`]
//! for `GET /metrics`, and, when an OTLP endpoint is known, a periodic OTLP
//! push. Prometheus names follow from the instrument names: dots become
//! underscores, counters gain `_total`, seconds histograms `_seconds`.
//!
//! | metric | labels |
//! |---|---|
//! | `valet_calls_total` | tenant, vendor, operation, outcome (reason code or `OK`), status_class |
//! | `valet_call_duration_seconds` | vendor, operation, outcome |
//! | `valet_calls_in_flight` | |
//! | `valet_vendor_request_duration_seconds` | vendor, status (HTTP status or `error`) |
//! | `valet_vendor_retries_total` | vendor |
//! | `valet_vendor_retry_budget_exhausted_total` | vendor |
//! | `valet_vendor_circuit_state` | vendor (0 closed, 1 half-open, 2 open) |
//! | `valet_quota_refusals_total` | tenant, vendor, policy |
//! | `valet_quota_shadow_refusals_total` | tenant, vendor, policy |
//! | `valet_quota_fallback_active` | |
//! | `valet_quota_backend_unavailable_total` | vendor |
//! | `valet_quota_policy_store_lost_total` | |
//! | `valet_log_lines_dropped_total` | |
//! | `valet_idempotency_replays_total` | tenant, vendor |
//! | `valet_credential_cache_lookups_total` | result (`hit`, `miss`, `stale`) |
//! | `valet_secrets_manager_request_duration_seconds` | operation, outcome (`ok`, `error`) |
//! | `valet_audit_write_failures_total` | |
//! | `valet_audit_ship_behind`, `valet_audit_ship_up`, `valet_audit_ship_failures` | sink (`redis`, `otlp`) |
//! | `valet_oauth_token_requests_total` | vendor, outcome (`issued`, `reauth_required`, `refused`, `busy`, `unavailable`) |
//! | `valet_oauth_refresh_tokens_unstored` | |
//! | `valet_ready` | |
//! | `valet_secrets_manager_degraded` | |
//!
//! Label values are Valet's own words or names from its config, never
//! caller input that was not checked: a call refused before its tenant and
//! vendor were known is counted under `-`. Tenant labels can be switched off
//! or capped ([`crate::TenantLabels`]).

use crate::{Settings, TelemetryError, TenantLabels};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _, UpDownCounter};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Latency buckets, in seconds: 1 ms to 30 s.
const LATENCY_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
];

/// The label for a value Valet does not know (yet).
const UNKNOWN: &str = "-";

/// The tenant label once the cap is reached.
const OTHER_TENANT: &str = "_other";

/// How a credential lease was served by the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheLookup {
    /// A fresh cached record.
    Hit,
    /// Fetched (or version-checked) from the store.
    Miss,
    /// The store was unreachable; a cached record within `max_stale` served.
    Stale,
}

impl CacheLookup {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheLookup::Hit => "hit",
            CacheLookup::Miss => "miss",
            CacheLookup::Stale => "stale",
        }
    }
}

/// What a finished call is counted under.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallLabels<'a> {
    /// The tenant, once authorized.
    pub tenant: Option<&'a str>,
    /// The vendor, once validated.
    pub vendor: Option<&'a str>,
    /// `read` or `write`, once validated.
    pub operation: Option<&'a str>,
}

/// Valet's metrics. Cheap to clone; [`Metrics::default`] records nothing.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    provider: SdkMeterProvider,
    meter: Meter,
    /// What `/metrics` reads (none for [`Metrics::default`]).
    pull: Option<crate::exposition::PullReader>,
    tenants: Tenants,
    calls: Counter<u64>,
    call_duration: Histogram<f64>,
    in_flight: UpDownCounter<i64>,
    vendor_duration: Histogram<f64>,
    vendor_retries: Counter<u64>,
    retry_budget_exhausted: Counter<u64>,
    quota_refusals: Counter<u64>,
    quota_shadow: Counter<u64>,
    quota_backend_unavailable: Counter<u64>,
    replays: Counter<u64>,
    cache: Counter<u64>,
    secrets_manager: Histogram<f64>,
    audit_failures: Counter<u64>,
    oauth_token_requests: Counter<u64>,
    oauth_unstored: UpDownCounter<i64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("prometheus", &self.inner.pull.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::build(SdkMeterProvider::builder().build(), None, TenantLabels::Off)
    }
}

impl Metrics {
    /// Metrics rendered for `/metrics`, and pushed over OTLP when
    /// `settings` (or the environment) names an endpoint.
    pub fn new(settings: &Settings) -> Result<Self, TelemetryError> {
        let pull = crate::exposition::PullReader::default();
        let mut builder = SdkMeterProvider::builder()
            .with_resource(crate::subscriber::resource(settings))
            .with_reader(pull.clone());
        if settings.exports_metrics() {
            let exporter = opentelemetry_otlp::MetricExporter::builder().with_tonic();
            let exporter = crate::subscriber::otlp_endpoint(exporter, settings)
                .build()
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
            let reader = PeriodicReader::builder(crate::export::Reported::new(exporter, "metrics"));
            let reader = match settings.metrics_interval() {
                Some(interval) => reader.with_interval(interval),
                None => reader, // OTEL_METRIC_EXPORT_INTERVAL, else 60 s
            };
            builder = builder.with_reader(reader.build());
        }
        Ok(Self::build(builder.build(), Some(pull), settings.tenant_labels()))
    }

    fn build(
        provider: SdkMeterProvider,
        pull: Option<crate::exposition::PullReader>,
        tenants: TenantLabels,
    ) -> Self {
        let meter = provider.meter("valet");
        let counter = |name: &'static str, description: &'static str| {
            meter.u64_counter(name).with_description(description).build()
        };
        let seconds = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_description(description)
                .with_unit("s")
                .with_boundaries(LATENCY_BUCKETS.to_vec())
                .build()
        };
        let inner = Inner {
            calls: counter(
                "valet.calls",
                "Gateway calls by tenant, vendor, operation, outcome and vendor status class",
            ),
            call_duration: seconds("valet.call.duration", "Whole-call latency, as the caller saw it"),
            in_flight: meter
                .i64_up_down_counter("valet.calls.in_flight")
                .with_description("Gateway calls being handled now")
                .build(),
            vendor_duration: seconds("valet.vendor.request.duration", "Each HTTP attempt to a vendor"),
            vendor_retries: counter("valet.vendor.retries", "Vendor attempts that were retries"),
            retry_budget_exhausted: counter(
                "valet.vendor.retry_budget_exhausted",
                "Retries not made because the vendor's retry budget was spent",
            ),
            quota_refusals: counter(
                "valet.quota.refusals",
                "Calls refused by an enforced quota policy or vendor push-back",
            ),
            quota_shadow: counter(
                "valet.quota.shadow_refusals",
                "Calls a shadow policy would have refused (admitted)",
            ),
            quota_backend_unavailable: counter(
                "valet.quota.backend_unavailable",
                "Calls refused because the shared quota backend could not answer (on_backend_error = deny)",
            ),
            replays: counter(
                "valet.idempotency.replays",
                "WRITE calls answered from a stored result",
            ),
            cache: counter(
                "valet.credential.cache.lookups",
                "Credential leases by how the cache served them",
            ),
            secrets_manager: seconds(
                "valet.secrets_manager.request.duration",
                "Secrets Manager requests (SDK retries included)",
            ),
            audit_failures: counter(
                "valet.audit.write_failures",
                "Audit entries that could not be made durable",
            ),
            oauth_token_requests: counter(
                "valet.oauth.token_requests",
                "Requests to OAuth vendors' token endpoints, by outcome",
            ),
            oauth_unstored: meter
                .i64_up_down_counter("valet.oauth.refresh_tokens_unstored")
                .with_description("Rotated OAuth refresh tokens held in memory because the credential store could not take them")
                .build(),
            tenants: Tenants::new(tenants),
            pull,
            meter,
            provider,
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Labels by tenant from now on as `bound` says (a config reload); the
    /// tenants already labelled keep their place under a cap.
    pub fn set_tenant_labels(&self, bound: TenantLabels) {
        self.inner.tenants.set(bound);
    }

    /// Counts a call as in flight until the returned guard drops.
    pub fn call_started(&self) -> InFlight {
        self.inner.in_flight.add(1, &[]);
        InFlight {
            metrics: self.clone(),
        }
    }

    /// Counts a finished call. `outcome` is `OK` or its reason code.
    pub fn call_finished(
        &self,
        labels: CallLabels<'_>,
        outcome: &'static str,
        vendor_status: Option<u16>,
        elapsed: Duration,
    ) {
        let vendor = labels.vendor.unwrap_or(UNKNOWN);
        let operation = labels.operation.unwrap_or(UNKNOWN);
        let mut attrs = vec![
            KeyValue::new("vendor", vendor.to_owned()),
            KeyValue::new("operation", operation.to_owned()),
            KeyValue::new("outcome", outcome),
        ];
        self.inner.call_duration.record(elapsed.as_secs_f64(), &attrs);
        attrs.push(KeyValue::new("status_class", status_class(vendor_status)));
        attrs.extend(self.tenant(labels.tenant));
        self.inner.calls.add(1, &attrs);
    }

    /// Records one HTTP attempt to `vendor`: its status, or `None` when no
    /// response came.
    pub fn vendor_attempt(&self, vendor: &str, status: Option<u16>, elapsed: Duration) {
        let status = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
        self.inner.vendor_duration.record(
            elapsed.as_secs_f64(),
            &[
                KeyValue::new("vendor", vendor.to_owned()),
                KeyValue::new("status", status),
            ],
        );
    }

    /// Counts a retry of a vendor call.
    pub fn vendor_retry(&self, vendor: &str) {
        self.inner
            .vendor_retries
            .add(1, &[KeyValue::new("vendor", vendor.to_owned())]);
    }

    /// Counts a retry the budget refused.
    pub fn vendor_retry_budget_exhausted(&self, vendor: &str) {
        self.inner
            .retry_budget_exhausted
            .add(1, &[KeyValue::new("vendor", vendor.to_owned())]);
    }

    /// A gauge per vendor, read when metrics are collected.
    pub fn vendor_gauge(
        &self,
        name: &'static str,
        description: &'static str,
        read: impl Fn() -> Vec<(String, i64)> + Send + Sync + 'static,
    ) {
        self.labelled_gauge(name, description, "vendor", read);
    }

    /// A gauge read when metrics are collected, one series per value of
    /// the `label` (from config: vendor or sink names, never caller input).
    pub fn labelled_gauge(
        &self,
        name: &'static str,
        description: &'static str,
        label: &'static str,
        read: impl Fn() -> Vec<(String, i64)> + Send + Sync + 'static,
    ) {
        // The SDK keeps the callback for the provider's life.
        let _gauge = self
            .inner
            .meter
            .i64_observable_gauge(name)
            .with_description(description)
            .with_callback(move |observer| {
                for (value_of, value) in read() {
                    observer.observe(value, &[KeyValue::new(label, value_of)]);
                }
            })
            .build();
    }

    /// Counts a quota refusal by `policy` (or `vendor-pushback`).
    pub fn quota_refused(&self, tenant: &str, vendor: &str, policy: &str) {
        self.inner
            .quota_refusals
            .add(1, &self.quota_attrs(tenant, vendor, policy));
    }

    /// Counts a call a shadow policy would have refused.
    pub fn quota_shadow_refused(&self, tenant: &str, vendor: &str, policy: &str) {
        self.inner
            .quota_shadow
            .add(1, &self.quota_attrs(tenant, vendor, policy));
    }

    /// Counts a call refused because the shared quota backend could not
    /// answer and the fallback is `deny` — apart from policy refusals, so a
    /// Redis outage is not mistaken for a tenant over its quota.
    pub fn quota_backend_unavailable(&self, vendor: &str) {
        self.inner
            .quota_backend_unavailable
            .add(1, &[KeyValue::new("vendor", vendor.to_owned())]);
    }

    /// Counts an idempotent replay.
    pub fn replayed(&self, tenant: &str, vendor: &str) {
        let mut attrs = vec![KeyValue::new("vendor", vendor.to_owned())];
        attrs.extend(self.tenant(Some(tenant)));
        self.inner.replays.add(1, &attrs);
    }

    /// Counts a credential lease by how the cache served it.
    pub fn cache_lookup(&self, lookup: CacheLookup) {
        self.inner
            .cache
            .add(1, &[KeyValue::new("result", lookup.as_str())]);
    }

    /// Records one Secrets Manager operation.
    pub fn secrets_manager_request(&self, operation: &str, ok: bool, elapsed: Duration) {
        self.inner.secrets_manager.record(
            elapsed.as_secs_f64(),
            &[
                KeyValue::new("operation", operation.to_owned()),
                KeyValue::new("outcome", if ok { "ok" } else { "error" }),
            ],
        );
    }

    /// Counts one token endpoint request: `issued`, `reauth_required`,
    /// `refused`, `busy` or `unavailable`.
    pub fn oauth_token_request(&self, vendor: &str, outcome: &'static str) {
        self.inner.oauth_token_requests.add(
            1,
            &[
                KeyValue::new("vendor", vendor.to_owned()),
                KeyValue::new("outcome", outcome),
            ],
        );
    }

    /// A rotated refresh token is now held unstored (`1`) or was stored
    /// after all (`-1`).
    pub fn oauth_refresh_token_unstored(&self, delta: i64) {
        self.inner.oauth_unstored.add(delta, &[]);
    }

    /// Counts an audit entry that could not be written.
    pub fn audit_write_failed(&self) {
        self.inner.audit_failures.add(1, &[]);
    }

    /// A gauge read when metrics are collected, e.g. readiness (1 or 0).
    pub fn gauge(
        &self,
        name: &'static str,
        description: &'static str,
        read: impl Fn() -> i64 + Send + Sync + 'static,
    ) {
        // The SDK keeps the callback for the provider's life.
        let _gauge = self
            .inner
            .meter
            .i64_observable_gauge(name)
            .with_description(description)
            .with_callback(move |observer| observer.observe(read(), &[]))
            .build();
    }

    /// `valet_build_info{version, revision} 1`: which build a replica runs,
    /// for dashboards and for spotting a fleet mid-rollout.
    pub fn build_info(&self, version: &'static str, revision: &'static str) {
        let labels = [
            KeyValue::new("version", version),
            KeyValue::new("revision", revision),
        ];
        // The SDK keeps the callback for the provider's life.
        let _gauge = self
            .inner
            .meter
            .i64_observable_gauge("valet.build_info")
            .with_description("1, labelled with the running build's version and git revision")
            .with_callback(move |observer| observer.observe(1, &labels))
            .build();
    }

    /// A counter read when metrics are collected, from a total kept
    /// elsewhere (e.g. the quota engine's count of policy store losses).
    pub fn counter_fn(
        &self,
        name: &'static str,
        description: &'static str,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        // The SDK keeps the callback for the provider's life.
        let _counter = self
            .inner
            .meter
            .u64_observable_counter(name)
            .with_description(description)
            .with_callback(move |observer| observer.observe(read(), &[]))
            .build();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.inner
            .pull
            .as_ref()
            .map(crate::exposition::render)
            .unwrap_or_default()
    }

    /// Pushes the last OTLP export and stops the readers. Blocks while the
    /// collector takes its time: see [`crate::subscriber::flush`].
    pub fn shutdown(&self) -> Result<(), String> {
        self.inner.provider.shutdown().map_err(|e| e.to_string())
    }

    fn quota_attrs(&self, tenant: &str, vendor: &str, policy: &str) -> Vec<KeyValue> {
        let mut attrs = vec![
            KeyValue::new("vendor", vendor.to_owned()),
            KeyValue::new("policy", policy.to_owned()),
        ];
        attrs.extend(self.tenant(Some(tenant)));
        attrs
    }

    fn tenant(&self, tenant: Option<&str>) -> Option<KeyValue> {
        self.inner
            .tenants
            .label(tenant.unwrap_or(UNKNOWN))
            .map(|t| KeyValue::new("tenant", t))
    }
}

/// Decrements the in-flight gauge when dropped, however the call ends.
#[derive(Debug)]
pub struct InFlight {
    metrics: Metrics,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.metrics.inner.in_flight.add(-1, &[]);
    }
}

fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(100..=199) => "1xx",
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        Some(_) | None => "none",
    }
}

/// The set of tenant label values handed out so far.
struct Tenants {
    /// The bound: 0 no label, n + 1 at most n values (replaced on reload).
    bound: std::sync::atomic::AtomicU64,
    seen: RwLock<HashSet<String>>,
}

impl Tenants {
    fn new(bound: TenantLabels) -> Self {
        let tenants = Self {
            bound: Default::default(),
            seen: RwLock::new(HashSet::new()),
        };
        tenants.set(bound);
        tenants
    }

    fn set(&self, bound: TenantLabels) {
        let encoded = match bound {
            TenantLabels::Off => 0,
            TenantLabels::Capped(max) => max as u64 + 1,
        };
        self.bound.store(encoded, std::sync::atomic::Ordering::Relaxed);
    }

    fn label(&self, tenant: &str) -> Option<String> {
        let max = match self.bound.load(std::sync::atomic::Ordering::Relaxed) {
            0 => return None,
            n => (n - 1) as usize,
        };
        // "No tenant yet" is not a tenant: it never takes a place under the cap.
        if tenant == UNKNOWN {
            return Some(UNKNOWN.to_owned());
        }
        if self.seen.read().expect("lock").contains(tenant) {
            return Some(tenant.to_owned());
        }
        let mut seen = self.seen.write().expect("lock");
        if seen.len() < max {
            seen.insert(tenant.to_owned());
            return Some(tenant.to_owned());
        }
        Some(
            if seen.contains(tenant) {
                tenant
            } else {
                OTHER_TENANT
            }
            .to_owned(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn renders_prometheus_names_and_caps_tenants() {
        let settings = Settings {
            max_tenant_labels: 2,
            ..Settings::default()
        };
        let metrics = Metrics::new(&settings).unwrap();
        for tenant in ["acme", "globex", "initech", "umbrella", "acme"] {
            let labels = CallLabels {
                tenant: Some(tenant),
                vendor: Some("github"),
                operation: Some("READ"),
            };
            metrics.call_finished(labels, "OK", Some(200), Duration::from_millis(3));
        }
        metrics.vendor_attempt("github", Some(429), Duration::from_millis(2));
        metrics.cache_lookup(CacheLookup::Stale);
        let text = metrics.render();
        let count = |tenant: &str| {
            let prefix = "valet_calls_total{";
            text.lines()
                .filter(|l| l.starts_with(prefix) && l.contains(&format!("tenant=\"{tenant}\"")))
                .map(|l| l.rsplit(' ').next().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(count("acme"), ["2"], "{text}");
        assert_eq!(count("globex"), ["1"]);
        assert_eq!(
            count("_other"),
            ["2"],
            "initech and umbrella share the overflow label"
        );
        assert!(
            line(&text, "valet_vendor_request_duration_seconds_count{")
                .unwrap()
                .contains("status=\"429\"")
        );
        assert!(
            line(&text, "valet_credential_cache_lookups_total{result=\"stale\"} 1").is_some(),
            "{text}"
        );
        assert!(line(&text, "valet_call_duration_seconds_bucket{").is_some());
    }

    #[test]
    fn no_tenant_is_never_capped() {
        let settings = Settings {
            max_tenant_labels: 1,
            ..Settings::default()
        };
        let metrics = Metrics::new(&settings).unwrap();
        for tenant in [None, Some("acme"), None] {
            let labels = CallLabels {
                tenant,
                vendor: None,
                operation: None,
            };
            metrics.call_finished(labels, "OK", None, Duration::from_millis(1));
        }
        let text = metrics.render();
        let calls = |tenant: &str| {
            text.lines()
                .filter(|l| {
                    l.starts_with("valet_calls_total{") && l.contains(&format!("tenant=\"{tenant}\""))
                })
                .count()
        };
        assert_eq!((calls("-"), calls("acme"), calls("_other")), (1, 1, 0), "{text}");
    }

    #[test]
    fn tenant_labels_can_be_switched_off() {
        let settings = Settings {
            tenant_label: false,
            ..Settings::default()
        };
        let metrics = Metrics::new(&settings).unwrap();
        metrics.quota_refused("acme", "github", "acme/github/*");
        let text = metrics.render();
        let refused = line(&text, "valet_quota_refusals_total{").unwrap();
        assert!(!refused.contains("tenant="), "{refused}");
        assert!(refused.ends_with(" 1"), "{refused}");
    }

    /// Every metric the Grafana dashboard in `deploy/` queries exists.
    #[test]
    fn the_dashboard_queries_only_metrics_that_exist() {
        let metrics = Metrics::new(&Settings::default()).unwrap();
        let labels = CallLabels {
            tenant: Some("acme"),
            vendor: Some("github"),
            operation: Some("read"),
        };
        metrics.call_finished(labels, "OK", Some(200), Duration::from_millis(1));
        drop(metrics.call_started());
        metrics.vendor_attempt("github", Some(200), Duration::from_millis(1));
        metrics.vendor_retry("github");
        metrics.vendor_retry_budget_exhausted("github");
        metrics.quota_refused("acme", "github", "p");
        metrics.quota_shadow_refused("acme", "github", "p");
        metrics.quota_backend_unavailable("github");
        metrics.replayed("acme", "github");
        metrics.cache_lookup(CacheLookup::Hit);
        metrics.secrets_manager_request("GetSecretValue", true, Duration::from_millis(1));
        metrics.audit_write_failed();
        metrics.gauge("valet.ready", "ready", || 1);
        metrics.gauge("valet.quota.fallback_active", "fallback", || 0);
        metrics.counter_fn("valet.quota.policy_store_lost", "lost", || 0);
        metrics.vendor_gauge("valet.vendor.circuit_state", "breaker", || {
            vec![("github".into(), 0)]
        });
        let rendered = metrics.render();

        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/grafana/valet-dashboard.json"
        );
        let dashboard = std::fs::read_to_string(path).unwrap();
        let mut queried: Vec<&str> = dashboard
            .match_indices("valet_")
            .map(|(i, _)| {
                let rest = &dashboard[i..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .filter(|name| name.len() > "valet_".len())
            .collect();
        queried.sort_unstable();
        queried.dedup();
        assert!(queried.len() >= 10, "{queried:?}");
        for name in queried {
            assert!(
                // The series, or a histogram's _bucket/_sum/_count.
                rendered.lines().any(|l| l.strip_prefix(name).is_some_and(|rest| {
                    let rest = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|suffix| rest.strip_prefix(suffix))
                        .unwrap_or(rest);
                    rest.starts_with(['{', ' '])
                })),
                "the dashboard queries {name}, which Valet does not export:\n{rendered}"
            );
        }
    }
}
