//! Mote: an MQTT 3.1.1 and 5.0 broker.
//!
//! Layout follows `DESIGN.md`: `server` accepts, `connection` moves bytes, `broker` and
//! `session` hold every protocol rule without I/O, `trie` matches topics.

pub mod broker;
pub mod config;
pub mod connection;
pub mod message;
mod proto;
pub mod server;
pub mod session;
pub mod store;
pub mod trie;
