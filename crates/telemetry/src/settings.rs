//! The `[telemetry]` table of the config file.
//!
//! Everything is optional. What the table leaves out, the standard
//! OpenTelemetry environment variables supply: `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (and its `_TRACES_`/`_METRICS_` forms, `_HEADERS`, `_TIMEOUT`),
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`(`_ARG`)
//! and `OTEL_SDK_DISABLED`. A value in the file wins over the environment.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Telemetry settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`. Unset: the
    /// `OTEL_EXPORTER_OTLP_*ENDPOINT` variables; neither: nothing exported.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `service.name` (default `OTEL_SERVICE_NAME`, else `valet`).
    #[serde(default)]
    pub service_name: Option<String>,
    /// Share of new traces sampled, 0.0–1.0. A caller's sampled flag is
    /// followed either way (parent-based). Unset: `OTEL_TRACES_SAMPLER`,
    /// else every trace.
    #[serde(default)]
    pub sampling_ratio: Option<f64>,
    /// Extra resource attributes, e.g. `{ "deployment.environment" = "prod" }`.
    #[serde(default)]
    pub resource_attributes: BTreeMap<String, String>,
    /// Also export metrics over OTLP when an endpoint is known.
    #[serde(default = "yes")]
    pub otlp_metrics: bool,
    /// How often metrics are pushed over OTLP (default
    /// `OTEL_METRIC_EXPORT_INTERVAL`, else 60 s).
    #[serde(default)]
    pub metrics_export_interval_ms: Option<u64>,
    /// Label metrics with the tenant. Off: no `tenant` label at all.
    #[serde(default = "yes")]
    pub tenant_label: bool,
    /// Distinct tenant label values kept; later tenants are counted under
    /// `_other`, so a large fleet of tenants cannot blow up the series count.
    #[serde(default = "default_max_tenant_labels")]
    pub max_tenant_labels: usize,
    /// How log lines are written (`--log-format` overrides it).
    #[serde(default)]
    pub log_format: LogFormat,
}

/// How log lines are written on stdout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Text when stdout is a terminal, else JSON.
    #[default]
    Auto,
    /// One JSON object a line, fields at the top level (`timestamp`,
    /// `level`, `target`, `message`, `request_id`, …), as log shippers
    /// expect.
    Json,
    /// One human-readable line per event.
    Text,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "json" => Ok(Self::Json),
            "text" => Ok(Self::Text),
            other => Err(format!("'{other}' is not a log format: auto, json or text")),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: None,
            sampling_ratio: None,
            resource_attributes: BTreeMap::new(),
            otlp_metrics: true,
            metrics_export_interval_ms: None,
            tenant_label: true,
            max_tenant_labels: default_max_tenant_labels(),
            log_format: LogFormat::default(),
        }
    }
}

fn yes() -> bool {
    true
}

fn default_max_tenant_labels() -> usize {
    1000
}

/// How tenant labels are bounded, from [`Settings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantLabels {
    /// No tenant label.
    Off,
    /// At most this many distinct values, then `_other`.
    Capped(usize),
}

impl Settings {
    /// Checks values the types cannot: the ratio's range and the endpoint's
    /// form. The message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(r) = self.sampling_ratio
            && !(0.0..=1.0).contains(&r)
        {
            return Err(format!(
                "telemetry.sampling_ratio must be between 0.0 and 1.0, not {r}"
            ));
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            let uri: http::Uri = endpoint
                .parse()
                .map_err(|_| format!("telemetry.otlp_endpoint '{endpoint}' is not a URL"))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(format!(
                    "telemetry.otlp_endpoint '{endpoint}' must be http://host:port or https://host:port"
                ));
            }
        }
        if self.metrics_export_interval_ms == Some(0) {
            return Err("telemetry.metrics_export_interval_ms must be above 0".into());
        }
        Ok(())
    }

    /// Whether traces are exported: an endpoint in the file or the
    /// environment, and the SDK not disabled.
    pub fn exports_traces(&self) -> bool {
        self.exports("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    }

    /// Whether metrics are pushed over OTLP as well as served on `/metrics`.
    pub fn exports_metrics(&self) -> bool {
        self.otlp_metrics && self.exports("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
    }

    fn exports(&self, signal_var: &str) -> bool {
        if env_true("OTEL_SDK_DISABLED") {
            return false;
        }
        self.otlp_endpoint.is_some() || env_set(signal_var) || env_set("OTEL_EXPORTER_OTLP_ENDPOINT")
    }

    /// `service.name`: the file, else `OTEL_SERVICE_NAME`, else `valet`.
    // OTEL_* variables are OpenTelemetry's standard settings, beside the file's.
    #[allow(clippy::disallowed_methods)]
    pub fn service_name(&self) -> String {
        self.service_name
            .clone()
            .or_else(|| std::env::var("OTEL_SERVICE_NAME").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "valet".to_owned())
    }

    /// The OTLP metrics push interval, if the file sets one.
    pub fn metrics_interval(&self) -> Option<Duration> {
        self.metrics_export_interval_ms.map(Duration::from_millis)
    }

    /// The tenant label bound.
    pub fn tenant_labels(&self) -> TenantLabels {
        if self.tenant_label {
            TenantLabels::Capped(self.max_tenant_labels)
        } else {
            TenantLabels::Off
        }
    }
}

// OTEL_* variables are OpenTelemetry's standard settings, beside the file's.
#[allow(clippy::disallowed_methods)]
fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

// OTEL_* variables are OpenTelemetry's standard settings, beside the file's.
#[allow(clippy::disallowed_methods)]
fn env_true(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_key() {
        let bad_ratio = Settings {
            sampling_ratio: Some(1.5),
            ..Settings::default()
        };
        assert!(bad_ratio.validate().unwrap_err().contains("sampling_ratio"));
        for endpoint in ["not a url", "ftp://collector:4317", "/v1/traces"] {
            let bad = Settings {
                otlp_endpoint: Some(endpoint.into()),
                ..Settings::default()
            };
            assert!(
                bad.validate().unwrap_err().contains("otlp_endpoint"),
                "{endpoint}"
            );
        }
        let good = Settings {
            otlp_endpoint: Some("http://127.0.0.1:4317".into()),
            sampling_ratio: Some(0.25),
            ..Settings::default()
        };
        assert_eq!(good.validate(), Ok(()));
    }
}
