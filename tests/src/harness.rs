//! A test harness (on `libtest-mimic`) for end-to-end tests that need something from
//! outside the Rust build: a third-party client on `PATH`, Python paho-mqtt, `/proc`, a
//! high enough open-file limit.
//!
//! Each test is registered with the [`Need`]s it has. Whether a need is met is decided
//! **at run time**, just before the test would run, so the summary line tells the truth:
//!
//! - every need met: the test runs, and passes or fails as usual;
//! - a need unmet: the test is reported as `ignored (<reason>)` and counted in the
//!   summary's `N ignored`, never as passed; a loud block after the summary lists what did
//!   not run and how to install what is missing;
//! - a need unmet under `CI=true`: the test **fails** with the reason, since CI installs
//!   everything (`bash .ci/run`).
//!
//! Tests without needs always run. Each test runs on its own thread named after it, so a
//! panic message names the test, as under the built-in harness. Unlike the built-in
//! harness, output is not captured: what a test prints appears as it runs.
//!
//! A target uses it with `harness = false` in its `[[test]]` entry and a `main`:
//!
//! ```text
//! fn main() -> std::process::ExitCode {
//!     use mote_tests::harness::{Suite, MOSQUITTO_PUB};
//!     Suite::new()
//!         .tests(&[MOSQUITTO_PUB], mote_tests::tests![pubsub_v311, pubsub_v5])
//!         .async_tests(&[], mote_tests::async_tests![round_trip])
//!         .run()
//! }
//! ```

use std::collections::HashMap;
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// Something outside the Rust build that a test needs.
#[derive(Debug, Clone, Copy)]
pub enum Need {
    /// An executable that starts when run with `probe` as its arguments (its exit status
    /// does not matter: `--help` exits non-zero in some tools).
    Tool {
        /// Program name (looked up on `PATH`) or path.
        name: &'static str,
        /// Arguments for a quick run that proves it starts.
        probe: &'static [&'static str],
        /// How to install it, for the reason shown when it is missing.
        install: &'static str,
    },
    /// Python 3 with paho-mqtt 2.x importable.
    Paho,
    /// A check of the test target's own: `Err` holds the reason the test cannot run.
    Check {
        /// What is checked, naming the need in messages.
        what: &'static str,
        /// The check.
        check: fn() -> Result<(), String>,
    },
}

/// `mosquitto_pub` (Debian package `mosquitto-clients`).
pub const MOSQUITTO_PUB: Need = Need::Tool {
    name: "mosquitto_pub",
    probe: &["--help"],
    install: "apt-get install mosquitto-clients",
};

/// `mosquitto_sub` (Debian package `mosquitto-clients`).
pub const MOSQUITTO_SUB: Need = Need::Tool {
    name: "mosquitto_sub",
    probe: &["--help"],
    install: "apt-get install mosquitto-clients",
};

/// `stdbuf` (coreutils), to line-buffer a piped client's output.
pub const STDBUF: Need = Need::Tool {
    name: "stdbuf",
    probe: &["--version"],
    install: "apt-get install coreutils",
};

/// Python 3 with paho-mqtt 2.x.
pub const PAHO: Need = Need::Paho;

/// `curl`.
pub const CURL: Need = Need::Tool {
    name: "curl",
    probe: &["--version"],
    install: "apt-get install curl",
};

/// Node.js (the WebSocket and dashboard tests run mqtt.js and playwright-core in it).
pub const NODE: Need = Need::Tool {
    name: "node",
    probe: &["--version"],
    install: "apt-get install nodejs",
};

/// npm, to install a test's Node packages.
pub const NPM: Need = Need::Tool {
    name: "npm",
    probe: &["--version"],
    install: "apt-get install npm",
};

/// Python 3 with httpx and prometheus_client (the HTTP tests' client and metrics parser).
pub const PY_HTTP: Need = Need::Check {
    what: "python3 httpx and prometheus_client",
    check: py_http,
};

fn py_http() -> Result<(), String> {
    cached("py_http", || {
        const INSTALL: &str = "pip install httpx prometheus_client";
        let ok = Command::new("python3")
            .args(["-c", "import httpx, prometheus_client"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| cannot_run("python3", &e, INSTALL))?
            .success();
        if ok {
            Ok(())
        } else {
            Err(format!(
                "python3 cannot import httpx and prometheus_client (install: {INSTALL})"
            ))
        }
    })
}

/// `/proc/<pid>/status` with the peak resident set size (`VmHWM`) of a process.
pub const PROC_STATUS: Need = Need::Check {
    what: "/proc",
    check: proc_status,
};

fn proc_status() -> Result<(), String> {
    match std::fs::read_to_string("/proc/self/status") {
        Ok(s) if s.lines().any(|l| l.starts_with("VmHWM:")) => Ok(()),
        Ok(_) => Err("/proc/self/status has no VmHWM line (peak RSS unknown here)".into()),
        Err(e) => Err(format!(
            "no /proc here (reading /proc/self/status: {e}); the test reads the broker's \
             peak RSS from it"
        )),
    }
}

impl Need {
    /// A short name for the need, for messages.
    pub fn what(&self) -> &'static str {
        match self {
            Need::Tool { name, .. } => name,
            Need::Paho => "python3 paho-mqtt 2.x",
            Need::Check { what, .. } => what,
        }
    }

    /// `Ok` when the need is met, else the reason (with how to fix it). Tools and paho are
    /// probed once per process and the answer kept: they do not come and go during a run.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Need::Tool {
                name,
                probe,
                install,
            } => cached(name, || {
                Command::new(name)
                    .args(*probe)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .map(drop)
                    .map_err(|e| cannot_run(name, &e, install))
            }),
            Need::Paho => cached("paho", paho),
            Need::Check { check, .. } => check(),
        }
    }
}

/// The reason for a tool that did not start.
pub fn cannot_run(name: &str, e: &std::io::Error, install: &str) -> String {
    if e.kind() == std::io::ErrorKind::NotFound {
        format!("`{name}` is not installed (install: {install})")
    } else {
        format!("`{name}` cannot be run: {e} (install: {install})")
    }
}

/// Python 3 imports paho-mqtt, and its version is 2.x.
fn paho() -> Result<(), String> {
    const INSTALL: &str = "pip install 'paho-mqtt>=2,<3'";
    let out = Command::new("python3")
        .args(["-c", "import paho.mqtt; print(paho.mqtt.__version__)"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| cannot_run("python3", &e, &format!("python3, then {INSTALL}")))?;
    if !out.status.success() {
        return Err(format!(
            "python3 paho-mqtt 2.x is not installed: `import paho.mqtt` failed (install: {INSTALL})"
        ));
    }
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if version.starts_with("2.") {
        Ok(())
    } else {
        Err(format!(
            "python3 has paho-mqtt {version}, 2.x is needed (install: {INSTALL})"
        ))
    }
}

/// Runs `probe` once per process for `key` and keeps its answer.
fn cached(key: &str, probe: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    static CACHE: OnceLock<Mutex<HashMap<String, Result<(), String>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    // Held across the probe on purpose: two tests asking at once probe once. Probes are
    // short (a process started with `--help`), and nothing else takes this lock.
    let mut map = cache.lock().unwrap_or_else(|p| p.into_inner());
    map.entry(key.to_owned()).or_insert_with(probe).clone()
}

/// True when `CI=true`: a need that is not met fails the test instead of ignoring it.
pub fn under_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Every unmet need of `needs`, as one reason; `None` when all are met.
pub fn unmet(needs: &[Need]) -> Option<String> {
    let reasons: Vec<String> = needs.iter().filter_map(|n| n.check().err()).collect();
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

/// A test body: a plain function, as `#[test]` takes.
pub type TestFn = fn();

/// The tests of one target, run by `libtest-mimic` with the command line of `cargo test`
/// (filters, `--exact`, `--list`, `--ignored`, `--test-threads`, `--format`, ...).
#[derive(Debug, Default)]
pub struct Suite {
    tests: Vec<(&'static str, Vec<Need>, TestFn)>,
}

impl Suite {
    /// An empty suite.
    pub fn new() -> Suite {
        Suite::default()
    }

    /// Registers `tests` (name and body, see [`tests!`](crate::tests)), each needing
    /// every one of `needs`.
    pub fn tests(
        mut self,
        needs: &[Need],
        tests: impl IntoIterator<Item = (&'static str, TestFn)>,
    ) -> Suite {
        for (name, f) in tests {
            self.tests.push((name, needs.to_vec(), f));
        }
        self
    }

    /// The same as [`Suite::tests`], for bodies wrapped by
    /// [`async_tests!`](crate::async_tests); a separate name only so that the test
    /// target reads as what it registers.
    pub fn async_tests(
        self,
        needs: &[Need],
        tests: impl IntoIterator<Item = (&'static str, TestFn)>,
    ) -> Suite {
        self.tests(needs, tests)
    }

    /// Runs the suite with the process's command line and returns the exit code (failure
    /// when any test failed).
    pub fn run(self) -> ExitCode {
        let mut args = Arguments::from_args();
        // The built-in harness honours RUST_TEST_THREADS; so does this one.
        if args.test_threads.is_none() {
            args.test_threads = std::env::var("RUST_TEST_THREADS")
                .ok()
                .and_then(|n| n.parse().ok())
                .filter(|&n| n > 0);
        }
        let not_run: Arc<Mutex<Vec<(&'static str, String)>>> = Arc::default();
        let trials = self
            .tests
            .into_iter()
            .map(|(name, needs, f)| trial(name, needs, f, not_run.clone()))
            .collect();
        let conclusion = libtest_mimic::run(&args, trials);
        report_not_run(&not_run.lock().unwrap_or_else(|p| p.into_inner()));
        conclusion.exit_code()
    }
}

/// One registered test as a `libtest-mimic` trial that checks its needs when it is run.
fn trial(
    name: &'static str,
    needs: Vec<Need>,
    f: TestFn,
    not_run: Arc<Mutex<Vec<(&'static str, String)>>>,
) -> Trial {
    Trial::ignorable_test(name, move || {
        if let Some(reason) = unmet(&needs) {
            if under_ci() {
                return Err(
                    format!("{reason} (under CI=true a test that cannot run fails)").into(),
                );
            }
            not_run
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((name, reason.clone()));
            return Ok(Completion::ignored_with(reason));
        }
        // Its own thread, named after the test, as the built-in harness does: a panic
        // message then says which test panicked when tests run in parallel.
        let joined = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(f)
            .map_err(|e| Failed::from(format!("cannot start the test's thread: {e}")))?
            .join();
        match joined {
            Ok(()) => Ok(Completion::Completed),
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| payload.downcast_ref::<&str>().copied())
                    .unwrap_or("(panic payload is not a string)");
                Err(format!("test panicked: {msg}").into())
            }
        }
    })
}

/// After the summary: a loud list of the tests that did not run and why, grouped by
/// reason, so that a missing tool cannot go unnoticed in a long `cargo test` log.
fn report_not_run(not_run: &[(&'static str, String)]) {
    if not_run.is_empty() {
        return;
    }
    let mut by_reason: Vec<(&str, Vec<&str>)> = Vec::new();
    for (name, reason) in not_run {
        match by_reason.iter_mut().find(|(r, _)| r == reason) {
            Some((_, names)) => names.push(name),
            None => by_reason.push((reason, vec![name])),
        }
    }
    eprintln!(
        "\n!!! {} test(s) of this target did NOT run (counted as ignored above); \
         `bash .ci/run` installs every tool, and CI=true makes this a failure:",
        not_run.len()
    );
    for (reason, mut names) in by_reason {
        names.sort_unstable();
        eprintln!("!!!   {} not run: {reason}", names.len());
        eprintln!("!!!     {}", names.join(", "));
    }
    eprintln!();
}

/// Runs an async test body on a multi-threaded tokio runtime with two workers, as
/// `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]` does.
pub fn block_on<F: std::future::Future<Output = ()>>(fut: F) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    match rt {
        Ok(rt) => rt.block_on(fut),
        Err(e) => panic!("cannot build the tokio runtime: {e}"),
    }
}

/// `[(name, body)]` for [`Suite::tests`] from the names of plain test functions.
#[macro_export]
macro_rules! tests {
    ($($f:ident),* $(,)?) => {
        [$((stringify!($f), $f as $crate::harness::TestFn)),*]
    };
}

/// `[(name, body)]` for [`Suite::async_tests`] from the names of `async fn`s without
/// arguments; each runs under [`block_on`].
#[macro_export]
macro_rules! async_tests {
    ($($f:ident),* $(,)?) => {
        [$((
            stringify!($f),
            (|| $crate::harness::block_on($f())) as $crate::harness::TestFn
        )),*]
    };
}
