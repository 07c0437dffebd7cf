//! The store: what makes acknowledged messages survive a crash.
pub(crate) mod fsync;
pub(crate) mod journal;
pub(crate) mod log;
pub(crate) mod record;
pub(crate) mod recover;
pub(crate) mod spill;
pub(crate) mod stream;
