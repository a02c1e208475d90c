//! The generated `valet.v1` protocol types and services.
#![allow(missing_docs, unreachable_pub, clippy::all)]

tonic::include_proto!("valet.v1");
