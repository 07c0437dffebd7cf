//! Writes the seed corpus of the `core` target: the choices of seeded cases of
//! `mote_broker::fuzzing` (raw frames among their operations), as the target reads
//! them, one file per case.
//!
//! `cargo run --example gen_corpus -- corpus/core [CASES] [STEPS]` (default 30 cases of
//! 24 steps); the files are named after their case and replaced when they exist.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "corpus/core".to_owned()));
    let number =
        |a: Option<String>, default: u64| a.and_then(|a| a.parse().ok()).unwrap_or(default);
    let cases = number(args.next(), 30);
    let steps = number(args.next(), 24);
    std::fs::create_dir_all(&dir)?;
    let mut total = 0;
    for case in 0..cases {
        let input = mote_broker::fuzzing::record_input(
            mote_broker::fuzzing::case_seed(case),
            steps as usize,
        );
        total += input.len();
        std::fs::write(dir.join(format!("seed-{case:03}")), input)?;
    }
    println!("{cases} inputs, {total} bytes, in {}", dir.display());
    Ok(())
}
