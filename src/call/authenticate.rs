//! Step 1: who is calling. Shared by the Gateway and the Admin service.
//!
//! An `authorization: Bearer <api key>` header names the caller. Without
//! one, on a listener with mutual TLS, the verified client certificate does:
//! its first DNS SAN must be the `client_identity` bound to a valid,
//! non-admin API key at its creation, whose grant then applies.
//!
//! A key bound to source networks (`allow_cidrs`) is then refused —
//! PERMISSION_DENIED `SOURCE_NOT_ALLOWED`, logged and counted like any
//! refusal — unless the call's source address ([`crate::source`]) is inside
//! one. A key that passes has its use noted ([`valet_access::LastUse`]).

use super::Call;
use crate::app::App;
use crate::refusal::{self, Asked};
use crate::status::{Failure, Reason};
use std::net::IpAddr;
use tonic::Request;
use tonic::metadata::MetadataMap;
use valet_access::{AuthError, Caller, KeyStore};

/// The step: authenticates the call's caller, and notes who it is.
pub fn run(app: &App, call: &mut Call, metadata: &MetadataMap) -> Result<Caller, Failure> {
    let caller = caller(app, metadata, call.identity.as_deref(), call.source)?;
    call.caller = Some(caller.id.clone());
    call.caller_name = Some(caller.name.clone());
    Ok(caller)
}

/// The Admin service's caller of `request`: its key (or client
/// certificate), from the request's source address.
pub fn request_caller<T>(app: &App, request: &Request<T>) -> Result<Caller, Failure> {
    let identity = peer_identity(request);
    caller(
        app,
        request.metadata(),
        identity.as_deref(),
        request_source(app, request),
    )
}

/// The source address of an Admin request (see [`crate::source`]).
pub fn request_source<T>(app: &App, request: &Request<T>) -> Option<IpAddr> {
    crate::source::resolve(
        crate::source::peer(request),
        request.metadata(),
        &app.trusted_proxies,
    )
}

/// Authenticates the caller ([`presented`]), checks its key may be used
/// from `source` (a refusal is on the record: [`crate::refusal`]), and
/// notes the use.
pub fn caller(
    app: &App,
    metadata: &MetadataMap,
    identity: Option<&str>,
    source: Option<IpAddr>,
) -> Result<Caller, Failure> {
    let caller = presented(&app.keys, metadata, identity)?;
    if let Err(refused) = caller.allows_source(source) {
        let asked = Asked {
            what: "use",
            source,
            ..Asked::default()
        };
        return Err(refusal::record(app, &caller, asked, refused.into()));
    }
    app.last_use.touch(&caller.id, source, crate::app::now_ms());
    Ok(caller)
}

/// Authenticates the bearer key in `metadata`, or else the client
/// certificate's `identity`.
/// Two `authorization` entries are refused: which one a proxy or a server
/// honours differs, so accepting either lets one key pass as another.
pub fn presented(keys: &KeyStore, metadata: &MetadataMap, identity: Option<&str>) -> Result<Caller, Failure> {
    let mut values = metadata.get_all("authorization").iter();
    let Some(value) = values.next() else {
        return match identity {
            Some(name) => Ok(keys.authenticate_identity(name)?),
            None => Err(AuthError::Missing.into()),
        };
    };
    if values.next().is_some() {
        return Err(Failure::invalid(
            "authorization",
            Reason::AuthorizationAmbiguous,
            "sent more than once; send exactly one 'authorization: Bearer <api key>'",
        ));
    }
    let value = value.to_str().map_err(|_| AuthError::Scheme)?;
    let (scheme, key) = value.trim().split_once(' ').ok_or(AuthError::Scheme)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Scheme.into());
    }
    Ok(keys.authenticate(key.trim())?)
}

/// The identity in a verified client certificate (mTLS listeners only):
/// its first DNS SAN.
pub fn peer_identity<T>(request: &Request<T>) -> Option<String> {
    let certs = request.peer_certs()?;
    let leaf = webpki::EndEntityCert::try_from(certs.first()?).ok()?;
    leaf.valid_dns_names().next().map(str::to_owned)
}
