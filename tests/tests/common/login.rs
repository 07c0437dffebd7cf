//! Logins from outside: `mote passwd` run as an operator runs it, and a
//! `mosquitto_pub` that must be refused at CONNECT (`auth.rs`, `jwt.rs`, `http.rs`,
//! `limits.rs`).

use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use mote_tests::{mote_bin, Broker};

use super::Proc;

pub(crate) fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `mote passwd ARGS...` with `stdin` piped to it (20 s at most); returns its status
/// (`None`: it had to be killed), stdout and stderr.
pub(crate) fn mote_passwd(args: &[&str], stdin: &str) -> (Option<ExitStatus>, String, String) {
    let mut cmd = Command::new(mote_bin());
    cmd.arg("passwd").args(args);
    // A refused command line may exit before reading: a broken pipe is fine then.
    let (child, _written) = mote_tests::spawn_fed(&mut cmd, stdin.as_bytes());
    child.wait_output(Duration::from_secs(20))
}

/// `printf 'PASSWORD\n' | mote passwd FILE USER`, asserting it succeeded.
#[track_caller]
pub(crate) fn set_password(file: &Path, user: &str, password: &str) {
    let (st, out, err) = mote_passwd(&[path_str(file), user], &format!("{password}\n"));
    assert!(
        st.is_some_and(|s| s.success()),
        "mote passwd {} {user} failed: {st:?}\n--- stdout\n{out}\n--- stderr\n{err}",
        file.display()
    );
}

/// `mosquitto_pub -d ...` that must fail to connect: asserts it exits non-zero and that
/// libmosquitto logged `received CONNACK (CODE)`.
#[track_caller]
pub(crate) fn mosq_pub_refused(broker: &Broker, args: &[&str], code: u8) {
    let port = broker.port().to_string();
    let mut p = Proc::spawn(
        Command::new("mosquitto_pub")
            .args(["-d", "-h", "127.0.0.1", "-p", &port])
            .args(args),
    );
    let st = p.wait_exit(Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| !s.success()),
        "mosquitto_pub {args:?} should have failed: {st:?}\n{}",
        p.dump()
    );
    let needle = format!("received CONNACK ({code})");
    assert!(
        p.stdout_lines()
            .iter()
            .chain(&p.stderr_lines())
            .any(|l| l.contains(&needle)),
        "mosquitto_pub {args:?}: no `{needle}`\n{}",
        p.dump()
    );
}
