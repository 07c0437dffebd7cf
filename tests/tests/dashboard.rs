//! The live dashboard (`GET /ui/`, `broker/src/runtime/http/ui.html`) in a real browser:
//! the broker runs with an HTTP listener, `mote-device-sim` publishes sensor events, and
//! `tests/dashboard/check_dashboard.mjs` (playwright-core driving Debian's headless
//! Chromium) waits for the page to go live with a decoded event row, charts that row's
//! channel, publishes through the page's form and saves a full-page screenshot to
//! `target/dashboard/dashboard.png` (kept for a look after the run).
//!
//! `npm ci` in `tests/dashboard` runs first when its `node_modules` is missing or older
//! than its `package-lock.json` (playwright-core never downloads a browser).
//!
//! Run by `mote_tests::harness` (`harness = false`): without `node`, `npm`, Chromium
//! (`CHROMIUM_PATH`, else `/usr/bin/chromium`) or a working `npm ci`, the test is reported
//! as ignored, with the reason, and under `CI=true` it fails.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mote_tests::harness::{cannot_run, Need, Suite, NODE, NPM};
use mote_tests::{spawn, Broker};

/// Chromium, started by playwright-core.
const CHROMIUM: Need = Need::Check {
    what: "chromium",
    check: chromium,
};

/// playwright-core installed in `tests/dashboard/node_modules` (by `npm ci` if needed).
const PLAYWRIGHT: Need = Need::Check {
    what: "playwright-core",
    check: playwright_core,
};

fn main() -> std::process::ExitCode {
    Suite::new()
        .tests(
            &[NODE, NPM, CHROMIUM, PLAYWRIGHT],
            mote_tests::tests![dashboard_goes_live_charts_events_and_publishes],
        )
        .run()
}

/// The whole test once the tools are there: broker start, simulator, browser check.
const TEST_LIMIT: Duration = Duration::from_secs(60);
/// `npm ci` (one small package) and a build of the simulator, outside [`TEST_LIMIT`].
const NPM_LIMIT: Duration = Duration::from_secs(5 * 60);
const BUILD_LIMIT: Duration = Duration::from_secs(30 * 60);

fn dashboard_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboard")
}

/// The Chromium that the check starts: `CHROMIUM_PATH`, else Debian's.
fn chromium_path() -> PathBuf {
    std::env::var_os("CHROMIUM_PATH").map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from)
}

fn chromium() -> Result<(), String> {
    let path = chromium_path();
    let child = Command::new(&path)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            cannot_run(
                &path.to_string_lossy(),
                &e,
                "apt-get install chromium, or set CHROMIUM_PATH",
            )
        })?;
    match mote_tests::Reaped(child).wait_output(Duration::from_secs(20)) {
        (Some(st), _, _) if st.success() => Ok(()),
        (st, out, err) => Err(format!(
            "`{} --version` failed ({st:?}): {}{}",
            path.display(),
            out.trim(),
            err.trim()
        )),
    }
}

/// Runs `npm ci` in `tests/dashboard` when `node_modules` is missing or older than
/// `package-lock.json` (npm writes `node_modules/.package-lock.json` on every install).
fn playwright_core() -> Result<(), String> {
    let dir = dashboard_dir();
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let installed = mtime(&dir.join("node_modules/.package-lock.json"));
    let wanted = mtime(&dir.join("package-lock.json"));
    let fresh = dir
        .join("node_modules/playwright-core/package.json")
        .exists()
        && matches!((installed, wanted), (Some(i), Some(w)) if i >= w);
    if fresh {
        return Ok(());
    }
    eprintln!("dashboard: running `npm ci` in {}", dir.display());
    let child = spawn(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir),
    );
    match child.wait_output(NPM_LIMIT) {
        (Some(st), _, _) if st.success() => Ok(()),
        (st, out, err) => Err(format!(
            "`npm ci` in {} failed ({st:?}); playwright-core is not installed:\n{out}\n{err}",
            dir.display()
        )),
    }
}

/// `target/<profile>` (where the test executable's `deps/` is) and the target directory.
fn target_dirs() -> (PathBuf, PathBuf) {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let target_dir = profile_dir.parent().unwrap().to_path_buf();
    (profile_dir, target_dir)
}

/// The simulator binary: `MOTE_DEVICE_SIM` as it is, else `cargo build -p mote-device-sim`
/// into this test's target directory and profile (`cargo test` builds no binary of a
/// package without integration tests; a fresh build only checks and returns).
fn device_sim() -> PathBuf {
    if let Some(p) = std::env::var_os("MOTE_DEVICE_SIM") {
        return PathBuf::from(p);
    }
    let (profile_dir, target_dir) = target_dirs();
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .args(["-p", "mote-device-sim", "--bin", "mote-device-sim"])
        .args(["--profile", profile])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(root);
    let (st, _, err) = spawn(&mut cmd).wait_output(BUILD_LIMIT);
    assert!(
        st.is_some_and(|s| s.success()),
        "{cmd:?} failed ({st:?}); set MOTE_DEVICE_SIM to a built simulator\n{err}"
    );
    profile_dir.join(format!("mote-device-sim{}", std::env::consts::EXE_SUFFIX))
}

/// Width and height of a PNG file, from its IHDR chunk; `None` when it is not a PNG.
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    let sig = b"\x89PNG\r\n\x1a\n";
    if bytes.len() < 24 || &bytes[..8] != sig || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&bytes[16..20]), be(&bytes[20..24])))
}

fn dashboard_goes_live_charts_events_and_publishes() {
    let sim_bin = device_sim();
    let (_, target_dir) = target_dirs();
    let shot = target_dir.join("dashboard").join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let started = Instant::now();

    let broker = Broker::start_http();
    let http = broker.http_addr();

    // 3 devices x 20 events/s for 20 s: events keep coming while the page loads.
    let mut sim = spawn(
        Command::new(&sim_bin)
            .args(["--devices", "3", "--rate", "20", "--count", "400", "--v5"])
            .args(["--qos", "1", "--broker", &broker.addr.to_string()]),
    );

    let left = TEST_LIMIT.saturating_sub(started.elapsed());
    let check = spawn(
        Command::new("node")
            .arg("check_dashboard.mjs")
            .arg(format!("http://{http}"))
            .arg(&shot)
            .env("CHROMIUM_PATH", chromium_path())
            .current_dir(dashboard_dir()),
    );
    let (status, out, err) = check.wait_output(left);

    // Stop the simulator (it would run for 20 s) and keep what it said, for a failure.
    let _ = sim.0.kill();
    let (_, sim_out, sim_err) = sim.wait_output(Duration::from_secs(5));
    let context = || {
        format!(
            "--- check stdout ---\n{out}\n--- check stderr ---\n{err}\n\
             --- simulator ---\n{sim_out}{sim_err}\n--- broker log ---\n{}",
            broker.log()
        )
    };
    assert!(
        status.is_some_and(|s| s.success()),
        "the dashboard check failed ({status:?}, within {left:?})\n{}",
        context()
    );
    let seen = out.lines().rev().find(|l| l.starts_with('{')).unwrap_or("");
    println!("dashboard check saw: {seen}");
    for want in [r#""status":"live""#, r#""publish_result":"ok""#] {
        assert!(
            seen.contains(want),
            "no {want} in the check's report\n{}",
            context()
        );
    }

    let png = std::fs::read(&shot)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}\n{}", shot.display(), context()));
    let size = png_size(&png);
    assert!(
        png.len() > 10_000 && size.is_some_and(|(w, h)| w >= 800 && h >= 600),
        "{} is not a full-page screenshot ({} bytes, size {size:?})",
        shot.display(),
        png.len()
    );
    println!(
        "screenshot: {} ({} bytes, {size:?})",
        shot.display(),
        png.len()
    );
    drop(broker);
}
