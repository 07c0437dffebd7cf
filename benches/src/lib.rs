//! Criterion benchmarks of `mote-codec` against `mqttbytes` 0.6: see `benches/codec.rs` and `RESULTS.md`.
