//! The control listener (built in the next commit).
