//! Puts `memory.x` where the linker finds it and rebuilds when it or the
//! `MOTE_BROKER_PORT` / `MOTE_EVENTS` settings change.
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::copy("memory.x", out.join("memory.x")).expect("copy memory.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-env-changed=MOTE_BROKER_PORT");
    println!("cargo:rerun-if-env-changed=MOTE_EVENTS");
}
