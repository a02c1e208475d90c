//! `valet admin …`: a client of the Admin service.

use super::{
    AdminArgs, AdminCommand, ApiKeyCommand, Connection, CredentialCommand, OperationArg, PermissionArg,
    QuotaCommand,
};
use crate::proto::{self, admin_client::AdminClient};
use std::io::{IsTerminal as _, Read as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic_types::StatusExt as _;
use zeroize::Zeroizing;

mod audit;
mod status;
mod tenant;

/// Runs an admin command; returns the exit code.
pub async fn run(args: AdminArgs) -> i32 {
    match execute(args).await {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("error: {message}");
            1
        }
    }
}

/// Puts the admin API key on every request.
#[derive(Clone)]
struct BearerAuth(MetadataValue<Ascii>);

impl Interceptor for BearerAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

type Client = AdminClient<InterceptedService<tonic::transport::Channel, BearerAuth>>;

/// Where the Admin service is and which key file to read, resolved from
/// the flags, `--config` and the defaults.
struct Target {
    endpoint: String,
    api_key_file: PathBuf,
}

impl Target {
    fn resolve(args: &Connection) -> Result<Self, String> {
        let from_config = match &args.config {
            Some(path) => Some(Self::from_config(path)?),
            None => None,
        };
        let endpoint = args
            .endpoint
            .clone()
            .or_else(|| from_config.as_ref().map(|t| t.endpoint.clone()))
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
        let api_key_file = args
            .api_key_file
            .clone()
            .or_else(|| from_config.map(|t| t.api_key_file))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_KEY_FILE));
        Ok(Self {
            endpoint,
            api_key_file,
        })
    }

    /// What the server's own config says: its Admin listener (a wildcard
    /// bind is reached on loopback) and its state dir's admin.key.
    fn from_config(path: &Path) -> Result<Self, String> {
        let config = crate::config::Config::load(path).map_err(|e| e.to_string())?;
        let mut addr = config.server.admin_listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let scheme = if config.server.tls.is_some() {
            "https"
        } else {
            "http"
        };
        Ok(Self {
            endpoint: format!("{scheme}://{addr}"),
            api_key_file: config.state.dir.join("admin.key"),
        })
    }
}

const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:50052";
const DEFAULT_KEY_FILE: &str = ".valet/admin.key";

/// TLS for an `https://` endpoint: the public roots, or `--ca-file`; and a
/// client certificate with `--client-cert-file`/`--client-key-file`.
fn client_tls(args: &Connection) -> Result<tonic::transport::ClientTlsConfig, String> {
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("--{flag} {}: {e}", path.display()))
    };
    let tls = tonic::transport::ClientTlsConfig::new();
    // The given CA only, or else the public roots.
    let mut tls = match &args.ca_file {
        Some(path) => tls.ca_certificate(tonic::transport::Certificate::from_pem(read("ca-file", path)?)),
        None => tls.with_webpki_roots(),
    };
    if let (Some(cert), Some(key)) = (&args.client_cert_file, &args.client_key_file) {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            read("client-cert-file", cert)?,
            read("client-key-file", key)?,
        ));
    }
    Ok(tls)
}

/// A connection failure as a sentence: the endpoint, the causes under
/// tonic's bare "transport error", and what to check.
fn unreachable(endpoint: &str, error: &tonic::transport::Error) -> String {
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !causes.contains(&text) {
            causes.push(text);
        }
        source = cause.source();
    }
    let why = match causes.is_empty() {
        true => error.to_string(),
        false => causes.join(": "),
    };
    format!(
        "cannot reach the Admin service at {endpoint} ({why}). Check that `valet serve` is running \
         and that this is its server.admin_listen (give --endpoint, VALET_ADMIN_ENDPOINT, or \
         --config with the server's config file); an https:// endpoint with a private CA needs --ca-file"
    )
}

async fn execute(args: AdminArgs) -> Result<(), String> {
    let mut client = connect(&args.connection).await?;
    match args.command {
        AdminCommand::Credential(cmd) => credential(&mut client, cmd).await,
        AdminCommand::ApiKey(cmd) => api_key(&mut client, cmd).await,
        AdminCommand::Quota(cmd) => quota(&mut client, cmd).await,
        AdminCommand::Tenant(cmd) => tenant::run(&mut client, cmd).await,
        AdminCommand::Audit(cmd) => audit::run(&mut client, cmd).await,
    }
}

/// `valet status`: exit 0 when the replica is ready, 1 when it is not or
/// cannot be reached.
pub async fn status(connection: Connection) -> i32 {
    let fetched = async {
        let mut client = connect(&connection).await?;
        client
            .get_server_status(proto::GetServerStatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(describe)
    };
    match fetched.await {
        Ok(status) => {
            print!("{}", status::render(&status));
            if status.ready { 0 } else { 1 }
        }
        Err(message) => {
            eprintln!("error: {message}");
            1
        }
    }
}

/// A client of the Admin service `args` name, authenticated by its key.
async fn connect(args: &Connection) -> Result<Client, String> {
    let Target {
        endpoint: url,
        api_key_file,
    } = Target::resolve(args)?;
    let key = Zeroizing::new(
        std::fs::read_to_string(&api_key_file)
            .map_err(|e| format!("cannot read API key file {}: {e}", api_key_file.display()))?,
    );
    let mut auth: MetadataValue<Ascii> = format!("Bearer {}", key.trim())
        .parse()
        .map_err(|_| format!("{} does not hold an API key", api_key_file.display()))?;
    auth.set_sensitive(true);
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|_| format!("'{url}' is not a valid endpoint URL"))?;
    let tls_flags = args.ca_file.is_some() || args.client_cert_file.is_some();
    if tls_flags && !url.starts_with("https://") {
        return Err(format!(
            "--ca-file/--client-cert-file need an https:// endpoint, not {url}"
        ));
    }
    if url.starts_with("https://") {
        endpoint = endpoint
            .tls_config(client_tls(args)?)
            .map_err(|e| format!("TLS settings: {e}"))?;
    }
    let channel = endpoint.connect().await.map_err(|e| unreachable(&url, &e))?;
    Ok(AdminClient::with_interceptor(channel, BearerAuth(auth)))
}

async fn credential(client: &mut Client, cmd: CredentialCommand) -> Result<(), String> {
    match cmd {
        CredentialCommand::Put {
            tenant,
            vendor,
            oauth,
        } => {
            let secret = read_credential(&oauth)?;
            let info = client
                .put_credential(proto::PutCredentialRequest {
                    tenant,
                    vendor,
                    secret: secret.to_string(),
                })
                .await
                .map_err(describe)?
                .into_inner();
            println!(
                "stored credential for tenant {} vendor {} (fingerprint {}{})",
                info.tenant,
                info.vendor,
                info.fingerprint,
                last4_note(&info.last4)
            );
        }
        CredentialCommand::Rotate {
            tenant,
            vendor,
            oauth,
        } => {
            let secret = read_credential(&oauth)?;
            let rotated = client
                .rotate_credential(proto::RotateCredentialRequest {
                    tenant,
                    vendor,
                    secret: secret.to_string(),
                })
                .await
                .map_err(describe)?
                .into_inner();
            let info = rotated.credential.unwrap_or_default();
            println!(
                "rotated credential for tenant {} vendor {}: fingerprint {} -> {} (verify answered {})",
                info.tenant,
                info.vendor,
                rotated.previous_fingerprint,
                info.fingerprint,
                rotated.verify_status
            );
        }
        CredentialCommand::List { tenant } => {
            let list = client
                .list_credentials(proto::ListCredentialsRequest {
                    tenant: tenant.unwrap_or_default(),
                })
                .await
                .map_err(describe)?
                .into_inner();
            println!("TENANT\tVENDOR\tFINGERPRINT\tLAST4\tCREATED\tUPDATED\tAGE\tROTATE BY");
            for c in list.credentials {
                let due = if c.rotation_overdue { " (overdue)" } else { "" };
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}{due}",
                    c.tenant,
                    c.vendor,
                    c.fingerprint,
                    or_dash(&c.last4),
                    time(c.created.as_ref()),
                    time(c.updated.as_ref()),
                    age(c.updated.as_ref()),
                    time(c.rotate_by.as_ref()),
                );
            }
        }
        CredentialCommand::Delete { tenant, vendor } => {
            client
                .delete_credential(proto::DeleteCredentialRequest {
                    tenant: tenant.clone(),
                    vendor: vendor.clone(),
                })
                .await
                .map_err(describe)?;
            println!("deleted credential for tenant {tenant} vendor {vendor}");
        }
    }
    Ok(())
}

async fn api_key(client: &mut Client, cmd: ApiKeyCommand) -> Result<(), String> {
    match cmd {
        ApiKeyCommand::Create {
            name,
            tenants,
            vendors,
            operations,
            admin,
            permissions,
            expires_in,
            ttl_days,
            client_identity,
            allow_cidrs,
        } => {
            let ttl_seconds = match (expires_in, ttl_days) {
                (Some(d), _) => d.as_secs(),
                (None, Some(0)) => return Err("--ttl-days must be greater than zero".into()),
                (None, Some(days)) => days.saturating_mul(86_400),
                (None, None) => 0,
            };
            let created = client
                .create_api_key(proto::CreateApiKeyRequest {
                    name,
                    tenants,
                    vendors,
                    operations: operations.iter().map(|o| operation(*o)).collect(),
                    admin,
                    ttl_seconds,
                    permissions: permissions
                        .iter()
                        .map(|p| match p {
                            PermissionArg::QuotaAdmin => proto::Permission::QuotaAdmin as i32,
                            PermissionArg::QuotaView => proto::Permission::QuotaView as i32,
                            PermissionArg::AuditView => proto::Permission::AuditView as i32,
                        })
                        .collect(),
                    client_identity: client_identity.unwrap_or_default(),
                    allow_cidrs,
                })
                .await
                .map_err(describe)?
                .into_inner();
            let id = created.info.as_ref().map_or("", |i| i.id.as_str());
            eprintln!("created API key {id}; it is shown only this once:");
            println!("{}", created.key);
        }
        ApiKeyCommand::List { expiring } => {
            let list = client
                .list_api_keys(proto::ListApiKeysRequest {
                    expiring_within_seconds: expiring.map_or(0, |d| d.as_secs()),
                })
                .await
                .map_err(describe)?
                .into_inner();
            println!(
                "ID\tNAME\tTENANTS\tVENDORS\tOPERATIONS\tADMIN\tLAST4\tCREATED\tEXPIRES\tREVOKED\tALLOW_CIDRS\tLAST_USED\tLAST_SOURCE"
            );
            for k in list.keys {
                let ops: Vec<&str> = k
                    .operations
                    .iter()
                    .map(|o| match proto::Operation::try_from(*o) {
                        Ok(proto::Operation::Read) => "read",
                        Ok(proto::Operation::Write) => "write",
                        _ => "?",
                    })
                    .collect();
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    k.id,
                    k.name,
                    or_dash(&k.tenants.join(",")),
                    or_dash(&k.vendors.join(",")),
                    or_dash(&ops.join(",")),
                    if k.admin { "yes" } else { "no" },
                    k.last4,
                    time(k.created.as_ref()),
                    time(k.expires.as_ref()),
                    time(k.revoked.as_ref()),
                    or_dash(&k.allow_cidrs.join(",")),
                    time(k.last_used.as_ref()),
                    or_dash(&k.last_used_source),
                );
            }
        }
        ApiKeyCommand::Revoke { id, name } => {
            let info = client
                .revoke_api_key(proto::RevokeApiKeyRequest {
                    id: id.unwrap_or_default(),
                    name: name.unwrap_or_default(),
                })
                .await
                .map_err(describe)?
                .into_inner();
            println!("revoked API key {} ({})", info.id, info.name);
        }
        ApiKeyCommand::Rotate { id, overlap } => {
            let rotated = client
                .rotate_api_key(proto::RotateApiKeyRequest {
                    id,
                    overlap_seconds: overlap.as_secs(),
                })
                .await
                .map_err(describe)?
                .into_inner();
            let new_id = rotated.info.as_ref().map_or("", |i| i.id.as_str());
            let old = rotated.previous.unwrap_or_default();
            eprintln!(
                "rotated API key {} -> {new_id}; the old key works until {}. The new key is shown only this once:",
                old.id,
                time(old.expires.as_ref())
            );
            println!("{}", rotated.key);
        }
    }
    Ok(())
}

async fn quota(client: &mut Client, cmd: QuotaCommand) -> Result<(), String> {
    let print = |p: &proto::QuotaPolicy| {
        let period = match proto::RatePeriod::try_from(p.period) {
            Ok(proto::RatePeriod::Second) => "s",
            Ok(proto::RatePeriod::Minute) => "m",
            Ok(proto::RatePeriod::Hour) => "h",
            _ => "?",
        };
        let mode = if p.shadow { "shadow" } else { "enforce" };
        let scope = if p.aggregate { "aggregate" } else { "per-tenant" };
        println!(
            "{}\t{}/{period}\tburst {}\t{mode}\t{scope}",
            p.id, p.rate, p.burst
        );
    };
    match cmd {
        QuotaCommand::Set {
            tenant,
            vendor,
            operation,
            rate,
            burst,
            shadow,
            aggregate,
        } => {
            let (rate, period) = parse_rate(&rate)?;
            let policy = proto::QuotaPolicy {
                id: String::new(),
                tenant,
                vendor,
                operation,
                rate,
                period: period as i32,
                burst,
                shadow,
                aggregate,
            };
            let set = client
                .put_quota_policy(proto::PutQuotaPolicyRequest { policy: Some(policy) })
                .await
                .map_err(describe)?
                .into_inner();
            print(&set);
        }
        QuotaCommand::Get { id } => {
            let p = client
                .get_quota_policy(proto::GetQuotaPolicyRequest { id })
                .await
                .map_err(describe)?
                .into_inner();
            print(&p);
        }
        QuotaCommand::List => {
            let list = client
                .list_quota_policies(proto::ListQuotaPoliciesRequest {})
                .await
                .map_err(describe)?
                .into_inner();
            println!("ID\tRATE\tBURST\tMODE\tSCOPE");
            list.policies.iter().for_each(print);
        }
        QuotaCommand::Delete { id } => {
            client
                .delete_quota_policy(proto::DeleteQuotaPolicyRequest { id: id.clone() })
                .await
                .map_err(describe)?;
            println!("deleted quota policy {id}");
        }
        QuotaCommand::Usage {
            tenant,
            vendor,
            operation,
        } => {
            let usage = client
                .get_quota_usage(proto::GetQuotaUsageRequest {
                    tenant,
                    vendor,
                    operation,
                })
                .await
                .map_err(describe)?
                .into_inner();
            println!("POLICY\tREMAINING\tRESET_MS");
            for u in usage.usage {
                println!("{}\t{}\t{}", u.policy_id, u.remaining, u.reset_ms);
            }
        }
    }
    Ok(())
}

/// `10/s`, `100/m`, `1000/h` (also `/second`, `/minute`, `/hour`).
fn parse_rate(text: &str) -> Result<(u32, proto::RatePeriod), String> {
    let bad = || format!("--rate {text}: use COUNT/s, COUNT/m or COUNT/h, e.g. 10/s");
    let (count, unit) = text.split_once('/').ok_or_else(bad)?;
    let count: u32 = count.trim().parse().map_err(|_| bad())?;
    let period = match unit.trim() {
        "s" | "sec" | "second" => proto::RatePeriod::Second,
        "m" | "min" | "minute" => proto::RatePeriod::Minute,
        "h" | "hour" => proto::RatePeriod::Hour,
        _ => return Err(bad()),
    };
    Ok((count, period))
}

/// The credential to store: the secret as read, or for an OAuth vendor the
/// grant material built from the client id and the secrets read.
fn read_credential(oauth: &crate::cli::OAuthArgs) -> Result<Zeroizing<String>, String> {
    let Some(client_id) = &oauth.oauth_client_id else {
        return read_secret();
    };
    let mut material = valet_egress::GrantMaterial::default();
    material.client_id.clone_from(client_id);
    let refresh_token = if oauth.oauth_private_key {
        if std::io::stdin().is_terminal() {
            return Err("--oauth-private-key: pipe the PEM private key on standard input".into());
        }
        let all = read_secret()?;
        // The PEM ends with its END line; a refresh token may follow.
        let end = all
            .find("-----END ")
            .and_then(|i| all[i..].find('\n').map(|j| i + j + 1).or(Some(all.len())))
            .ok_or("--oauth-private-key: standard input holds no PEM private key")?;
        material.private_key = Some(all[..end].to_owned());
        material.key_id = oauth.oauth_key_id.clone();
        let rest = all[end..].trim();
        match (oauth.oauth_refresh_token, rest.is_empty()) {
            (true, false) => Some(Zeroizing::new(rest.to_owned())),
            (false, true) => None,
            (true, true) => {
                return Err("--oauth-refresh-token: the refresh token is missing after the PEM key".into());
            }
            (false, false) => {
                return Err("standard input holds more than the PEM key; give --oauth-refresh-token if that is a refresh token".into());
            }
        }
    } else {
        let (secret, refresh) = read_client_secret(oauth.oauth_refresh_token)?;
        material.client_secret = secret.to_string();
        refresh
    };
    material.refresh_token = refresh_token.map(|t| t.to_string());
    if let (Some(cert), Some(key)) = (&oauth.oauth_client_cert, &oauth.oauth_client_key) {
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        material.client_cert = Some(read(cert)?);
        material.client_key = Some(read(key)?);
    }
    let secret = material.to_secret();
    Ok(Zeroizing::new(
        String::from_utf8_lossy(secret.expose()).into_owned(),
    ))
}

/// The client secret, and with `refresh` the refresh token: prompted on a
/// terminal, else the first and second lines of standard input.
fn read_client_secret(refresh: bool) -> Result<(Zeroizing<String>, Option<Zeroizing<String>>), String> {
    let (secret, token) = if std::io::stdin().is_terminal() {
        let prompt = |what: &str| {
            rpassword::prompt_password(format!("{what} (not echoed): "))
                .map(Zeroizing::new)
                .map_err(|e| format!("cannot read the {what}: {e}"))
        };
        let secret = prompt("client secret")?;
        let token = refresh.then(|| prompt("refresh token")).transpose()?;
        (secret, token)
    } else {
        let all = read_secret()?;
        let mut lines = all.lines();
        let secret = Zeroizing::new(lines.next().unwrap_or_default().to_owned());
        let token = match (refresh, lines.next()) {
            (false, None) => None,
            (false, Some(_)) => {
                return Err("standard input holds more than the client secret; give --oauth-refresh-token if the second line is a refresh token".into());
            }
            (true, Some(token)) if !token.is_empty() => Some(Zeroizing::new(token.to_owned())),
            (true, _) => {
                return Err("--oauth-refresh-token: the refresh token is missing from the second line of standard input".into());
            }
        };
        (secret, token)
    };
    if secret.is_empty() {
        return Err("the client secret is empty".into());
    }
    Ok((secret, token))
}

/// Reads the secret: prompted without echo on a terminal, else all of stdin
/// less one trailing line break.
fn read_secret() -> Result<Zeroizing<String>, String> {
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password("secret (not echoed): ")
            .map(Zeroizing::new)
            .map_err(|e| format!("cannot read the secret: {e}"));
    }
    let mut secret = Zeroizing::new(String::new());
    std::io::stdin()
        .read_to_string(&mut secret)
        .map_err(|e| format!("cannot read the secret from standard input: {e}"))?;
    for ending in ["\r\n", "\n"] {
        if secret.ends_with(ending) {
            let keep = secret.len() - ending.len();
            secret.truncate(keep);
            break;
        }
    }
    if secret.is_empty() {
        return Err("no secret on standard input".into());
    }
    Ok(secret)
}

fn operation(o: OperationArg) -> i32 {
    match o {
        OperationArg::Read => proto::Operation::Read as i32,
        OperationArg::Write => proto::Operation::Write as i32,
    }
}

fn describe(status: tonic::Status) -> String {
    let reason = status
        .get_error_details()
        .error_info()
        .map(|i| format!(" [{}]", i.reason))
        .unwrap_or_default();
    format!("{:?}: {}{reason}", status.code(), status.message())
}

fn time(ts: Option<&prost_types::Timestamp>) -> String {
    ts.map_or_else(
        || "-".to_owned(),
        |t| {
            let at = UNIX_EPOCH + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
            humantime::format_rfc3339_seconds(at).to_string()
        },
    )
}

/// Whole days since `ts`.
fn age(ts: Option<&prost_types::Timestamp>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    ts.map_or_else(
        || "-".to_owned(),
        |t| format!("{}d", (now - t.seconds).max(0) / 86_400),
    )
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn last4_note(last4: &str) -> String {
    if last4.is_empty() {
        String::new()
    } else {
        format!(", ends in {last4}")
    }
}
