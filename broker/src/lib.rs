//! Mote: an MQTT 3.1.1 and 5.0 broker.
//!
//! Three layers (`docs/architecture.md` is the map):
//! - [`proto`]: the protocol as a state machine without I/O — packets and time in,
//!   packets, wake-ups and journal records out;
//! - `store`: the embedded log below it (records, group commit, recovery, spill files),
//!   which knows nothing of the protocol's types;
//! - [`runtime`]: tokio — listeners, one task per connection, the durability gate, the
//!   ticker, shutdown.

pub mod admin;
pub mod config;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod json;
mod proto;
pub mod runtime;
mod store;
