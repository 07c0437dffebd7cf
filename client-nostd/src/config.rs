//! What a device tells the client once: identity, protocol version, session policy,
//! timers. Everything borrows; a `Config<'static>` is the usual firmware choice.

use mote_codec::{Protocol, QoS, SubscribeFilter};

/// Connection settings. Build with [`Config::new`] and adjust the public fields.
#[derive(Debug, Clone, Copy)]
pub struct Config<'a> {
    /// MQTT version, fixed for the life of the client (default 5.0).
    pub protocol: Protocol,
    /// Client identifier. Keep it non-empty for persistent sessions: an identifier the
    /// broker assigns (MQTT 5) is not kept across reconnects.
    pub client_id: &'a str,
    /// Keep alive in seconds (0 turns keepalive off). An MQTT 5 broker may override it
    /// with Server Keep Alive.
    pub keep_alive: u16,
    /// Clean Session (3.1.1) / Clean Start (5.0) on every CONNECT. With `true` every
    /// connection starts a new session, so stored messages are re-sent as new publishes.
    pub clean_start: bool,
    /// MQTT 5 Session Expiry Interval in seconds. A persistent MQTT 5 session needs a
    /// non-zero value here as well as `clean_start = false`.
    pub session_expiry: Option<u32>,
    /// The will message.
    pub will: Option<Will<'a>>,
    /// User name.
    pub username: Option<&'a str>,
    /// Password.
    pub password: Option<&'a [u8]>,
    /// Filters the client subscribes to by itself after every CONNACK whose Session
    /// Present flag is 0 (so a lost session gets its subscriptions back).
    pub subscriptions: &'a [SubscribeFilter<'a>],
    /// Topic of [`crate::SensorEvent`] publishes. MQTT 5 publishes also carry the
    /// content type [`crate::CONTENT_TYPE`]; a 3.1.1 backend tells events by this topic
    /// (subscribe to its prefix, e.g. `mote/events/#`).
    pub event_topic: &'a str,
    /// Milliseconds to wait for a transport, a CONNACK, or a PINGRESP.
    pub timeout_ms: u32,
    /// First reconnect delay in milliseconds; doubled after each failure.
    pub backoff_min_ms: u32,
    /// Largest reconnect delay in milliseconds.
    pub backoff_max_ms: u32,
}

/// The will message: published by the broker when the connection ends without a
/// DISCONNECT (a dead device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Will<'a> {
    /// Topic of the will.
    pub topic: &'a str,
    /// Payload of the will.
    pub payload: &'a [u8],
    /// QoS of the will.
    pub qos: QoS,
    /// Retain flag of the will.
    pub retain: bool,
}

impl<'a> Config<'a> {
    /// MQTT 5, keep alive 60 s, clean start, no will or credentials, events on
    /// `mote/events`, 10 s timeouts, reconnect backoff from 0.5 s up to 30 s.
    pub const fn new(client_id: &'a str) -> Self {
        Config {
            protocol: Protocol::V5,
            client_id,
            keep_alive: 60,
            clean_start: true,
            session_expiry: None,
            will: None,
            username: None,
            password: None,
            subscriptions: &[],
            event_topic: "mote/events",
            timeout_ms: 10_000,
            backoff_min_ms: 500,
            backoff_max_ms: 30_000,
        }
    }
}
