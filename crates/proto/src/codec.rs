//! The protobuf codec of Valet's generated services: prost's, except that a
//! message that does not decode is the sender's fault, not Valet's.
//!
//! tonic-prost answers a prost `DecodeError` (a truncated message, a wrong
//! wire type, invalid UTF-8 in a string field) with INTERNAL. Here it is
//! INVALID_ARGUMENT `MESSAGE_MALFORMED` with an `ErrorInfo`, and the status
//! carries a [`Malformed`] source so that the gateway's rescue layer
//! (`valet::transport`) can tag it with a request id and log it like any
//! other refusal. The reason and domain are the gateway's (`valet::status`
//! tests that they match).

use std::marker::PhantomData;
use std::sync::Arc;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstEncoder};

/// The codec named by `build.rs` for every generated service and client.
#[derive(Debug, Clone)]
pub struct ValetCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for ValetCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for ValetCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ValetDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ValetDecoder { _pd: PhantomData }
    }
}

/// prost's decoder, with its errors answered as the sender's.
#[derive(Debug)]
pub struct ValetDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: prost::Message + Default> Decoder for ValetDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        match U::decode(buf) {
            Ok(message) => Ok(Some(message)),
            Err(e) => Err(malformed(e.to_string())),
        }
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// The marker a malformed-message status carries as its source.
#[derive(Debug, Clone, thiserror::Error)]
#[error("malformed message: {0}")]
pub struct Malformed(pub String);

/// The stable reason of a message that does not decode.
pub const MALFORMED_REASON: &str = "MESSAGE_MALFORMED";

/// The `ErrorInfo` domain of Valet's reasons.
pub const DOMAIN: &str = "valet";

/// INVALID_ARGUMENT `MESSAGE_MALFORMED`; `why` is prost's or tonic's
/// description, which names a field or the framing, never a value.
pub fn malformed(why: String) -> Status {
    use tonic_types::{ErrorDetails, StatusExt as _};
    let details = ErrorDetails::with_error_info(MALFORMED_REASON, DOMAIN, std::collections::HashMap::new());
    let mut status = Status::with_error_details(
        tonic::Code::InvalidArgument,
        format!("the request message is not valid: {why}"),
        details,
    );
    status.set_source(Arc::new(Malformed(why)));
    status
}
