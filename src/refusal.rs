//! Refusals of authenticated callers, on the record (`access_denied`): a key
//! used beyond its grant, from outside its networks, or for an Admin RPC it
//! lacks the permission for. Such a call names a key someone holds, so it is
//! a security event an investigation asks about ("who tried tenant acme?").
//!
//! Why written and not waited for: the caller is refused either way, and a
//! refusal must not wait on a disk flush. The entry is in the file before
//! the refusal is answered (it survives the process), and is made durable
//! with the next group. A failure to write it is counted
//! (`valet_audit_write_failures_total`) and logged, never turned into a
//! different answer. A call with no valid key is not recorded: it names no
//! one, and a flood of them must not fill the log.

use crate::app::{App, actor};
use crate::status::Failure;
use std::net::IpAddr;
use valet_access::Caller;
use valet_audit::Event;

/// What an authenticated caller asked for and was refused.
#[derive(Debug, Default)]
pub struct Asked<'a> {
    /// `read`/`write` (a Gateway call), `admin` or a permission (an Admin
    /// RPC), or `use` (the key at all, refused for its source).
    pub what: &'a str,
    /// The tenant asked for, on a Gateway call.
    pub tenant: Option<&'a str>,
    /// The vendor asked for, on a Gateway call.
    pub vendor: Option<&'a str>,
    /// The call's request id, on a Gateway call.
    pub request_id: Option<&'a str>,
    /// The caller's source address, when known.
    pub source: Option<IpAddr>,
}

/// Records that `caller` was refused `asked` with `failure`, and hands the
/// failure back to be answered.
pub fn record(app: &App, caller: &Caller, asked: Asked<'_>, failure: Failure) -> Failure {
    let event = Event::AccessDenied {
        tenant: asked.tenant.map(str::to_owned),
        vendor: asked.vendor.map(str::to_owned),
        asked: asked.what.to_owned(),
        refused: failure.reason.as_str().to_owned(),
        source: asked.source.map(|ip| ip.to_string()),
        request_id: asked.request_id.map(str::to_owned),
    };
    if let Err(e) = app.audit.append_written(&actor(caller), &event) {
        app.metrics.audit_write_failed();
        tracing::error!(error = %e, "a refusal could not be written to the audit log");
    }
    failure
}
