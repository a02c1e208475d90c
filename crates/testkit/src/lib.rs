//! Test kit (dev only): real parts for real tests.
//!
//! # Layout
//!
//! - [`mock_vendor`]: [`MockVendor`], a real hyper server on a free loopback
//!   port (plain HTTP or TLS) that records every request and answers with
//!   scripted statuses, headers, bodies, redirects and delays — or, for any
//!   unscripted path, echoes the request back as JSON (the worst case for
//!   credential leaks).
//! - [`tls`]: [`TestCa`], a CA and a `localhost` certificate generated at
//!   test time.
//! - [`leak`]: [`leak::forms_found`], looks for a canary credential in an
//!   output in every form the scrubber documents (raw, Base64 at any
//!   alignment, hex, and each through percent and JSON-escape decoding).
//! - [`moto`]: [`Moto`], the Secrets Manager emulator (moto's server mode)
//!   on a free port.
//! - [`oauth_provider`]: [`MockOAuth`], an OAuth 2.0 token endpoint
//!   (client credentials, rotating refresh tokens whose reuse revokes the
//!   family, Basic or form client auth, faults) and the API its tokens
//!   open, counting every request.
//! - [`redis_server`]: [`RedisServer`], a private `redis-server` on a free
//!   port that a test can kill and restart.
//! - [`counting_proxy`]: [`CountingProxy`], counts Secrets Manager requests
//!   by operation on their way to the emulator, and can play an outage or
//!   throttling.
//! - [`otlp`]: [`OtlpReceiver`], a real OTLP/gRPC receiver (the collector's
//!   trace and metrics services) that keeps what it is sent.
#![forbid(unsafe_code)]

pub mod counting_proxy;
pub mod leak;
pub mod mock_vendor;
pub mod moto;
pub mod oauth_provider;
pub mod otlp;
pub mod redis_server;
pub mod tls;

pub use counting_proxy::CountingProxy;
pub use mock_vendor::{MockVendor, Recorded, Scripted};
pub use moto::Moto;
pub use oauth_provider::MockOAuth;
pub use otlp::{OtlpReceiver, ReceivedLog, ReceivedSpan};
pub use redis_server::RedisServer;
pub use tls::TestCa;

/// A canary credential unique to this run: if it shows up in any output, a
/// secret leaked.
pub fn canary(label: &str) -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("CANARY-{label}-{nanos:x}-{}", std::process::id())
}
