//! Harness for end-to-end tests: start the real `mote` binary on a free loopback port,
//! find third-party clients, and reap every child process. [`harness`] runs a test
//! target whose tests need outside tools, reporting a test that cannot run as ignored,
//! with the reason.
//!
//! The binary is `target/<profile>/mote`, next to the test executable's `deps/`. When it
//! is missing (`cargo test -p mote-client` on a clean target dir builds no broker) or
//! older than the broker's or the codec's sources (`cargo test -p mote-tests` after a
//! broker change), [`mote_bin`] builds it first with `cargo build -p mote-broker` into the
//! same target directory (cargo has released its lock by the time tests run, so this does
//! not wait on the outer `cargo test`). Set `MOTE_BIN` to test another build; it is then
//! used as it is.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

pub mod harness;

/// Path of the `mote` binary under test, built first when it is missing or stale (once
/// per test process). Panics, saying why, when it cannot be built.
pub fn mote_bin() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(find_or_build_mote) {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// The longest a build of the broker may take (a cold debug build takes a few minutes on
/// two cores); past it the build is ended and the test fails, naming the command.
const BUILD_LIMIT: Duration = Duration::from_secs(30 * 60);

fn find_or_build_mote() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("MOTE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // target/<profile>/deps/<test-exe> -> target/<profile>/mote
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("unexpected test executable path {}", exe.display()))?;
    let bin = profile_dir.join(format!("mote{}", std::env::consts::EXE_SUFFIX));
    let root = workspace_root();
    if bin.exists() && !is_stale(&bin, &root) {
        return Ok(bin);
    }
    build_mote(&root, profile_dir)?;
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "`cargo build -p mote-broker` succeeded but left no binary at {}; \
             set MOTE_BIN to the broker to test",
            bin.display()
        ))
    }
}

/// The workspace root (this crate's parent directory).
fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// True when a source of the broker (the broker's and the codec's `src/` and manifests)
/// is newer than `bin`. Only mtimes are compared, as cargo itself does. The workspace
/// manifest and the lock file are left out on purpose: they change with every dependency
/// of any member, and a false "stale" costs a `cargo build -p mote-broker`, whose feature
/// set differs from `cargo test --workspace`'s (so it may build the broker's dependencies
/// once more).
fn is_stale(bin: &Path, root: &Path) -> bool {
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return true;
    };
    let mut newest = SystemTime::UNIX_EPOCH;
    for p in [
        "broker/Cargo.toml",
        "broker/build.rs",
        "broker/src",
        "codec/Cargo.toml",
        "codec/src",
    ] {
        newest_mtime(&root.join(p), &mut newest);
    }
    newest > built
}

/// Raises `newest` to the mtime of `path` and, for a directory, of everything under it.
fn newest_mtime(path: &Path, newest: &mut SystemTime) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if let Ok(t) = meta.modified() {
        *newest = (*newest).max(t);
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            newest_mtime(&entry.path(), newest);
        }
    }
}

/// Runs `cargo build -p mote-broker --bin mote` so that the binary lands in
/// `profile_dir`. Cargo releases the target directory's lock before it runs the test
/// executables, so a nested build into the same directory does not wait on the outer
/// `cargo test`; it is bounded by [`BUILD_LIMIT`] all the same.
fn build_mote(root: &Path, profile_dir: &Path) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let target_dir = profile_dir.parent().unwrap_or(profile_dir);
    let mut cmd = Command::new(&cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .args(["-p", "mote-broker", "--bin", "mote", "--profile", profile])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // Its progress goes to the terminal (stderr inherited): a cold build takes minutes.
    eprintln!(
        "mote-tests: the `mote` binary is missing or older than the broker's sources; \
         running {cmd:?}"
    );
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}; set MOTE_BIN to the broker to test"))?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if start.elapsed() < BUILD_LIMIT => {
                std::thread::sleep(Duration::from_millis(200))
            }
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{cmd:?} did not finish within {BUILD_LIMIT:?}; build the broker first \
                     or set MOTE_BIN"
                ));
            }
        }
    };
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed ({status}); see its output above"))
    }
}

/// A running `mote` process, killed and reaped on drop.
#[derive(Debug)]
pub struct Broker {
    child: Option<Child>,
    /// Address the broker listens on.
    pub addr: SocketAddr,
    /// Address of its HTTP listener, when started with one (`--http`, `[http] listen`).
    pub http: Option<SocketAddr>,
    log: Arc<Mutex<String>>,
    _config: Option<TempFile>,
}

impl Broker {
    /// Starts `mote --memory` on a free loopback port.
    pub fn start() -> Broker {
        Broker::start_with(&["--memory"], None)
    }

    /// Starts `mote` with extra `args` and, if given, a TOML config file's content.
    /// `--mqtt 127.0.0.1:0` is added unless `args` holds `--mqtt`.
    pub fn start_with(args: &[&str], config: Option<&str>) -> Broker {
        let config = config.map(|c| TempFile::new("mote-config", ".toml", c.as_bytes()));
        let mut cmd = Command::new(mote_bin());
        cmd.args(args);
        if !args.contains(&"--mqtt") {
            cmd.args(["--mqtt", "127.0.0.1:0"]);
        }
        if let Some(c) = &config {
            cmd.arg("--config").arg(&c.path);
        }
        cmd.env(
            "RUST_LOG",
            std::env::var("MOTE_TEST_LOG").unwrap_or_else(|_| "info".into()),
        );
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn mote");
        let stderr = child.stderr.take().expect("stderr piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                // The HTTP listener's line comes before the MQTT one.
                let mut http = None;
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(i) = line.find("listening http=") {
                        http = Some(line[i + "listening http=".len()..].trim().to_owned());
                    }
                    if let Some(i) = line.find("listening mqtt=") {
                        let addr = line[i + "listening mqtt=".len()..].trim().to_owned();
                        if let Some(tx) = tx.take() {
                            let _ = tx.send((addr, http.take()));
                        }
                    }
                    let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let (addr, http) = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok((a, h)) => (
                a.parse().expect("listen address"),
                h.map(|h| h.parse().expect("HTTP listen address")),
            ),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "mote did not report ready; log:\n{}",
                    log.lock().unwrap_or_else(|p| p.into_inner())
                );
            }
        };
        Broker {
            child: Some(child),
            addr,
            http,
            log,
            _config: config,
        }
    }

    /// Starts `mote --memory` with its HTTP listener on a free loopback port too.
    pub fn start_http() -> Broker {
        Broker::start_with(&["--memory", "--http", "127.0.0.1:0"], None)
    }

    /// The HTTP listener's address; panics when the broker has none.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.expect("the broker was started without --http")
    }

    /// Process id of the broker (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Port the broker listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Everything the broker logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sends SIGTERM and waits (at most 10 s) for the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        signal(child.id(), "-TERM");
        for _ in 0..100 {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// Kills the broker with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(sig).arg(pid.to_string()).status();
}

/// A child process killed and reaped on drop.
#[derive(Debug)]
pub struct Reaped(pub Child);

impl Reaped {
    /// Waits for the child to exit within `timeout`, returning its output; kills it
    /// (and returns what it wrote) when it does not. Output is read while the child
    /// runs, so a chatty child never blocks on a full pipe.
    pub fn wait_output(
        mut self,
        timeout: Duration,
    ) -> (Option<std::process::ExitStatus>, String, String) {
        fn reader<R: std::io::Read + Send + 'static>(
            r: Option<R>,
        ) -> std::thread::JoinHandle<String> {
            std::thread::spawn(move || {
                let mut s = String::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_string(&mut s);
                }
                s
            })
        }
        let out = reader(self.0.stdout.take());
        let err = reader(self.0.stderr.take());
        let start = std::time::Instant::now();
        let status = loop {
            match self.0.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) if start.elapsed() < timeout => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.0.kill();
                    let _ = self.0.wait();
                    break None;
                }
            }
        };
        (
            status,
            out.join().unwrap_or_default(),
            err.join().unwrap_or_default(),
        )
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Spawns `cmd` with piped stdout/stderr as a [`Reaped`] child.
pub fn spawn(cmd: &mut Command) -> Reaped {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Reaped(cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")))
}

/// Spawns `cmd` with piped stdin, stdout and stderr as a [`Reaped`] child, writes `input`
/// to its stdin and closes it. Returns the child and how the write went: a command that
/// exits before reading its input (a refused command line) makes it a broken pipe.
pub fn spawn_fed(cmd: &mut Command, input: &[u8]) -> (Reaped, std::io::Result<()>) {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = Reaped(cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")));
    let written = match child.0.stdin.take() {
        Some(mut stdin) => std::io::Write::write_all(&mut stdin, input),
        None => Ok(()),
    };
    (child, written)
}

/// True when the external tool `name` can be run. Under `CI=true` a missing tool fails
/// the test; elsewhere the caller is expected to return early, with a loud message.
///
/// For plain `#[test]`s only: the built-in harness then reports the test as *passed*.
/// Targets whose tests need outside tools use [`harness`] instead, which reports them as
/// ignored, with the reason.
pub fn require_tool(name: &str, probe: &[&str]) -> bool {
    let ok = Command::new(name)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        if harness::under_ci() {
            panic!("required tool `{name}` is missing under CI=true");
        }
        eprintln!("\n!!! SKIPPING: `{name}` is not installed (CI=true makes this a failure) !!!\n");
    }
    ok
}

/// True when `python3 -c "import paho.mqtt"` works (2.x required); same CI rule and the
/// same caveat as [`require_tool`].
pub fn require_paho() -> bool {
    match harness::PAHO.check() {
        Ok(()) => true,
        Err(reason) if harness::under_ci() => panic!("{reason} (under CI=true)"),
        Err(reason) => {
            eprintln!("\n!!! SKIPPING: {reason} (CI=true makes this a failure) !!!\n");
            false
        }
    }
}

/// Directory of the Python client scripts.
pub fn python_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python")
}

/// A temporary file removed on drop.
#[derive(Debug)]
pub struct TempFile {
    /// Its path.
    pub path: PathBuf,
}

impl TempFile {
    /// Writes `content` to a new file in the temp dir.
    pub fn new(prefix: &str, suffix: &str, content: &[u8]) -> TempFile {
        let path = unique_path(prefix, suffix);
        std::fs::write(&path, content).expect("write temp file");
        TempFile { path }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A path in the temp dir that no other test uses.
pub fn unique_path(prefix: &str, suffix: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("{prefix}-{}-{n}{suffix}", std::process::id()))
}

/// `python3 tests/python/SCRIPT`, unbuffered and writing no bytecode next to the
/// scripts; the caller adds the arguments.
pub fn python_script(script: &str) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(python_dir().join(script))
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    cmd
}

/// Runs a check script (`cmd`, at most `limit`) against `broker` and asserts what it
/// printed with [`assert_checks`]; `what` names it in failure messages, which also show
/// its output and the broker log's tail. Returns its stdout.
#[track_caller]
pub fn run_script(
    cmd: &mut Command,
    limit: Duration,
    what: &str,
    checks: &[&str],
    broker: &Broker,
) -> String {
    let (status, out, err) = spawn(cmd).wait_output(limit);
    let context = || {
        format!(
            "{what}\n--- stdout\n{out}\n--- stderr\n{err}\n--- broker log (tail)\n{}",
            tail(&broker.log(), 40)
        )
    };
    let what = format!("{what} (status {status:?})");
    assert_checks(
        &what,
        status.is_some_and(|s| s.success()),
        &out,
        checks,
        &context,
    );
    out
}

/// A temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    /// Its path.
    pub path: PathBuf,
}

impl TempDir {
    /// A new empty directory named after `prefix`.
    pub fn new(prefix: &str) -> TempDir {
        let path = unique_path(prefix, "");
        std::fs::create_dir(&path).expect("create a temporary directory");
        TempDir { path }
    }

    /// A path inside it.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The last `n` lines of `s` (a broker log, for a failure message).
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Asserts what a check script (`tests/python/*.py`, `tests/ws/*.mjs`) printed: it exited
/// 0, printed a passing result line and no failed check, and each of `checks` ran and
/// passed. `context` describes the run for the failure message. The scripts print JSON
/// lines, with or without spaces after `:` and `,` (Python's and Node's defaults).
#[track_caller]
pub fn assert_checks(
    what: &str,
    passed: bool,
    stdout: &str,
    checks: &[&str],
    context: &dyn Fn() -> String,
) {
    let compact: Vec<String> = stdout
        .lines()
        .map(|l| l.replace(": ", ":").replace(", ", ","))
        .collect();
    let failed: Vec<&String> = compact
        .iter()
        .filter(|l| l.contains(r#""ok":false"#))
        .collect();
    assert!(
        passed && failed.is_empty(),
        "{what} failed; failed checks:\n{}\n\n{}",
        failed
            .iter()
            .map(|l| l.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        context()
    );
    assert!(
        compact.iter().any(|l| l.starts_with(r#"{"result":"pass""#)),
        "{what}: no pass result:\n{}",
        context()
    );
    for c in checks {
        let prefix = format!(r#"{{"check":"{c}","ok":true"#);
        assert!(
            compact.iter().any(|l| l.starts_with(&prefix)),
            "{what}: check `{c}` did not pass (or did not run):\n{}",
            context()
        );
    }
}
