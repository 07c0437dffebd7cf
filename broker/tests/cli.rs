//! The command-line contract of `mote` (DESIGN.md): flags, `--print-config`, the ready
//! line, clean exit on SIGTERM. (Also makes `cargo test` build the binary that the
//! end-to-end tests in `tests/` start.)
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_mote");

#[test]
fn print_config_merges_file_and_flags() {
    let dir = std::env::temp_dir().join(format!("mote-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.toml");
    std::fs::write(
        &file,
        "[mqtt]\nmax_keepalive = 60\ndeny_subscribe = [\"test/nosubscribe\"]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args([
            "--print-config",
            "--memory",
            "--mqtt",
            "127.0.0.1:4000",
            "--config",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("max_keepalive = 60"), "{text}");
    assert!(text.contains("test/nosubscribe"), "{text}");
    assert!(text.contains("127.0.0.1:4000"), "{text}");
    assert!(text.contains("memory = true"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_config_key_is_an_error() {
    let file = std::env::temp_dir().join(format!("mote-cli-bad-{}.toml", std::process::id()));
    std::fs::write(&file, "[mqtt]\nmax_keepalivee = 60\n").unwrap();
    let out = Command::new(BIN)
        .arg("--print-config")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_keepalivee"));
    let _ = std::fs::remove_file(&file);
}

#[test]
fn ready_line_then_clean_exit_on_sigterm() {
    let mut child = Command::new(BIN)
        .args(["--memory", "--mqtt", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("listening mqtt=127.0.0.1:"));
    assert!(ready.is_some(), "no ready line");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let mut status = None;
    for _ in 0..100 {
        if let Some(st) = child.try_wait().unwrap() {
            status = Some(st);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        status.is_some_and(|s| s.success()),
        "did not exit cleanly: {status:?}"
    );
}
