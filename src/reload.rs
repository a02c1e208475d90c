//! SIGHUP: read the config file again and put in force what can change
//! without a restart — the vendor registry, the default quota policies,
//! the trace sampling ratio, the tenant labels of metrics and the log line
//! format — while calls go on.
//!
//! The new file is checked exactly as at start-up (the command line's
//! listener addresses applied again); an invalid one is refused with the
//! same message `valet config check` prints, and the running config stays.
//! Any other section that changed is named in a warning and waits for a
//! restart: listeners, state, backends and the rest of telemetry (the
//! exporters, their endpoint and resource) are wired into connections,
//! files and exporters opened once.
//!
//! A vendor whose entry is unchanged keeps its connections, breaker and
//! retry budget ([`valet_egress::Registry::carry_over`]); a call already
//! under way keeps the vendor it looked up.

use crate::app::App;
use crate::cli::Overrides;
use crate::config::{Config, ConfigError};
use std::path::{Path, PathBuf};

/// What a reload changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Vendors added, changed (rebuilt: new connections, a closed breaker)
    /// and removed (calls to them now fail `VENDOR_UNKNOWN`).
    pub vendors: valet_egress::Replaced,
    /// The default quota policies in force now.
    pub quota_policies: usize,
    /// Sections that changed but need a restart to take effect.
    pub needs_restart: Vec<&'static str>,
}

/// The file a running server reloads, and what it last put in force.
#[derive(Debug)]
pub struct Reloader {
    path: Option<PathBuf>,
    listen: Overrides,
    running: Config,
    /// The trace sampler, when traces are exported.
    sampling: Option<valet_telemetry::sampling::Sampling>,
    /// The log line format switch.
    log_format: Option<valet_telemetry::subscriber::LogSwitch>,
}

impl Reloader {
    /// For a server started from `path` (None: the embedded defaults) with
    /// `listen`'s overrides, running `running`.
    pub fn new(path: Option<PathBuf>, listen: Overrides, running: Config) -> Self {
        Self {
            path,
            listen,
            running,
            sampling: None,
            log_format: None,
        }
    }

    /// Also changes the log line format through `switch`.
    pub fn with_log_format(mut self, switch: valet_telemetry::subscriber::LogSwitch) -> Self {
        self.log_format = Some(switch);
        self
    }

    /// Also changes the sampling ratio of `sampling` (the running tracer's).
    pub fn with_sampling(mut self, sampling: Option<valet_telemetry::sampling::Sampling>) -> Self {
        self.sampling = sampling;
        self
    }

    /// Reads, checks and applies the file; on error nothing changed.
    pub fn reload(&mut self, app: &App) -> Result<Reloaded, ReloadError> {
        let Some(path) = self.path.clone() else {
            return Err(ReloadError::NoFile);
        };
        let next = read(&path, &self.listen)?;
        let validated = next.clone().validate().map_err(|e| e.at(&path))?;
        let reloaded = Reloaded {
            vendors: app.registry.replace(validated.registry().clone()),
            quota_policies: next.quota.policies.len(),
            needs_restart: needs_restart(&self.running, &next),
        };
        app.quotas.replace_defaults(next.quota.policies.clone());
        app.metrics.set_tenant_labels(next.telemetry.tenant_labels());
        if let Some(sampling) = &self.sampling {
            sampling.set(next.telemetry.sampling_ratio);
        }
        if let Some(switch) = &self.log_format {
            switch.set(next.telemetry.log_format);
        }
        // What needs a restart stays as it runs: keep comparing against it.
        let telemetry = &mut self.running.telemetry;
        telemetry.sampling_ratio = next.telemetry.sampling_ratio;
        telemetry.tenant_label = next.telemetry.tenant_label;
        telemetry.max_tenant_labels = next.telemetry.max_tenant_labels;
        telemetry.log_format = next.telemetry.log_format;
        self.running.vendors = next.vendors;
        self.running.quota = next.quota;
        Ok(reloaded)
    }
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// Started on the embedded defaults.
    #[error("started without --config: there is no file to reload")]
    NoFile,
    /// The file is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

fn read(path: &Path, listen: &Overrides) -> Result<Config, ConfigError> {
    let mut config = Config::read(path)?;
    listen.apply(&mut config);
    Ok(config)
}

/// A section's name and how to read it from a config.
type Section = (&'static str, fn(&Config) -> String);

/// The sections, other than vendors and quota policies, that differ. Compared
/// by their `Debug` text: every section has one (none holds a secret), and
/// a section added later is compared without a `PartialEq` to remember.
fn needs_restart(running: &Config, next: &Config) -> Vec<&'static str> {
    let quota_settings = |c: &Config| {
        let mut quota = c.quota.clone();
        quota.policies.clear();
        format!("{quota:?}")
    };
    let sections: [Section; 10] = [
        ("server", |c| format!("{:?}", c.server)),
        ("state", |c| format!("{:?}", c.state)),
        ("secrets", |c| format!("{:?}", c.secrets)),
        ("audit", |c| format!("{:?}", c.audit)),
        ("limits", |c| format!("{:?}", c.limits)),
        ("idempotency", |c| format!("{:?}", c.idempotency)),
        ("control", |c| format!("{:?}", c.control)),
        ("redis_url", |c| format!("{:?}", c.redis_url)),
        ("api_keys", |c| format!("{:?}", c.api_keys)),
        (
            "telemetry (other than sampling_ratio, tenant labels and log_format)",
            |c| {
                let mut telemetry = c.telemetry.clone();
                telemetry.sampling_ratio = None;
                telemetry.tenant_label = true;
                telemetry.max_tenant_labels = 0;
                telemetry.log_format = Default::default();
                format!("{telemetry:?}")
            },
        ),
    ];
    let mut changed: Vec<&'static str> = sections
        .iter()
        .filter(|(_, text)| text(running) != text(next))
        .map(|(name, _)| *name)
        .collect();
    if quota_settings(running) != quota_settings(next) {
        changed.push("quota (other than policies)");
    }
    changed
}

/// SIGHUP's handler, installed before the server starts so that a hangup
/// never takes the default action (ending the process).
pub fn hangups() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
}

/// Reloads on every SIGHUP until the task is dropped, logging the outcome.
pub async fn on_sighup(
    app: std::sync::Arc<App>,
    mut reloader: Reloader,
    mut hangups: tokio::signal::unix::Signal,
) {
    while hangups.recv().await.is_some() {
        match reloader.reload(&app) {
            Ok(r) => {
                tracing::info!(
                    vendors_added = %r.vendors.added.join(","),
                    vendors_changed = %r.vendors.changed.join(","),
                    vendors_removed = %r.vendors.removed.join(","),
                    quota_policies = r.quota_policies,
                    "config reloaded"
                );
                if !r.needs_restart.is_empty() {
                    tracing::warn!(
                        sections = %r.needs_restart.join(","),
                        "config reloaded, but these sections changed and take effect only after a restart: {}",
                        r.needs_restart.join(", ")
                    );
                }
            }
            Err(e) => tracing::error!(error = %e, "config reload refused; the running config stays"),
        }
    }
}
