//! Valet: a gRPC integration gateway. Internal services call
//! `valet.v1.Gateway/Call`; Valet injects the tenant's vendor credential,
//! calls the vendor, scrubs the answer, and audits every credential use.
//!
//! # Layout
//!
//! - [`config`]: the TOML configuration, typed and checked.
//! - [`app`]: shared state opened from the config (vault, API keys, audit
//!   log, vendor registry), and first-start bootstrap.
//! - [`call`]: one call's steps in order, each in its own module, around
//!   one [`Call`](call::Call) context — [`authenticate`](call::authenticate),
//!   [`validate`](call::validate), [`authorize`](call::authorize),
//!   [`idempotency`](call::idempotency) (claim the key or replay the stored
//!   answer), [`quota`](call::quota), [`forward`](call::forward) (the
//!   exchange: [`lease`](call::lease), for an OAuth vendor the access token
//!   ([`oauth`]), send through egress, push-back, and after a vendor 401
//!   [`refresh`](call::refresh) and retry once), and
//!   [`record`](call::record) (span attributes, metrics, the log line of the
//!   finished call).
//! - [`source`]: the caller's source address — the TCP peer, or behind
//!   `server.trusted_proxies` the x-forwarded-for hop they vouch for.
//! - [`refusal`]: an authenticated caller's refusal, on the audit record
//!   (`access_denied`).
//! - [`deadline`]: the caller's `grpc-timeout`, read strictly on arrival.
//! - [`gateway`]: the Gateway gRPC service — transport only, around
//!   [`call`].
//! - [`admin`]: the Admin gRPC service (credentials and their rotation, API
//!   keys, quota policies, tenants: the kill switch and offboarding; reading
//!   the audit log).
//! - [`sweeper`]: removes what an offboarding retained, after its date.
//! - [`expiry`]: audit retention by class, hourly.
//! - [`reminder`]: counts credentials due for rotation.
//! - [`oauth`]: OAuth 2.0 vendors — the vault and audit log behind
//!   [`valet_oauth::Tokens`], and the access token a call sends in place of
//!   the grant material it leased.
//! - [`reload`]: SIGHUP — the config file read again; vendors and default
//!   quota policies replaced while calls go on.
//! - [`status`]: [`Reason`](status::Reason), every stable reason with its
//!   gRPC code and wire string, and the one mapping from failures to gRPC
//!   statuses.
//! - [`server`]: listeners and serving with graceful shutdown; health
//!   driven by [`readiness`] (draining, required backends).
//! - [`ops`]: the ops HTTP listener — `/metrics`, `/healthz`, `/readyz`.
//! - [`transport`]: before a service runs — each listener's accept loop
//!   (connection cap, handshake timeout) and the rescue layer that answers
//!   tonic's own refusals (oversized or malformed messages) like any other.
//! - [`proto`]: the `valet.v1` types and services, generated in the
//!   `valet-proto` crate (with its codec: a message that does not decode
//!   is INVALID_ARGUMENT), so a Rust caller can depend on that alone.
//! - [`cli`]: the `valet admin` and `valet audit` commands.
//!
//! Domain logic lives in `crates/`: `valet-proto` (the contract),
//! `valet-credentials` (sealing, leases,
//! the rotation workflow), `valet-access` (API keys, grants and their
//! rules), `valet-egress` (vendors, request
//! rules, outbound client, scrubbing), `valet-audit` (hash-chained log),
//! `valet-durable` (atomic file replacement and shredding for the embedded
//! stores), `valet-quota` (policies, GCRA limiters in process or in Redis),
//! `valet-idempotency` (records in redb or Redis, request fingerprints,
//! the stored-response format), and `valet-telemetry`
//! (logs, OTLP traces, metrics, trace context).
#![forbid(unsafe_code)]

/// This build's version (`Cargo.toml`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git revision this build was made from (build.rs), or "unknown".
pub const REVISION: &str = env!("VALET_GIT_REVISION");

/// `valet --version`'s text: the version and the revision.
pub const LONG_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("VALET_GIT_REVISION"), ")");

pub mod admin;
pub mod app;
pub mod call;
pub mod cli;
pub mod config;
pub mod deadline;
pub mod expiry;
pub mod gateway;
pub mod oauth;
pub mod ops;
pub mod proto;
pub mod readiness;
pub mod refusal;
pub mod reload;
pub mod reminder;
pub mod server;
pub mod source;
pub mod status;
pub mod sweeper;
pub mod transport;
