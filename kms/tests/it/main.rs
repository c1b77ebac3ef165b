//! The one integration-test binary of qkd-kms.

mod etsi014;
mod fuzz_corpus;
mod grpc;
mod hybrid;
mod skip;
