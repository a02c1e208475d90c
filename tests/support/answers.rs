//! Reading what the gateway answered: reasons, headers, a run of outcomes.

use super::{Valet, get};
use tonic::Status;
use tonic_types::StatusExt as _;
use valet::proto::CallResponse;

/// The outcomes of `n` READ calls for `tenant` to `mock`, one after
/// another: `"ok"` or the refusal's reason.
pub async fn outcomes(valet: &Valet, key: &str, tenant: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(match valet.call(key, get(tenant, "mock", "/x")).await {
            Ok(_) => "ok".to_owned(),
            Err(e) => reason(&e),
        });
    }
    out
}

/// The ErrorInfo reason of a status.
pub fn reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

/// The response header `name`.
pub fn header<'a>(resp: &'a CallResponse, name: &str) -> Option<&'a str> {
    resp.headers
        .iter()
        .find(|h| h.name == name)
        .map(|h| h.value.as_str())
}
