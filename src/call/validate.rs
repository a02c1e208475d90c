//! Step 2: is the request well-formed and safe to send.
//!
//! Every failure is INVALID_ARGUMENT with a reason code and a message naming
//! the field. Nothing here touches a credential.

use super::Call;
use crate::app::App;
use crate::proto;
use crate::status::{Failure, Reason};
use bytes::Bytes;
use std::sync::Arc;
use valet_access::Operation;
use valet_credentials::{CredentialKey, valid_name};
use valet_egress::{Limits, ProxyRequest, Registry, RequestError, Vendor, path, request};

/// The longest `reason`, in characters.
pub const MAX_REASON_LEN: usize = 256;

/// A call that passed validation.
#[derive(Debug)]
pub struct ValidCall {
    /// Whose credential for which vendor.
    pub key: CredentialKey,
    /// The vendor.
    pub vendor: Arc<Vendor>,
    /// READ or WRITE.
    pub operation: Operation,
    /// The checked request.
    pub request: ProxyRequest,
    /// Why the credential is used.
    pub reason: String,
    /// The caller's idempotency key, if it sent one.
    pub idempotency_key: Option<String>,
}

/// The longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// The step: checks the request, and notes its vendor and operation.
pub fn run(app: &App, call: &mut Call, req: proto::CallRequest) -> Result<ValidCall, Failure> {
    let valid = check(&app.registry.current(), &app.limits, req)?;
    call.vendor = Some(valid.key.vendor.clone());
    call.operation = Some(valid.operation.as_str());
    Ok(valid)
}

/// Checks every field of `req`.
pub fn check(registry: &Registry, limits: &Limits, req: proto::CallRequest) -> Result<ValidCall, Failure> {
    valid_name(&req.tenant).map_err(|e| Failure::invalid("tenant", Reason::TenantInvalid, e))?;
    let vendor = registry.get(&req.vendor).cloned().ok_or_else(|| {
        Failure::invalid(
            "vendor",
            Reason::VendorUnknown,
            format!("'{}' is not a configured vendor", printable(&req.vendor)),
        )
    })?;
    let operation = match proto::Operation::try_from(req.operation) {
        Ok(proto::Operation::Read) => Operation::Read,
        Ok(proto::Operation::Write) => Operation::Write,
        _ => {
            return Err(Failure::invalid(
                "operation",
                Reason::OperationRequired,
                "must be OPERATION_READ or OPERATION_WRITE",
            ));
        }
    };
    let method = request::method(&req.method)?;
    if operation == Operation::Read {
        request::check_read(&method)?;
    }
    let rel = path::parse(&req.path)?;
    vendor.check_query(rel.query)?;
    let headers = request::headers(
        req.headers.iter().map(|h| (h.name.as_str(), h.value.as_str())),
        &vendor
            .auth()
            .header()
            .into_iter()
            .chain(vendor.idempotency_header())
            .collect::<Vec<_>>(),
        limits,
    )?;
    if req.body.len() > limits.max_request_body_bytes {
        return Err(RequestError::BodyTooLarge(limits.max_request_body_bytes).into());
    }
    let reason = check_reason(&req.reason)?;
    let idempotency_key = check_idempotency_key(&req.idempotency_key, operation, &vendor)?;
    let request = ProxyRequest {
        method,
        path: rel.path.to_owned(),
        query: rel.query.map(str::to_owned),
        headers,
        body: Bytes::from(req.body),
    };
    Ok(ValidCall {
        key: CredentialKey::new(req.tenant, req.vendor),
        vendor,
        operation,
        request,
        reason,
        idempotency_key,
    })
}

/// 1-255 printable ASCII characters; required for WRITE unless the vendor's
/// config relaxes it.
fn check_idempotency_key(
    key: &str,
    operation: Operation,
    vendor: &Vendor,
) -> Result<Option<String>, Failure> {
    if key.is_empty() {
        if operation == Operation::Write && vendor.requires_idempotency_key() {
            return Err(Failure::invalid(
                "idempotency_key",
                Reason::IdempotencyKeyRequired,
                "a WRITE needs an idempotency key (the same key on every retry of the same write)",
            ));
        }
        return Ok(None);
    }
    if key.len() > MAX_IDEMPOTENCY_KEY_LEN || !key.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(Failure::invalid(
            "idempotency_key",
            Reason::IdempotencyKeyInvalid,
            format!("must be 1-{MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters"),
        ));
    }
    Ok(Some(key.to_owned()))
}

fn check_reason(reason: &str) -> Result<String, Failure> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(Failure::invalid(
            "reason",
            Reason::ReasonRequired,
            "say why the credential is used (it is audited)",
        ));
    }
    if reason.chars().count() > MAX_REASON_LEN || reason.chars().any(char::is_control) {
        return Err(Failure::invalid(
            "reason",
            Reason::ReasonInvalid,
            format!("must be at most {MAX_REASON_LEN} printable characters"),
        ));
    }
    Ok(reason.to_owned())
}

/// A caller-supplied name made safe to echo in a message.
fn printable(s: &str) -> String {
    s.chars().take(64).filter(|c| !c.is_control()).collect()
}
