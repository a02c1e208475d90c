//! The vendor answer a `completed` record replays, as stored (before
//! sealing): Valet's own versioned format, not the public `CallResponse`, so
//! the API can change without making stored records unreadable.
//!
//! Format: one version byte, then the version's encoding. Version 1 is a
//! protobuf message of this module's own (status, headers, body, attempts).
//! Records written before the format existed are an encoded
//! `valet.v1.CallResponse`; no valid protobuf message starts with a byte
//! below 8 (field number 0), so a leading `1` cannot be mistaken for one, and
//! anything else is read once as the old format.

/// The current format's version byte.
pub const VERSION: u8 = 1;

/// A stored vendor answer.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct StoredResponse {
    /// The vendor's HTTP status.
    #[prost(uint32, tag = "1")]
    pub status: u32,
    /// The scrubbed response headers, in order.
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<StoredHeader>,
    /// The scrubbed response body.
    #[prost(bytes = "vec", tag = "3")]
    pub body: Vec<u8>,
    /// How many requests the first call sent to the vendor.
    #[prost(uint32, tag = "4")]
    pub attempts: u32,
}

/// One response header.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct StoredHeader {
    /// The name, lower case.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// A stored response that reads as neither format.
#[derive(Debug, thiserror::Error)]
#[error("stored response is unreadable")]
pub struct Unreadable;

/// The fields of an old record (an encoded `valet.v1.CallResponse`) that a
/// replay uses; its other fields (`replayed`, `request_id`) were stored empty
/// and are skipped.
#[derive(Clone, PartialEq, prost::Message)]
struct LegacyCallResponse {
    #[prost(uint32, tag = "1")]
    status: u32,
    #[prost(message, repeated, tag = "2")]
    headers: Vec<StoredHeader>,
    #[prost(bytes = "vec", tag = "3")]
    body: Vec<u8>,
    #[prost(uint32, tag = "4")]
    attempts: u32,
}

impl StoredResponse {
    /// The bytes to seal: the version byte, then the message.
    pub fn to_bytes(&self) -> Vec<u8> {
        use prost::Message as _;
        let mut out = Vec::with_capacity(1 + self.encoded_len());
        out.push(VERSION);
        self.encode(&mut out).expect("a Vec grows as needed");
        out
    }

    /// Reads a stored response in the current format or the old one.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Unreadable> {
        use prost::Message as _;
        match bytes.split_first() {
            Some((&VERSION, rest)) => Self::decode(rest).map_err(|_| Unreadable),
            Some((first, _)) if *first < 8 => Err(Unreadable),
            _ => {
                let old = LegacyCallResponse::decode(bytes).map_err(|_| Unreadable)?;
                Ok(Self {
                    status: old.status,
                    headers: old.headers,
                    body: old.body,
                    attempts: old.attempts,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> StoredResponse {
        StoredResponse {
            status: 201,
            headers: vec![StoredHeader {
                name: "content-type".into(),
                value: "application/json".into(),
            }],
            body: b"{\"id\":1}".to_vec(),
            attempts: 2,
        }
    }

    #[test]
    fn round_trips_with_a_version_byte() {
        let bytes = answer().to_bytes();
        assert_eq!(bytes[0], VERSION);
        assert_eq!(StoredResponse::from_bytes(&bytes).unwrap(), answer());
    }

    #[test]
    fn unknown_versions_are_unreadable() {
        let mut bytes = answer().to_bytes();
        bytes[0] = 2;
        assert!(StoredResponse::from_bytes(&bytes).is_err());
    }
}
