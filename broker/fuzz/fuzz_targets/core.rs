//! The broker's protocol core fed operation sequences through its sans-IO interface:
//! the input's bytes are the choices of `mote_broker::fuzzing::run_input` (clients of
//! MQTT 3.1.1 and 5.0 connecting, resuming and taking over, packets built from the
//! bytes and raw frames read as the connection task reads them, acknowledgements,
//! virtual time, crashes and recovery), which checks its invariants at every step and
//! panics when one breaks.
//!
//! `MOTE_FUZZ_VERBOSE=1` prints every operation (to replay an artifact).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// Whether to print every operation (read once).
fn verbose() -> bool {
    static VERBOSE: OnceLock<bool> = OnceLock::new();
    *VERBOSE.get_or_init(|| std::env::var_os("MOTE_FUZZ_VERBOSE").is_some_and(|v| v == "1"))
}

fuzz_target!(|data: &[u8]| {
    mote_broker::fuzzing::run_input(data, verbose());
});
