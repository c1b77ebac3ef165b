//! `qkdctl` (built in a later commit).
fn main() {}
