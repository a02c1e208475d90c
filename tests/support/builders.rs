//! Builders for test inputs: vendor entries, auth schemes, requests.

use tonic::Request;
use valet::config::{AuthConfig, VendorConfig};
use valet::proto::{CallRequest, Operation};

/// A vendor entry for `base_url`.
pub fn vendor(name: &str, base_url: &str, auth: AuthConfig) -> VendorConfig {
    VendorConfig {
        allow_insecure_http: base_url.starts_with("http://"),
        timeout_ms: 10_000,
        ..VendorConfig::new(name, base_url, auth)
    }
}

/// The `[[vendors]]` entry (TOML) of a bearer-token vendor at a loopback
/// `http://` base URL (a mock vendor), for a config file.
pub fn vendor_toml(name: &str, base_url: &str) -> String {
    format!(
        "[[vendors]]\nname = \"{name}\"\nbase_url = \"{base_url}\"\nallow_insecure_http = true\nauth = {{ scheme = \"bearer\" }}\n"
    )
}

pub fn bearer() -> AuthConfig {
    AuthConfig::Bearer {}
}

/// A request with `authorization: Bearer <key>`.
pub fn authed<T>(msg: T, key: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().expect("ascii"));
    req
}

/// A READ GET of `path` for tenant/vendor with a reason.
pub fn get(tenant: &str, vendor: &str, path: &str) -> CallRequest {
    CallRequest {
        tenant: tenant.into(),
        vendor: vendor.into(),
        operation: Operation::Read as i32,
        method: "GET".into(),
        path: path.into(),
        reason: "e2e-test".into(),
        ..Default::default()
    }
}
