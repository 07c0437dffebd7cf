//! The store: what makes acknowledged messages survive a crash.
pub mod journal;
pub mod log;
pub mod record;
pub mod recover;
pub mod spill;
