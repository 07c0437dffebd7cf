//! Core-level twins of the end-to-end protocol tests (`tests/tests/raw_protocol.rs`):
//! each rule checked there through a socket is checked here on the core alone, with
//! decoded packets and virtual time, fast and deterministic.

use super::*;

#[test]
fn second_connect_on_a_connection_is_a_protocol_error() {
    // MQTT-3.1.0-2; raw_protocol.rs: `second_connect_is_a_protocol_error`.
    let mut core = core();
    let now = Instant::now();
    for protocol in [Protocol::V311, Protocol::V5] {
        let mut c = connect(&mut core, protocol, "twice", true, None, now);
        let again = connect_packet(protocol, "twice", true, Properties::default());
        let r = send(&mut core, &mut c, &Packet::Connect(again), now);
        assert_eq!(r, Err(Close::Error(reason::PROTOCOL_ERROR)), "{protocol:?}");
    }
}
