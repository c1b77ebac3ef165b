//! The one integration-test binary of qkd-kms.

mod etsi014;
mod etsi_fixture;
mod fake;
mod fuzz_corpus;
mod hybrid;
mod skip;
