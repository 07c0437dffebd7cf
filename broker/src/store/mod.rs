//! The store: what makes acknowledged messages survive a crash.
pub mod log;
