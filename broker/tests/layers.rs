//! Keeps the broker's layers honest (`docs/architecture.md`):
//! - `proto/` is the protocol without I/O: no tokio, no `std::fs`, no `std::net`, and no
//!   clock reads (`Instant::now`, `SystemTime`); time is an argument.
//! - `store/` knows nothing of the protocol: nothing from `proto/` (or `runtime/`).
//!
//! Unit tests at the bottom of a file (after `#[cfg(test)]`), `proto/tests.rs` and the
//! files under `proto/tests/` may read the clock to start virtual time; they are not
//! scanned.

use std::fs;
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The lines of `path` that are not unit tests, numbered from 1.
fn non_test_lines(path: &Path) -> Vec<(usize, String)> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .take_while(|l| l.trim() != "#[cfg(test)]")
        .enumerate()
        .map(|(i, l)| (i + 1, l.to_owned()))
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .collect()
}

/// Finds lines of the files under `dir` that mention any of `banned`.
fn violations(dir: &str, banned: &[&str], skip: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir);
    let mut found = Vec::new();
    let files = sources(&root);
    assert!(!files.is_empty(), "no sources under {}", root.display());
    for f in files {
        let under = |dir: &str| f.parent().is_some_and(|p| p.ends_with(dir));
        if skip.iter().any(|s| f.ends_with(s) || under(s)) {
            continue;
        }
        for (n, line) in non_test_lines(&f) {
            for b in banned {
                if line.contains(b) {
                    found.push(format!("{}:{n}: `{b}` in: {}", f.display(), line.trim()));
                }
            }
        }
    }
    found
}

#[test]
fn proto_does_no_io_and_reads_no_clock() {
    let banned = [
        "tokio",
        "std::fs",
        "fs::",
        "std::net",
        "Instant::now",
        "SystemTime",
        "std::thread",
        "crate::runtime",
    ];
    let found = violations("proto", &banned, &["proto/tests.rs", "proto/tests"]);
    assert!(
        found.is_empty(),
        "proto/ must stay sans-IO:\n{}",
        found.join("\n")
    );
}

#[test]
fn store_knows_nothing_of_the_protocol() {
    let banned = ["crate::proto", "crate::runtime", "super::super"];
    let found = violations("store", &banned, &[]);
    assert!(
        found.is_empty(),
        "store/ must not use proto/ or runtime/:\n{}",
        found.join("\n")
    );
}
