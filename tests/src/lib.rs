//! Harness for end-to-end tests: start the real `mote` binary on a free loopback port,
//! find third-party clients, and reap every child process.
//!
//! The binary is looked up next to the test executable (`target/<profile>/mote`); it is
//! built by `cargo test --workspace` because the broker crate's own integration tests
//! need it. Set `MOTE_BIN` to test another build.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// Path of the `mote` binary under test.
pub fn mote_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MOTE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test-exe> -> target/<profile>/mote
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    let bin = dir.join(format!("mote{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "mote binary not found at {}; run `cargo build -p mote-broker` or set MOTE_BIN",
        bin.display()
    );
    bin
}

/// A running `mote` process, killed and reaped on drop.
#[derive(Debug)]
pub struct Broker {
    child: Option<Child>,
    /// Address the broker listens on.
    pub addr: SocketAddr,
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
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(i) = line.find("listening mqtt=") {
                        let addr = line[i + "listening mqtt=".len()..].trim().to_owned();
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(addr);
                        }
                    }
                    let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a.parse().expect("listen address"),
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
            log,
            _config: config,
        }
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

/// True when the external tool `name` can be run. Under `CI=true` a missing tool fails
/// the test; elsewhere the test is skipped with a loud message.
pub fn require_tool(name: &str, probe: &[&str]) -> bool {
    let ok = Command::new(name)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("required tool `{name}` is missing under CI=true");
        }
        eprintln!("\n!!! SKIPPING: `{name}` is not installed (CI=true makes this a failure) !!!\n");
    }
    ok
}

/// True when `python3 -c "import paho.mqtt"` works (2.x required); same CI rule as
/// [`require_tool`].
pub fn require_paho() -> bool {
    let ok = Command::new("python3")
        .args([
            "-c",
            "import paho.mqtt, sys; sys.exit(0 if paho.mqtt.__version__.startswith('2') else 1)",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("python3 paho-mqtt 2.x is missing under CI=true");
        }
        eprintln!("\n!!! SKIPPING: python3 paho-mqtt 2.x is not installed (CI=true makes this a failure) !!!\n");
    }
    ok
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
