//! The HTTPS shell of the ETSI 014 front end (work in progress).

/// Placeholder until the shell lands.
pub async fn serve() {}
