//! Mote: an MQTT 3.1.1 and 5.0 broker.
//!
//! Layout follows `DESIGN.md`: `server` accepts, `connection` moves bytes, `session` holds
//! every protocol rule without I/O, `router` matches topics, `store` keeps state.

pub mod config;
pub mod trie;
