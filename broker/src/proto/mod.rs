//! The sans-IO protocol core's data structures (the lead replaces this file).
#![allow(dead_code)]
pub(crate) mod queue;
pub(crate) mod retained;
pub(crate) mod timers;
