//! Valet's gRPC contract: the generated `valet.v1` messages, clients and
//! servers, for a Rust caller that needs them without the gateway.
//!
//! ```no_run
//! # async fn call() -> Result<(), Box<dyn std::error::Error>> {
//! use valet_proto::{CallRequest, Operation, gateway_client::GatewayClient};
//! let mut gateway = GatewayClient::connect("http://127.0.0.1:50051").await?;
//! let mut req = tonic::Request::new(CallRequest {
//!     tenant: "acme".into(),
//!     vendor: "mock".into(),
//!     operation: Operation::Read as i32,
//!     method: "GET".into(),
//!     path: "/v1/users".into(),
//!     reason: "nightly_sync".into(),
//!     ..Default::default()
//! });
//! req.metadata_mut().insert("authorization", "Bearer vk_…".parse()?);
//! let answer = gateway.call(req).await?.into_inner();
//! # Ok(()) }
//! ```
//!
//! Messages that carry a secret (`PutCredentialRequest.secret`,
//! `RotateCredentialRequest.secret`, `CreateApiKeyResponse.key`,
//! `RotateApiKeyResponse.key`) have a redacted `Debug` written here, so
//! logging or printing one never shows the secret.
#![forbid(unsafe_code)]

pub mod codec;

mod generated {
    #![allow(missing_docs, unreachable_pub, clippy::all)]
    tonic::include_proto!("valet.v1");
}
pub use generated::*;

/// The encoded descriptors of `valet.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("valet_descriptor");

impl std::fmt::Debug for PutCredentialRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutCredentialRequest")
            .field("tenant", &self.tenant)
            .field("vendor", &self.vendor)
            .field("secret", &"[REDACTED]")
            .finish()
    }
}

impl std::fmt::Debug for RotateCredentialRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotateCredentialRequest")
            .field("tenant", &self.tenant)
            .field("vendor", &self.vendor)
            .field("secret", &"[REDACTED]")
            .finish()
    }
}

impl std::fmt::Debug for CreateApiKeyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateApiKeyResponse")
            .field("key", &"[REDACTED]")
            .field("info", &self.info)
            .finish()
    }
}

impl std::fmt::Debug for RotateApiKeyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotateApiKeyResponse")
            .field("key", &"[REDACTED]")
            .field("info", &self.info)
            .field("previous", &self.previous)
            .finish()
    }
}

/// A small builder, so the CLI, tests and benches do not spell out every
/// field of a key request.
impl CreateApiKeyRequest {
    /// A Gateway key named `name` for these tenants, vendors and operations
    /// (`"*"` for any tenant or vendor); no expiry, no admin rights.
    pub fn gateway(name: &str, tenants: &[&str], vendors: &[&str], operations: &[Operation]) -> Self {
        Self {
            name: name.to_owned(),
            tenants: tenants.iter().map(|t| (*t).to_owned()).collect(),
            vendors: vendors.iter().map(|v| (*v).to_owned()).collect(),
            operations: operations.iter().map(|o| *o as i32).collect(),
            ..Self::default()
        }
    }

    /// Usable only from these networks (CIDRs or addresses).
    pub fn with_allow_cidrs(mut self, cidrs: &[&str]) -> Self {
        self.allow_cidrs = cidrs.iter().map(|c| (*c).to_owned()).collect();
        self
    }

    /// Expires `seconds` after creation (0: never).
    pub fn with_ttl_seconds(mut self, seconds: u64) -> Self {
        self.ttl_seconds = seconds;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_messages_are_redacted() {
        let put = PutCredentialRequest {
            tenant: "acme".into(),
            vendor: "mock".into(),
            secret: "canary-proto-secret".into(),
        };
        let created = CreateApiKeyResponse {
            key: "vk_canary-proto-key".into(),
            info: None,
        };
        let rotated = RotateApiKeyResponse {
            key: "vk_canary-rotated-key".into(),
            ..Default::default()
        };
        let shown = format!("{put:?} {created:?} {rotated:?}");
        assert!(!shown.contains("canary"), "{shown}");
        assert!(shown.contains("acme"));
    }
}
