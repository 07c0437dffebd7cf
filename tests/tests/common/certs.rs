//! The TLS tests' certificates and broker (`tls.rs`, `tls_clients.rs`; `jwt.rs` runs
//! `openssl` through here too): a throwaway CA, server certificates for
//! 127.0.0.1/localhost and client certificates, made at run time with the `openssl` CLI
//! (P-256 keys: quick to generate); a broker with one TLS listener on a free port;
//! `openssl s_client` against it; waits on the broker's log.
//!
//! The PKI is made once per test process, in a directory of its own that the target's
//! `main` removes at the end ([`remove_pki`]).
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mote_tests::harness::Need;
use mote_tests::{spawn, unique_path, Broker, TempFile};

/// The `openssl` command-line tool (Debian package `openssl`).
pub(crate) const OPENSSL: Need = Need::Tool {
    name: "openssl",
    probe: &["version"],
    install: "apt-get install openssl",
};

/// Runs `openssl ARGS` in `dir` (20 s at most: RSA key generation included), panics with
/// its output on failure, and returns its stdout.
#[track_caller]
pub(crate) fn openssl(dir: &Path, args: &[&str]) -> String {
    let child = spawn(Command::new("openssl").args(args).current_dir(dir));
    let (st, out, err) = child.wait_output(Duration::from_secs(20));
    assert!(
        st.is_some_and(|s| s.success()),
        "openssl {args:?} failed ({st:?})\n{out}\n{err}"
    );
    out
}

/// `openssl req` options for a new P-256 key, not encrypted.
const NEW_P256_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// A new P-256 key and a self-signed CA certificate `NAME.pem` / `NAME.key` with CN `cn`.
pub(crate) fn make_ca(dir: &Path, name: &str, cn: &str) {
    let (key, pem, subj) = (
        format!("{name}.key"),
        format!("{name}.pem"),
        format!("/CN={cn}"),
    );
    let rest = [
        "-keyout",
        &key,
        "-out",
        &pem,
        "-days",
        "2",
        "-subj",
        &subj,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ];
    openssl(dir, &[&["req", "-x509"][..], &NEW_P256_KEY, &rest].concat());
}

/// A new key and a certificate `NAME.pem` / `NAME.key` with CN `cn` signed by `ca`,
/// for a server (`server`: SANs 127.0.0.1 and localhost) or a client.
pub(crate) fn make_leaf(dir: &Path, ca: &str, name: &str, cn: &str, serial: u32, server: bool) {
    let ext = format!("{name}.ext");
    let text = if server {
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n\
         extendedKeyUsage=serverAuth\n"
    } else {
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"
    };
    std::fs::write(dir.join(&ext), text).unwrap();
    let (key, csr, subj) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("/CN={cn}"),
    );
    let rest = ["-keyout", &key, "-out", &csr, "-subj", &subj];
    openssl(dir, &[&["req"][..], &NEW_P256_KEY, &rest].concat());
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-set_serial",
            &serial.to_string(),
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

static PKI_DIR: OnceLock<PathBuf> = OnceLock::new();

/// The test PKI, made once per run: `ca` with `server` (CN mote-server-1), `server2`
/// (CN mote-server-2) and `client` (CN device-1); `rogue`, a self-signed client
/// certificate; `other-ca`, a CA that signed nothing here.
pub(crate) fn pki() -> &'static Path {
    PKI_DIR.get_or_init(|| {
        let dir = unique_path("mote-tls-pki", "");
        std::fs::create_dir_all(&dir).unwrap();
        make_ca(&dir, "ca", "mote-test-ca");
        make_ca(&dir, "other-ca", "mote-other-ca");
        make_ca(&dir, "rogue", "device-1");
        make_leaf(&dir, "ca", "server", "mote-server-1", 1001, true);
        make_leaf(&dir, "ca", "server2", "mote-server-2", 1002, true);
        make_leaf(&dir, "ca", "client", "device-1", 2001, false);
        dir
    })
}

/// Removes the test PKI, if it was made (at the end of a target's `main`).
pub(crate) fn remove_pki() {
    if let Some(dir) = PKI_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Path of a file of the test PKI, as a string for command lines.
pub(crate) fn pem(name: &str) -> String {
    pki().join(name).to_str().unwrap().to_owned()
}

/// A directory of the test's own, holding copies of the server's certificate and key
/// (tests that change them must not change the shared ones); removed on drop.
pub(crate) struct OwnCerts(PathBuf);

impl OwnCerts {
    pub(crate) fn new() -> OwnCerts {
        let dir = unique_path("mote-tls-own", "");
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["server.pem", "server.key"] {
            std::fs::copy(pki().join(f), dir.join(f)).unwrap();
        }
        OwnCerts(dir)
    }

    pub(crate) fn path(&self, f: &str) -> String {
        self.0.join(f).to_str().unwrap().to_owned()
    }

    /// Replaces `f` with `content` at once (written aside, then renamed over it).
    pub(crate) fn replace(&self, f: &str, content: &[u8]) {
        let tmp = self.0.join(format!("{f}.new"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, self.0.join(f)).unwrap();
    }
}

impl Drop for OwnCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A broker with one TLS listener on a free port (the certificate and key of `certs`,
/// else the shared ones) and `extra` TOML lines in its `[[listener]]`; returns it and
/// the TLS port.
pub(crate) fn tls_broker(certs: Option<&OwnCerts>, extra: &str) -> (Broker, u16) {
    let (cert, key) = match certs {
        Some(c) => (c.path("server.pem"), c.path("server.key")),
        None => (pem("server.pem"), pem("server.key")),
    };
    let toml = format!(
        "[[listener]]\ntransport = \"tls\"\naddress = \"127.0.0.1:0\"\n\
         cert_file = {cert:?}\nkey_file = {key:?}\n{extra}\n"
    );
    let broker = Broker::start_with(&["--memory"], Some(&toml));
    // The TLS ready line comes before the plain one, which `start_with` waited for.
    let log = broker.log();
    let port = log
        .lines()
        .find_map(|l| l.split("listening tls=").nth(1))
        .and_then(|a| a.trim().parse::<std::net::SocketAddr>().ok())
        .unwrap_or_else(|| panic!("no `listening tls=` line; log:\n{log}"))
        .port();
    (broker, port)
}

/// The `[[listener]]` lines of mTLS: a client certificate signed by the test CA is
/// required.
pub(crate) fn mtls_required() -> String {
    format!(
        "client_ca_file = {:?}\nrequire_certificate = true",
        pem("ca.pem")
    )
}

/// A broker whose TLS listener requires a client certificate signed by the test CA and
/// takes its CN as the user name (`use_identity_as_username`), with the access rules
/// `user device-1` / `readwrite devices/%u/#`: user device-1 (the CN of `client.pem`)
/// may use `devices/device-1/#` and nothing else. Returns the rules file with the broker
/// and the TLS port: it must live as long as the broker.
pub(crate) fn identity_broker() -> (Broker, u16, TempFile) {
    let acl = TempFile::new(
        "mote-tls-acl",
        "",
        b"user device-1\nreadwrite devices/%u/#\n",
    );
    let extra = format!(
        "{}\nuse_identity_as_username = true\n[auth]\nacl_file = {:?}\n",
        mtls_required(),
        acl.path.to_str().unwrap()
    );
    let (broker, port) = tls_broker(None, &extra);
    (broker, port, acl)
}

/// Waits (at most 10 s) until the broker logs client `id` as connected, over TLS
/// `version` if given (as rustls names it: `TLSv1_3`, `TLSv1_2`).
#[track_caller]
pub(crate) fn wait_connected(broker: &Broker, id: &str, version: Option<&str>) {
    let field = match version {
        Some(v) => format!("tls=true version={v} client=\"{id}\"}}"),
        None => format!("client=\"{id}\""),
    };
    let end = Instant::now() + Duration::from_secs(10);
    while !broker
        .log()
        .lines()
        .any(|l| l.contains("client connected") && l.contains(&field))
    {
        assert!(
            Instant::now() < end,
            "{id} not connected (over {version:?}); log:\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lines of the broker's log containing `what`.
pub(crate) fn log_count(broker: &Broker, what: &str) -> usize {
    broker.log().lines().filter(|l| l.contains(what)).count()
}

/// Waits (at most `limit`) until `what` appears in the broker's log `n` times.
#[track_caller]
pub(crate) fn wait_log(broker: &Broker, what: &str, n: usize, limit: Duration) {
    let end = Instant::now() + limit;
    while log_count(broker, what) < n {
        assert!(
            Instant::now() < end,
            "{what:?} not logged {n} times within {limit:?}; log:\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `openssl s_client` against the TLS port with `args` (the CA of the test PKI trusted,
/// a failed verification fatal, stdin empty: it ends once the handshake is done); exit
/// status and output.
pub(crate) fn s_client(port: u16, args: &[&str]) -> (Option<ExitStatus>, String) {
    let child = spawn(
        Command::new("openssl")
            .args(["s_client", "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-CAfile", &pem("ca.pem"), "-verify_return_error"])
            .args(args),
    );
    let (st, out, err) = child.wait_output(Duration::from_secs(10));
    (st, format!("{out}{err}"))
}
