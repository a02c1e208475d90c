//! Shared end-to-end harness: a real Valet server in-process on free
//! loopback ports, real tonic clients, and the real mock vendor.
//!
//! # Layout
//!
//! - `inprocess`: [`Valet`], the server in the test's runtime, with clients
//!   and admin helpers.
//! - `process`: [`ValetProcess`], the built binary as a child process, and
//!   `valet admin` runs against it.
//! - `builders`: vendor entries, auth schemes and requests.
//! - `answers`: reasons, headers and outcomes read from the answers.
//! - `ops`: the ops listener's HTTP and Prometheus text.
//! - `oidc`: [`OidcProvider`], oidc-provider (npm) as an OAuth server.
#![allow(dead_code, unreachable_pub)]

mod answers;
mod builders;
mod inprocess;
mod oidc;
mod ops;
mod process;

// One flat face, as before the split; a test file that uses none of a
// file's items leaves its re-export unused.
#[allow(unused_imports)]
pub use {answers::*, builders::*, inprocess::*, oidc::*, ops::*, process::*};
