//! The `valet.v1.Gateway` service — transport only: a [`Call`] from the
//! request (request id, deadline, client identity, source address, the
//! caller's trace context), admission (a well-formed deadline, a free slot), the
//! [`crate::call`] steps under the call's server span, its record
//! ([`crate::call::record`]), and the answer with its metadata.

use crate::app::App;
use crate::call::record::Recorder;
use crate::call::{self, Call, authenticate};
use crate::deadline::CallerDeadline;
use crate::proto::{self, gateway_server::Gateway};
use crate::status::{Failure, Reason};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;
use valet_telemetry::{propagation, sampling};

/// The Gateway service.
#[derive(Debug, Clone)]
pub struct GatewayService {
    app: Arc<App>,
    /// One permit per call being handled.
    slots: Arc<Semaphore>,
}

impl GatewayService {
    /// Serves calls with `app`, at most `max_concurrent_calls` at once.
    pub fn new(app: Arc<App>, max_concurrent_calls: usize) -> Self {
        Self {
            app,
            slots: Arc::new(Semaphore::new(max_concurrent_calls)),
        }
    }
}

#[tonic::async_trait]
impl Gateway for GatewayService {
    async fn call(
        &self,
        request: Request<proto::CallRequest>,
    ) -> Result<Response<proto::CallResponse>, Status> {
        // Read on arrival by the DeadlineLayer; read here if it is absent.
        let arrival = request
            .extensions()
            .get::<CallerDeadline>()
            .copied()
            .unwrap_or_else(|| CallerDeadline::read(request.metadata().as_ref(), Instant::now()));
        let deadline = match arrival {
            CallerDeadline::At(at) => Some(at),
            CallerDeadline::None | CallerDeadline::Invalid => None,
        };
        let trace = propagation::TraceContext::from_caller(request.metadata());
        let mut call = Call::new(
            new_request_id(),
            deadline,
            authenticate::peer_identity(&request),
            trace,
        );
        call.source = crate::source::resolve(
            crate::source::peer(&request),
            request.metadata(),
            &self.app.trusted_proxies,
        );
        propagation::continue_trace(&call.span, request.metadata());
        // An unsampled call makes no spans at all (see `sampling`): its
        // trace context still goes to the vendor and the log line.
        let sampled = propagation::sampled(&call.span);
        if !sampled {
            call.span = tracing::Span::none();
        }
        let mut recorder = Recorder::new(&self.app, call);
        let result = match self.admit(arrival) {
            // Held until the call is answered.
            Ok(_slot) => {
                let (metadata, _, req) = request.into_parts();
                let span = recorder.call.span.clone();
                let handled = call::handle(&self.app, &mut recorder.call, &metadata, req).instrument(span);
                sampling::within_call(sampled, handled).await
            }
            Err(refused) => Err(refused),
        };
        recorder.finish(result.as_ref().err().map_or(Reason::Ok, |f| f.reason));
        let call = &recorder.call;
        match result {
            Ok(answer) => {
                let mut response = Response::new(answer);
                if let Ok(id) = call.request_id.parse() {
                    response.metadata_mut().insert("x-request-id", id);
                }
                for (name, value) in &call.ratelimit {
                    if let Ok(value) = value.parse() {
                        response.metadata_mut().insert(*name, value);
                    }
                }
                Ok(response)
            }
            Err(failure) => Err(failure.into_status(Some(&call.request_id))),
        }
    }
}

impl GatewayService {
    /// Whether the call may start: its deadline is well-formed (a spent one
    /// was answered on arrival by the DeadlineLayer), and a slot is free —
    /// load is shed at once rather than queued without bound.
    fn admit(&self, arrival: CallerDeadline) -> Result<OwnedSemaphorePermit, Failure> {
        if arrival == CallerDeadline::Invalid {
            return Err(Failure::invalid(
                "grpc-timeout",
                Reason::DeadlineInvalid,
                "must be 1 to 8 digits and a unit (H, M, S, m, u or n), sent once",
            ));
        }
        self.slots.clone().try_acquire_owned().map_err(|_| {
            Failure::new(
                Reason::Overloaded,
                "Valet is handling as many calls as it is configured for; retry shortly",
            )
            .with_retry_after(Duration::from_secs(1))
        })
    }
}

/// A fresh request id: `req_` and 24 hex digits.
pub fn new_request_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    // Unique, not secret: a random prefix per process and a counter, so a
    // call costs no system call for its id.
    static PREFIX: std::sync::OnceLock<[u8; 8]> = std::sync::OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).expect("the OS random source is available");
        bytes
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("req_{}{n:08x}", hex::encode(prefix))
}
