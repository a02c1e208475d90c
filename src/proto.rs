//! The `valet.v1` protocol types and services, from `valet-proto`, and the
//! one conversion the gateway adds: a vendor's answer into a `CallResponse`.

pub use valet_proto::*;

/// The vendor's (scrubbed) answer as the caller gets it; the call fills in
/// `attempts`, `replayed` and `request_id`.
pub fn call_response(answer: valet_egress::ProxyResponse) -> CallResponse {
    CallResponse {
        status: u32::from(answer.status),
        headers: answer
            .headers
            .into_iter()
            .map(|(name, value)| Header { name, value })
            .collect(),
        body: answer.body.to_vec(),
        ..CallResponse::default()
    }
}
