//! Egress: everything between a validated call and the vendor's socket.
//!
//! # Layout
//!
//! - [`path`]: the rules for a caller's relative path (no escapes from the
//!   vendor's base URL).
//! - [`request`]: method, header and size rules, and [`Limits`].
//! - [`vendor`]: [`Vendor`] — base URL, [`AuthScheme`] injection, a pooled
//!   rustls client per vendor (public roots, or the vendor's `ca_file`), and
//!   [`Vendor::send`], the one way out.
//! - [`send`]: the call's loop — a slot in the vendor's concurrency limit,
//!   then attempts through the breaker, retried when it is safe, and the
//!   [`Sent`] that says what happened.
//! - [`attempt`]: one outbound request — join and re-check the URL, inject
//!   the credential and the trace context, send without following redirects
//!   under a client span, bound time and size.
//! - [`token`]: an OAuth vendor's [`OAuthSpec`], the [`GrantMaterial`]
//!   stored for a tenant, and its [`TokenEndpoint`], reached through the
//!   same guarded client as the vendor.
//! - [`identity`]: [`ClientIdentity`], a tenant's client certificate, and
//!   the connection pools per identity that mutual TLS needs.
//! - [`scrub`]: [`Scrubber`] — removes the credential in every documented
//!   form (raw, Base64 at any alignment, hex, percent and JSON escapes), one
//!   automaton built per call, and applies it to an answer's headers and
//!   body.
//! - [`retry`]: which failed attempts are tried again, backoff with full
//!   jitter, `Retry-After`, and the per-vendor retry budget.
//! - [`breaker`]: the per-vendor circuit breaker.
//! - [`answers`]: [`AnswerBudget`], one memory bound for every vendor answer
//!   buffered at once.
//! - [`resolve`]: SSRF and DNS defences — the resolver that refuses
//!   loopback, private, link-local and similar addresses.
//! - this file: the [`Registry`] of vendors, the request and answer types,
//!   [`Exchange`], [`Sent`] and [`Reached`], and [`EgressError`].
#![forbid(unsafe_code)]

pub mod answers;
pub mod attempt;
pub mod breaker;
pub mod identity;
pub mod path;
pub mod request;
pub mod resolve;
pub mod retry;
pub mod scrub;
pub mod send;
pub mod token;
pub mod vendor;

pub use answers::{AnswerBudget, Reservation};
pub use breaker::{BreakerPolicy, BreakerState};
pub use identity::ClientIdentity;
pub use path::{PathError, RelativePath};
pub use request::{Limits, RequestError};
pub use retry::RetryPolicy;
pub use scrub::Scrubber;
pub use token::{ClientAuth, Grant, GrantMaterial, OAuthSpec, TokenEndpoint, TokenEndpointError};
pub use vendor::{AuthScheme, Vendor, VendorError, VendorSpec, VerifyRequest};

use bytes::Bytes;
use http::{HeaderMap, Method};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use valet_credentials::Secret;
use valet_telemetry::Metrics;

/// The configured vendors, by name.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    vendors: HashMap<String, Arc<Vendor>>,
}

impl Registry {
    /// A registry of ready vendors.
    pub fn new(vendors: impl IntoIterator<Item = Vendor>) -> Self {
        Self {
            vendors: vendors
                .into_iter()
                .map(|v| (v.name().to_owned(), Arc::new(v)))
                .collect(),
        }
    }

    /// The vendor called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Vendor>> {
        self.vendors.get(name)
    }

    /// Every vendor.
    pub fn vendors(&self) -> impl Iterator<Item = &Arc<Vendor>> {
        self.vendors.values()
    }

    /// This registry, with each vendor whose entry is unchanged from
    /// `before` taken from `before`: its connections, breaker, retry budget
    /// and in-flight count carry over a config reload. Also says, by name,
    /// what differs from `before`.
    pub fn carry_over(mut self, before: &Registry) -> (Self, Replaced) {
        let mut replaced = Replaced::default();
        for (name, vendor) in &mut self.vendors {
            match before.vendors.get(name) {
                Some(old) if old.spec == vendor.spec => *vendor = Arc::clone(old),
                Some(_) => replaced.changed.push(name.clone()),
                None => replaced.added.push(name.clone()),
            }
        }
        replaced.removed = before
            .vendors
            .keys()
            .filter(|name| !self.vendors.contains_key(*name))
            .cloned()
            .collect();
        for names in [&mut replaced.added, &mut replaced.changed, &mut replaced.removed] {
            names.sort_unstable();
        }
        (self, replaced)
    }
}

/// The registry in force, replaced whole when the config is reloaded. A
/// call keeps the `Arc<Vendor>` it looked up, so a reload never changes a
/// call already under way.
#[derive(Debug)]
pub struct Vendors {
    current: std::sync::RwLock<Arc<Registry>>,
}

impl Vendors {
    /// Starts with `registry`.
    pub fn new(registry: Registry) -> Self {
        Self {
            current: std::sync::RwLock::new(Arc::new(registry)),
        }
    }

    /// The registry now.
    pub fn current(&self) -> Arc<Registry> {
        Arc::clone(&self.current.read().expect("lock"))
    }

    /// The vendor called `name` now.
    pub fn get(&self, name: &str) -> Option<Arc<Vendor>> {
        self.current.read().expect("lock").get(name).cloned()
    }

    /// Puts `next` in force (after [`Registry::carry_over`] from the one it
    /// replaces); returns what changed.
    pub fn replace(&self, next: Registry) -> Replaced {
        let mut current = self.current.write().expect("lock");
        let (next, replaced) = next.carry_over(&current);
        *current = Arc::new(next);
        replaced
    }
}

/// What replacing a registry changed, by vendor name (each list sorted).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replaced {
    /// Vendors new in the registry.
    pub added: Vec<String>,
    /// Vendors whose entry changed: rebuilt, with new connections and a
    /// closed breaker.
    pub changed: Vec<String>,
    /// Vendors no longer in the registry.
    pub removed: Vec<String>,
}

/// A checked request, ready to be sent with a credential.
#[derive(Debug, Clone)]
pub struct ProxyRequest {
    /// The HTTP method.
    pub method: Method,
    /// The path part, checked by [`path::parse`].
    pub path: String,
    /// The query, without `?`, checked against the vendor's credential
    /// parameter.
    pub query: Option<String>,
    /// Checked caller headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

/// The vendor's answer, scrubbed.
#[derive(Debug)]
pub struct ProxyResponse {
    /// HTTP status.
    pub status: u16,
    /// Headers in order, names lower case, hop-by-hop removed.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Bytes,
    /// The body's room in the [`AnswerBudget`], given back when dropped.
    pub held: Reservation,
}

/// Why the vendor call failed. Messages name the vendor, never its address
/// or the credential.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// No connection could be made (refused, DNS, connect timeout).
    #[error("vendor {0} is unreachable")]
    Unreachable(String),
    /// The TLS handshake failed (certificate did not verify, protocol).
    #[error("TLS with vendor {0} failed: its certificate did not verify or the handshake failed")]
    Tls(String),
    /// The vendor did not answer within its timeout.
    #[error("vendor {vendor} did not answer within {timeout_ms} ms")]
    VendorTimeout {
        /// The vendor.
        vendor: String,
        /// The timeout that expired.
        timeout_ms: u128,
    },
    /// The caller's deadline expired first.
    #[error("the call's deadline expired while waiting for vendor {0}")]
    Deadline(String),
    /// The connection failed after the request was sent, or the answer was
    /// not valid HTTP (including a status outside 100–599).
    #[error("vendor {0} closed the connection or sent an invalid response")]
    Protocol(String),
    /// The response body exceeded the limit.
    #[error("vendor {vendor} response is larger than {limit} bytes")]
    ResponseTooLarge {
        /// The vendor.
        vendor: String,
        /// The limit.
        limit: usize,
    },
    /// The vendor compressed its response although asked not to; it cannot
    /// be scrubbed, so it is not returned.
    #[error("vendor {0} sent an encoded (compressed) response, which cannot be checked for credentials")]
    ResponseEncoded(String),
    /// The joined URL left the vendor's origin (a bug guard).
    #[error("path would leave vendor {0}'s base URL")]
    OriginMismatch(String),
    /// The vendor's circuit breaker is open.
    #[error("vendor {vendor} is failing; calls to it are paused for {} ms", retry_after.as_millis())]
    CircuitOpen {
        /// The vendor.
        vendor: String,
        /// When a call may be tried again.
        retry_after: Duration,
    },
    /// The vendor's host resolved only to addresses Valet refuses to reach.
    #[error("vendor {vendor}'s host resolves only to {class} addresses, which are refused")]
    AddressForbidden {
        /// The vendor.
        vendor: String,
        /// The refused class.
        class: &'static str,
    },
    /// Too many requests to this vendor are in flight.
    #[error("too many calls to vendor {0} are in flight; retry shortly")]
    Overloaded(String),
    /// The answers buffered by all calls already fill the memory budget.
    #[error(
        "vendor {0}'s answer could not be buffered: answers in memory fill limits.max_buffered_response_bytes; retry shortly"
    )]
    AnswersOverBudget(String),
}

impl EgressError {
    /// The stable reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            EgressError::Unreachable(_) => "VENDOR_UNREACHABLE",
            EgressError::Tls(_) => "VENDOR_TLS_ERROR",
            EgressError::VendorTimeout { .. } => "VENDOR_TIMEOUT",
            EgressError::Deadline(_) => "DEADLINE_EXCEEDED",
            EgressError::Protocol(_) => "VENDOR_PROTOCOL_ERROR",
            EgressError::ResponseTooLarge { .. } => "RESPONSE_TOO_LARGE",
            EgressError::ResponseEncoded(_) => "VENDOR_RESPONSE_ENCODED",
            EgressError::OriginMismatch(_) => "PATH_ESCAPES_ORIGIN",
            EgressError::CircuitOpen { .. } => "VENDOR_CIRCUIT_OPEN",
            EgressError::AddressForbidden { .. } => "VENDOR_ADDRESS_FORBIDDEN",
            EgressError::Overloaded(_) => "VENDOR_OVERLOADED",
            EgressError::AnswersOverBudget(_) => "RESPONSE_BUFFER_EXHAUSTED",
        }
    }

    /// Whether the attempt that failed so may have reached the vendor. No
    /// wildcard: a new error must say which it is.
    pub fn reached(&self) -> Reached {
        match self {
            // Refused before the request was written: the connection or its
            // TLS handshake failed, or Valet's own guards said no.
            EgressError::Unreachable(_)
            | EgressError::Tls(_)
            | EgressError::OriginMismatch(_)
            | EgressError::AddressForbidden { .. }
            | EgressError::CircuitOpen { .. }
            | EgressError::Overloaded(_) => Reached::No,
            // Sent, or perhaps sent: the time ran out or the connection
            // broke somewhere along the way, or the answer had begun to come
            // back (an answer over a limit or the buffer budget, encoded).
            EgressError::VendorTimeout { .. }
            | EgressError::Deadline(_)
            | EgressError::Protocol(_)
            | EgressError::ResponseTooLarge { .. }
            | EgressError::ResponseEncoded(_)
            | EgressError::AnswersOverBudget(_) => Reached::Maybe,
        }
    }
}

/// How one call's exchange with a vendor is bounded.
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    /// Size limits.
    pub limits: &'a Limits,
    /// Room for buffered answers, shared by every call.
    pub answers: &'a AnswerBudget,
    /// When the caller stops waiting.
    pub deadline: Option<Instant>,
    /// Whether the request may be sent more than once: a READ, or a WRITE
    /// whose vendor dedupes by our idempotency key.
    pub repeatable: bool,
    /// Where attempts are counted.
    pub metrics: &'a Metrics,
    /// The call's trace context, for `traceparent` when no tracer records
    /// the attempt's span.
    pub trace: &'a valet_telemetry::propagation::TraceContext,
    /// Secrets the answer is scrubbed of besides the one injected: an OAuth
    /// vendor's client secret and refresh token.
    pub scrub_also: &'a [Secret],
    /// The tenant's client certificate, for a vendor that wants mutual TLS.
    pub identity: Option<&'a ClientIdentity>,
}

/// Whether anything left Valet for the vendor — what an idempotency key's
/// record needs to know: a key whose request never left is free again, one
/// whose request may have arrived is not. (Like pingora's `ErrorSource`,
/// it is said by the code that knows, not read back from an error's text.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reached {
    /// Nothing was sent: no connection, no TLS session, a URL or address
    /// refused, the breaker open, no slot free.
    No,
    /// A request was sent, or may have been (a timeout, a dropped
    /// connection): the vendor may have acted on it.
    Maybe,
}

/// What [`Vendor::send`] did: the last answer or error, and how many
/// requests were made and whether any of them may have reached the vendor,
/// which hold for a failure as much as for an answer.
#[derive(Debug)]
#[must_use]
pub struct Sent<E = EgressError> {
    /// The answer, scrubbed, or why there is none.
    pub result: Result<ProxyResponse, E>,
    /// Requests made to the vendor (0 when none could start).
    pub attempts: u32,
    /// Whether any of them may have reached it.
    pub reached: Reached,
}

impl<E> Sent<E> {
    /// The same outcome with the error converted (e.g. to the caller's
    /// status).
    pub fn map_err<F>(self, f: impl FnOnce(E) -> F) -> Sent<F> {
        Sent {
            result: self.result.map_err(f),
            attempts: self.attempts,
            reached: self.reached,
        }
    }
}
