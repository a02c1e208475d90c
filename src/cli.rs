//! The command line: `serve`, `config check`, `admin …`, `audit verify`.
//!
//! Exit codes: 0 success, 1 the operation failed, 64 bad usage or config.

pub mod admin;
pub mod audit;
pub mod duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Writes `valet completion SHELL`'s script to `out`.
pub fn completion(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "valet", out);
}

/// Writes the manual page, every subcommand included, to `out`.
pub fn man(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let command = <Cli as clap::CommandFactory>::command();
    clap_mangen::Man::new(command.clone()).render(out)?;
    // One page: each subcommand's section follows the top level's.
    for sub in command.get_subcommands() {
        let name = format!("valet-{}", sub.get_name());
        clap_mangen::Man::new(sub.clone()).title(name).render(out)?;
    }
    Ok(())
}

/// Exit code for bad usage or configuration (sysexits EX_USAGE).
pub const EXIT_USAGE: i32 = 64;

/// Valet: a gRPC gateway that makes vendor calls with credentials callers
/// never see.
#[derive(Debug, Parser)]
#[command(name = "valet", version = crate::LONG_VERSION, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (Gateway and Admin listeners).
    Serve {
        /// Configuration file; without it, the embedded defaults (listen on
        /// 127.0.0.1:50051 and :50052, state in ./.valet, no vendors).
        #[arg(long, short, env = "VALET_CONFIG")]
        config: Option<PathBuf>,
        /// Settings that override the file's.
        #[command(flatten)]
        listen: Overrides,
    },
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage credentials and API keys through the Admin service.
    Admin(Box<AdminArgs>),
    /// Audit log tools.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Show this replica's state: readiness and each backend's, vendors'
    /// breakers, the credential cache, key and credential counts, the
    /// control state's age (through the Admin service). Exit 0 when ready,
    /// 1 when not or unreachable.
    Status(Connection),
    /// Print a shell completion script, e.g.
    /// `valet completion bash > /etc/bash_completion.d/valet`.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `valet man | man -l -`.
    Man,
}

/// Settings given on the command line or in the environment; each
/// overrides its key in the file, so two instances (or a container) need no
/// edited copy of it.
#[derive(Debug, Clone, Default, Args)]
pub struct Overrides {
    /// The Gateway listener (`server.listen`).
    #[arg(long, env = "VALET_LISTEN", value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// The Admin listener (`server.admin_listen`).
    #[arg(long, env = "VALET_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<std::net::SocketAddr>,
    /// The ops listener: /metrics, /healthz, /readyz (`server.ops_listen`).
    #[arg(long, env = "VALET_OPS_LISTEN", value_name = "ADDR")]
    pub ops_listen: Option<std::net::SocketAddr>,
    /// Log lines as `json`, `text`, or `auto`: text on a terminal, else JSON
    /// (`telemetry.log_format`).
    #[arg(long, env = "VALET_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<valet_telemetry::LogFormat>,
}

impl Overrides {
    /// Puts the given settings into `config`.
    pub fn apply(&self, config: &mut crate::config::Config) {
        if let Some(format) = self.log_format {
            config.telemetry.log_format = format;
        }
        let server = &mut config.server;
        if let Some(addr) = self.listen {
            server.listen = addr;
        }
        if let Some(addr) = self.admin_listen {
            server.admin_listen = addr;
        }
        if let Some(addr) = self.ops_listen {
            server.ops_listen = addr;
        }
    }
}

/// `valet config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a configuration file without serving; exit 64 if it is invalid.
    Check {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// `valet audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify an audit log's hash chain; report the first broken entry.
    ///
    /// With --config, also check the signed index of sealed segments (whole
    /// segments cut from the end). With --anchor, also check the file
    /// against the copy shipped to Redis
    /// ([audit] ship): a tail cut off, an edited last line, or a log
    /// rewritten with fresh hashes shows, up to the last entry shipped.
    Verify {
        /// The audit log (`<state dir>/audit.log`).
        file: PathBuf,
        /// The Redis the log is shipped to (`redis://host:6379/`).
        #[arg(long, env = "VALET_AUDIT_ANCHOR")]
        anchor: Option<String>,
        /// The log's id in the anchor [default: from the file's first entry;
        /// give it when that entry may have been rewritten].
        #[arg(long, requires = "anchor")]
        log_id: Option<String>,
        /// The server's config: its master key (a file or an environment
        /// variable) checks the signed index of sealed segments, so whole
        /// segments cut from the end show.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// `valet admin …`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Where the Admin service is.
    #[command(flatten)]
    pub connection: Connection,
    /// What to manage.
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// Where the Admin service is and how to authenticate (`valet admin`,
/// `valet status`).
///
/// Each of `--endpoint` and `--api-key-file` is, in order: the flag (or its
/// environment variable), else what `--config` implies, else the default.
#[derive(Debug, Args)]
pub struct Connection {
    /// The server's own config file: the endpoint is its `server.admin_listen`
    /// (https when `server.tls` is set) and the key file
    /// `<state.dir>/admin.key` (a relative state dir is relative to the
    /// current directory, as for the server started here).
    #[arg(long, short, env = "VALET_CONFIG")]
    pub config: Option<PathBuf>,
    /// The Admin service's address [default: http://127.0.0.1:50052].
    #[arg(long, env = "VALET_ADMIN_ENDPOINT")]
    pub endpoint: Option<String>,
    /// File holding an admin API key (the first start writes one to
    /// `<state dir>/admin.key`) [default: .valet/admin.key].
    #[arg(long, env = "VALET_ADMIN_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// CA bundle (PEM) that signed the Admin listener's certificate, for an
    /// `https://` endpoint with a private CA.
    #[arg(long, env = "VALET_ADMIN_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), when the listener requires mutual TLS.
    #[arg(
        long,
        alias = "cert-file",
        env = "VALET_ADMIN_CLIENT_CERT_FILE",
        requires = "client_key_file"
    )]
    pub client_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM) — TLS only; the admin API
    /// key is `--api-key-file`.
    #[arg(
        long,
        alias = "key-file",
        env = "VALET_ADMIN_CLIENT_KEY_FILE",
        requires = "client_cert_file"
    )]
    pub client_key_file: Option<PathBuf>,
}

/// Admin subjects.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Vendor credentials, sealed at rest.
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// Caller API keys.
    #[command(subcommand, name = "apikey")]
    ApiKey(ApiKeyCommand),
    /// Quota policies and usage.
    #[command(subcommand)]
    Quota(QuotaCommand),
    /// Tenants: the kill switch (disable, enable), status.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Read the audit log: entries by filter, or a summary of them. Needs an
    /// API key with the audit-view permission (admin keys lack it unless
    /// granted); every query is itself audited.
    #[command(subcommand)]
    Audit(AuditQueryCommand),
}

/// `valet admin audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditQueryCommand {
    /// Print the entries matching the filters, oldest first.
    Query {
        /// Which entries.
        #[command(flatten)]
        filter: AuditFilterArgs,
        /// At most this many entries [default: every match, fetched 10,000
        /// at a time].
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
        /// Only entries after this seq (to continue an earlier listing).
        #[arg(long, default_value_t = 0, conflicts_with = "fleet")]
        after: u64,
        /// Read every replica's copy shipped to Redis ([audit] ship), in
        /// the order shipped, instead of this replica's log.
        #[arg(long)]
        fleet: bool,
        /// With --fleet: only entries shipped after this stream id.
        #[arg(long, requires = "fleet")]
        after_id: Option<String>,
        /// `table`, or `json`: each entry as written, one per line (what
        /// `jq` reads) [default: table on a terminal, else json].
        #[arg(long, value_enum)]
        output: Option<OutputArg>,
    },
    /// Counts by kind, reason, actor and source address, distinct caller
    /// keys, first and last entry: the first screen of an investigation.
    Summary {
        /// Which entries.
        #[command(flatten)]
        filter: AuditFilterArgs,
        /// Count every replica's shipped copy instead of this replica's log.
        #[arg(long)]
        fleet: bool,
        /// `table` (aligned text), or `json` (one object) [default: table
        /// on a terminal, else json].
        #[arg(long, value_enum)]
        output: Option<OutputArg>,
    },
}

/// How `valet admin audit query` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputArg {
    /// Aligned columns: seq, time, kind, actor, tenant, vendor.
    Table,
    /// One JSON entry per line, exactly as in the log.
    Json,
}

/// Which audit entries (every filter given must match).
#[derive(Debug, Args)]
pub struct AuditFilterArgs {
    /// The event's tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// The event's vendor.
    #[arg(long)]
    pub vendor: Option<String>,
    /// Who acted: an API key id (key_…), or the actor as logged (key_…:name).
    #[arg(long)]
    pub actor: Option<String>,
    /// Event kind (repeatable): credential_lease, credential_put,
    /// credential_rotate, credential_delete, credential_refresh (the vendor
    /// answered 401), api_key_create, api_key_revoke, quota_policy_put,
    /// tenant_disable, tenant_offboard, audit_query, …
    #[arg(long = "kind")]
    pub kinds: Vec<String>,
    /// The reason given (a lease's stated reason, a disable's).
    #[arg(long)]
    pub reason: Option<String>,
    /// The call's request id.
    #[arg(long)]
    pub request_id: Option<String>,
    /// From: a time ago (24h, 7d, 30m) or a moment (2026-12-01T09:00:00Z).
    #[arg(long, value_parser = moment, allow_hyphen_values = true)]
    pub since: Option<std::time::SystemTime>,
    /// Until (exclusive): a time ago or a moment, as for --since.
    #[arg(long, value_parser = moment, allow_hyphen_values = true)]
    pub until: Option<std::time::SystemTime>,
}

/// `24h` (that long ago) or an RFC 3339 time.
fn moment(text: &str) -> Result<std::time::SystemTime, String> {
    match humantime::parse_rfc3339_weak(text) {
        Ok(at) => return Ok(at),
        // A date that is not one (month 13, a missing zone): say so.
        Err(e) if text.contains(['-', ':']) => {
            return Err(format!(
                "'{text}': not a valid time ({e}); use e.g. 2026-12-01T09:00:00Z, or a time ago such as 24h"
            ));
        }
        Err(_) => {}
    }
    let ago = duration::parse(text).map_err(|e| format!("{e}; or a time such as 2026-12-01T09:00:00Z"))?;
    std::time::SystemTime::now()
        .checked_sub(ago)
        .ok_or_else(|| format!("'{text}' reaches before 1970"))
}

/// `valet admin tenant …`.
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Refuse every call for a tenant (or one of its integrations) on every
    /// replica within a second, and cancel its calls in flight.
    ///
    /// With --compromised (containment): also revoke every API key scoped
    /// only to the tenant and mark its credentials compromised, so enabling
    /// it again requires rotating or re-putting each one first; prints the
    /// incident runbook's next steps.
    Disable {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// One vendor only (the tenant's other integrations keep working).
        #[arg(long)]
        vendor: Option<String>,
        /// Why; recorded in the audit log (never shown to callers).
        #[arg(long)]
        reason: String,
        /// A credential may be compromised: disable, revoke the tenant's own
        /// API keys and require new credentials before enabling.
        #[arg(long)]
        compromised: bool,
    },
    /// Lift a disable (the whole tenant, or --vendor's).
    Enable {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The vendor whose disable to lift.
        #[arg(long)]
        vendor: Option<String>,
    },
    /// Show whether a tenant is enabled, and every disable in force.
    Status {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
    /// List tenants (with credentials or a disable) and their status.
    List,
    /// Offboard a tenant: disable it, revoke its own API keys, overwrite and
    /// delete its credentials, purge its idempotency records and stored
    /// responses, remove its quota policies. Prints what was deleted and
    /// what is retained until when (also in the audit log).
    Offboard {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Days until what is retained (its status, its revoked keys'
        /// records) is removed; `restore` works until then.
        #[arg(long, default_value_t = 30, conflicts_with = "now")]
        retention_days: u32,
        /// Remove what is retained at once (no restore).
        #[arg(long)]
        now: bool,
        /// Why; recorded in the audit log.
        #[arg(long, default_value = "offboarded")]
        reason: String,
    },
    /// Undo an offboarding within its retention (put new credentials and
    /// create new keys: the old ones are gone).
    Restore {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
    /// Erase a tenant's stored vendor responses (its idempotency records),
    /// e.g. for a GDPR erasure request; audited.
    EraseRecords {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
}

/// A permission beyond Gateway calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PermissionArg {
    /// Change and read quota policies.
    QuotaAdmin,
    /// Read quota policies and usage.
    QuotaView,
    /// Read the audit log (`valet admin audit …`); admin keys do not have it.
    AuditView,
}

/// `valet admin quota …`.
#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Set (or replace) a policy; takes effect on every replica within a
    /// second and persists.
    Set {
        /// Tenant, or "*" for each tenant.
        #[arg(long, default_value = "*")]
        tenant: String,
        /// Vendor, or "*".
        #[arg(long, default_value = "*")]
        vendor: String,
        /// read, write or "*".
        #[arg(long, default_value = "*")]
        operation: String,
        /// Steady rate: COUNT/s, COUNT/m or COUNT/h (e.g. 10/s).
        #[arg(long)]
        rate: String,
        /// Calls admitted at once after an idle spell.
        #[arg(long)]
        burst: u32,
        /// Evaluate and report, never refuse.
        #[arg(long)]
        shadow: bool,
        /// One bucket for all tenants (tenant must be "*").
        #[arg(long)]
        aggregate: bool,
    },
    /// Show one policy.
    Get {
        /// The policy id (tenant/vendor/operation).
        id: String,
    },
    /// List every effective policy.
    List,
    /// Remove a run-time policy.
    Delete {
        /// The policy id.
        id: String,
    },
    /// Remaining calls and reset time for one tenant, vendor and operation.
    Usage {
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// Vendor.
        #[arg(long)]
        vendor: String,
        /// read or write.
        #[arg(long, default_value = "read")]
        operation: String,
    },
}

/// The grant material of an OAuth vendor, for `credential put` / `rotate`.
#[derive(Debug, clap::Args)]
pub struct OAuthArgs {
    /// The tenant's OAuth client id; standard input holds its client secret.
    #[arg(long, value_name = "ID")]
    pub oauth_client_id: Option<String>,
    /// Standard input also holds, on its second line, the refresh token
    /// (for a vendor with `grant = "refresh_token"`).
    #[arg(long, requires = "oauth_client_id")]
    pub oauth_refresh_token: bool,
    /// For a `private_key_jwt` vendor: standard input holds the PKCS#8 PEM
    /// private key (P-256 or RSA) instead of a client secret, and the
    /// refresh token, if any, on the line after its END line.
    #[arg(long, requires = "oauth_client_id")]
    pub oauth_private_key: bool,
    /// The `kid` the provider knows the private key by.
    #[arg(long, value_name = "KID", requires = "oauth_private_key")]
    pub oauth_key_id: Option<String>,
    /// For an `mtls` vendor: the tenant's client certificate chain (PEM
    /// file), sent on every connection to the provider and the vendor.
    #[arg(long, value_name = "FILE", requires_all = ["oauth_client_id", "oauth_client_key"])]
    pub oauth_client_cert: Option<std::path::PathBuf>,
    /// Its private key (PEM file); stored sealed with the rest.
    #[arg(long, value_name = "FILE", requires = "oauth_client_cert")]
    pub oauth_client_key: Option<std::path::PathBuf>,
}

/// `valet admin credential …`.
#[derive(Debug, Subcommand)]
pub enum CredentialCommand {
    /// Store or replace a credential. The secret is read from standard input
    /// (never from arguments, which leak into shell history and `ps`); on a
    /// terminal it is prompted for without echo.
    ///
    /// For an OAuth vendor, give --oauth-client-id: standard input then
    /// holds the client secret, and with --oauth-refresh-token a second
    /// line, the refresh token the tenant's consent produced.
    Put {
        /// Owning tenant.
        #[arg(long)]
        tenant: String,
        /// Vendor from the registry.
        #[arg(long)]
        vendor: String,
        /// For an OAuth vendor.
        #[command(flatten)]
        oauth: OAuthArgs,
    },
    /// Replace a credential only after the vendor accepts it: the new secret
    /// (read like `put`) is staged, the vendor's `verify` request is made
    /// with it, and only a 2xx commits it; otherwise the current one stays.
    ///
    /// For an OAuth vendor (client_credentials grant), give
    /// --oauth-client-id: standard input holds the new client secret, an
    /// access token is fetched with it, and the verify request carries it.
    Rotate {
        /// Owning tenant.
        #[arg(long)]
        tenant: String,
        /// Vendor from the registry (needs a `verify` request).
        #[arg(long)]
        vendor: String,
        /// For an OAuth vendor.
        #[command(flatten)]
        oauth: OAuthArgs,
    },
    /// List credential metadata (never secrets).
    List {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Delete a credential (its ciphertext is overwritten, then removed).
    Delete {
        /// Owning tenant.
        #[arg(long)]
        tenant: String,
        /// Vendor.
        #[arg(long)]
        vendor: String,
    },
}

/// A gateway operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OperationArg {
    /// GET, HEAD, OPTIONS.
    Read,
    /// Any allowed method.
    Write,
}

/// `valet admin apikey …`.
#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Create an API key; prints the key alone on standard output, once.
    Create {
        /// A label for people.
        #[arg(long)]
        name: String,
        /// Tenant the key may act for (repeat for several; "*" for any).
        #[arg(long = "tenant")]
        tenants: Vec<String>,
        /// Vendor the key may call (repeat for several; "*" for any).
        #[arg(long = "vendor")]
        vendors: Vec<String>,
        /// Operation the key may perform (repeat for both).
        #[arg(long = "operation", value_enum)]
        operations: Vec<OperationArg>,
        /// Allow the Admin service.
        #[arg(long)]
        admin: bool,
        /// A narrower Admin permission (repeat for several).
        #[arg(long = "permission", value_enum)]
        permissions: Vec<PermissionArg>,
        /// Expire after this long: 90d, 12h, 30m (minutes), 45s, 2w
        /// (default: never). At most the server's api_keys.max_lifetime_days.
        #[arg(long, value_parser = duration::parse, allow_hyphen_values = true, conflicts_with = "ttl_days")]
        expires_in: Option<std::time::Duration>,
        /// Expire after this many days (older spelling of --expires-in Nd).
        #[arg(long)]
        ttl_days: Option<u64>,
        /// Bind a client certificate identity (its first DNS SAN, e.g.
        /// billing.corp.example): on listeners with mutual TLS it
        /// authenticates as this key without a bearer key. Not for admin keys.
        #[arg(long)]
        client_identity: Option<String>,
        /// A source network (CIDR, e.g. 10.0.0.0/8 or fd00::/8, or one
        /// address) the key may be used from; repeat for several. Calls from
        /// elsewhere are refused (SOURCE_NOT_ALLOWED). Default: anywhere.
        #[arg(long = "allow-cidr")]
        allow_cidrs: Vec<String>,
    },
    /// List API keys (metadata only), with each key's last use.
    List {
        /// Only valid keys that expire within this long (e.g. 7d).
        #[arg(long, value_parser = duration::parse, allow_hyphen_values = true)]
        expiring: Option<std::time::Duration>,
    },
    /// Revoke an API key at once, by id or by name.
    Revoke {
        /// The key's id (`key_…`), from `create` or `list`.
        #[arg(required_unless_present = "name", conflicts_with = "name")]
        id: Option<String>,
        /// The name of the one valid key to revoke (refused if several
        /// valid keys share it).
        #[arg(long)]
        name: Option<String>,
    },
    /// Replace an API key with a new one (same name, grant and networks);
    /// prints the new key alone on standard output, once. The old key keeps
    /// working for the overlap, never longer than it would have.
    Rotate {
        /// The key's id (`key_…`).
        id: String,
        /// How long the old key keeps working: 24h, 7d, 30m, ...
        #[arg(long, value_parser = duration::parse, allow_hyphen_values = true, default_value = "24h")]
        overlap: std::time::Duration,
    },
}
