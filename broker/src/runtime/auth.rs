//! Authentication: user names and passwords from a password file of argon2id hashes,
//! and the access rules that go with them, reloadable while clients stay connected.
//!
//! A password is checked before the core sees the CONNECT, on tokio's blocking pool
//! (argon2id takes tens of milliseconds and 19 MiB by design), at most
//! [`VERIFY_CONCURRENCY`] at a time. A user name that is not in the file is checked
//! against a dummy hash of the same cost, so an unknown user and a wrong password take
//! the same time. An address whose attempts failed `auth.max_failures_per_minute` times
//! in the last minute is refused without a check until the minute is over.
//!
//! The password file: one `USER:HASH` per line (`#` starts a comment), HASH a PHC string
//! as `mote passwd` writes it (`$argon2id$v=19$m=19456,t=2,p=1$SALT$HASH`).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use tokio::sync::Semaphore;

use crate::config::AuthConfig;
use crate::proto::acl::Acl;

/// Password checks running at once (each holds 19 MiB while it runs).
const VERIFY_CONCURRENCY: usize = 2;

/// The window over which failed attempts per address are counted.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Addresses whose failures are remembered at most; beyond it, the oldest windows go.
const FAILURE_ADDRESSES: usize = 65_536;

/// Why a CONNECT is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Unknown user or wrong password (v5 0x86, 3.1.1 return code 4).
    BadCredentials,
    /// No user name where one is required (v5 0x87, 3.1.1 return code 5).
    NotAuthorized,
    /// Too many failed attempts from this address (v5 0x9F, 3.1.1 return code 5).
    Throttled,
}

/// The users of a password file: name → PHC hash.
#[derive(Debug, Clone, Default)]
pub(crate) struct Users {
    hashes: HashMap<String, String>,
}

impl Users {
    /// Parses a password file.
    ///
    /// # Errors
    /// The first line that is not `USER:HASH` with a valid PHC hash, by number.
    pub(crate) fn parse(text: &str) -> Result<Users, String> {
        let mut hashes = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err(format!("line {}: expected USER:HASH", i + 1));
            };
            if user.is_empty() {
                return Err(format!("line {}: empty user name", i + 1));
            }
            if let Err(e) = PasswordHash::new(hash) {
                return Err(format!("line {}: user {user:?}: bad hash: {e}", i + 1));
            }
            if hashes.insert(user.to_owned(), hash.to_owned()).is_some() {
                return Err(format!("line {}: user {user:?} listed twice", i + 1));
            }
        }
        Ok(Users { hashes })
    }

    /// Number of users.
    pub(crate) fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether `user` is listed.
    pub(crate) fn contains(&self, user: &str) -> bool {
        self.hashes.contains_key(user)
    }
}

/// An argon2id hash (PHC string) of `password` with a fresh random salt and the default
/// cost (19 MiB, 2 passes).
///
/// # Errors
/// When the hasher fails (it does not for passwords of sane length).
pub(crate) fn hash_password(password: &[u8]) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Checks `password` against a PHC hash, using the cost written in the hash.
fn verify(hash: &str, password: &[u8]) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password, &h).is_ok())
}

/// Failed attempts from one address in the current window.
#[derive(Debug, Clone, Copy)]
struct Failures {
    since: Instant,
    count: u32,
}

/// What is in force: users and access rules, swapped whole on reload.
#[derive(Debug)]
pub(crate) struct Policy {
    /// `None`: no password file, user names are taken as given.
    pub(crate) users: Option<Users>,
    /// The access rules.
    pub(crate) acl: Arc<Acl>,
}

/// Authentication and the files behind it.
#[derive(Debug)]
pub(crate) struct Auth {
    config: AuthConfig,
    deny_subscribe: Vec<String>,
    policy: RwLock<Arc<Policy>>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
    verifying: Semaphore,
    /// Checked for unknown users, so that they cost what a known one does. Made only
    /// when a password file is configured (the only case that checks passwords): an
    /// argon2id hash takes 19 MiB of memory for a moment, which some allocators keep.
    dummy: String,
    /// User names that came from a verified client certificate (mTLS): the password
    /// file does not list them, and a reload does not take them for removed users.
    certificate_users: Mutex<HashSet<Arc<str>>>,
    /// Logins refused since the start.
    refused: AtomicU64,
}

impl Auth {
    /// Reads the password and rules files named in `config`.
    ///
    /// # Errors
    /// A file that cannot be read or parsed, naming it.
    pub(crate) fn load(config: &AuthConfig, deny_subscribe: &[String]) -> anyhow::Result<Auth> {
        let policy = read_policy(config, deny_subscribe)?;
        Ok(Auth {
            config: config.clone(),
            deny_subscribe: deny_subscribe.to_vec(),
            policy: RwLock::new(Arc::new(policy)),
            failures: Mutex::new(HashMap::new()),
            verifying: Semaphore::new(VERIFY_CONCURRENCY),
            dummy: match config.password_file {
                Some(_) => hash_password(b"not a password anyone has")
                    .map_err(|e| anyhow::anyhow!("cannot make the dummy hash: {e}"))?,
                None => String::new(),
            },
            certificate_users: Mutex::new(HashSet::new()),
            refused: AtomicU64::new(0),
        })
    }

    /// Notes that `user` logged in with a client certificate.
    pub(crate) fn certificate_user(&self, user: &Arc<str>) {
        let mut set = self
            .certificate_users
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        set.insert(user.clone());
    }

    /// Whether a user of a connected session is gone under `policy`: listed nowhere
    /// (a password file exists and does not name it, and no certificate gave it).
    pub(crate) fn user_gone(&self, policy: &Policy, user: &str) -> bool {
        let certified = || {
            self.certificate_users
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(user)
        };
        policy
            .users
            .as_ref()
            .is_some_and(|users| !users.contains(user))
            && !certified()
    }

    /// The policy in force.
    pub(crate) fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the files again; on success the new policy is in force and returned, on
    /// failure the old one stays.
    ///
    /// # Errors
    /// A file that cannot be read or parsed.
    pub(crate) fn reload(&self) -> anyhow::Result<Arc<Policy>> {
        let policy = Arc::new(read_policy(&self.config, &self.deny_subscribe)?);
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = policy.clone();
        Ok(policy)
    }

    /// Logins refused since the start (`$SYS/broker/clients/login_refused`).
    pub(crate) fn logins_refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Decides a CONNECT's credentials: the user name the client is known by from now on
    /// (`None`: anonymous), or why it is refused (counted).
    pub(crate) async fn authenticate(
        &self,
        ip: IpAddr,
        user: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<Option<Arc<str>>, Refusal> {
        let r = self.decide(ip, user, password).await;
        if r.is_err() {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    async fn decide(
        &self,
        ip: IpAddr,
        user: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<Option<Arc<str>>, Refusal> {
        let policy = self.policy();
        let Some(users) = &policy.users else {
            // No password file: a user name is taken as given (as Mosquitto does),
            // unless anonymous access is turned off, which then refuses everyone.
            return if self.config.allow_anonymous.unwrap_or(true) {
                Ok(user.map(Arc::from))
            } else {
                Err(Refusal::NotAuthorized)
            };
        };
        let Some(user) = user else {
            return if self.config.allow_anonymous.unwrap_or(false) {
                Ok(None)
            } else {
                Err(Refusal::NotAuthorized)
            };
        };
        if self.throttled(ip, Instant::now()) {
            return Err(Refusal::Throttled);
        }
        let hash = users
            .hashes
            .get(user)
            .cloned()
            .unwrap_or_else(|| self.dummy.clone());
        let known = users.contains(user);
        let password = password.unwrap_or_default().to_vec();
        let ok = {
            let Ok(_permit) = self.verifying.acquire().await else {
                return Err(Refusal::BadCredentials);
            };
            tokio::task::spawn_blocking(move || verify(&hash, &password))
                .await
                .unwrap_or(false)
        };
        if ok && known {
            Ok(Some(Arc::from(user)))
        } else {
            self.failed(ip, Instant::now());
            Err(Refusal::BadCredentials)
        }
    }

    /// True when `ip` used up its failed attempts for the current window.
    fn throttled(&self, ip: IpAddr, now: Instant) -> bool {
        let max = self.config.max_failures_per_minute;
        if max == 0 {
            return false;
        }
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures
            .get(&ip)
            .is_some_and(|f| now.duration_since(f.since) < FAILURE_WINDOW && f.count >= max)
    }

    /// Counts a failed attempt from `ip`.
    fn failed(&self, ip: IpAddr, now: Instant) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() >= FAILURE_ADDRESSES {
            failures.retain(|_, f| now.duration_since(f.since) < FAILURE_WINDOW);
            if failures.len() >= FAILURE_ADDRESSES {
                failures.clear();
            }
        }
        let f = failures.entry(ip).or_insert(Failures {
            since: now,
            count: 0,
        });
        if now.duration_since(f.since) >= FAILURE_WINDOW {
            *f = Failures {
                since: now,
                count: 0,
            };
        }
        f.count += 1;
    }
}

/// `mote passwd FILE USER`: sets `user`'s password in the password file `file` (creating
/// it with mode 0600), or removes the user with `delete`. The password is read from the
/// terminal twice without echo, or as one line from standard input when that is not a
/// terminal; it never appears on a command line. The file is replaced atomically.
///
/// # Errors
/// A bad user name, an empty or mismatched password, or a file that cannot be read or
/// written.
pub fn passwd(file: &Path, user: &str, delete: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        !user.is_empty() && !user.contains([':', '\n', '\r']),
        "a user name must be non-empty and hold no ':' or line break"
    );
    let old = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !delete => String::new(),
        Err(e) => anyhow::bail!("cannot read {}: {e}", file.display()),
    };
    Users::parse(&old).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let mut lines: Vec<String> = Vec::new();
    let mut found = false;
    for line in old.lines() {
        if line.trim().split_once(':').is_some_and(|(u, _)| u == user) {
            found = true;
            continue;
        }
        lines.push(line.to_owned());
    }
    if delete {
        anyhow::ensure!(found, "no user {user:?} in {}", file.display());
    } else {
        let password = read_password()?;
        let hash = hash_password(password.as_bytes()).map_err(|e| anyhow::anyhow!(e))?;
        lines.push(format!("{user}:{hash}"));
    }
    let mut text = lines.join("\n");
    text.push('\n');
    write_private(file, &text)
}

/// The new password: twice without echo from a terminal, else one line of stdin.
fn read_password() -> anyhow::Result<String> {
    use std::io::IsTerminal;
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let again = rpassword::prompt_password("Again: ")?;
        anyhow::ensure!(first == again, "the passwords differ");
        first
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    anyhow::ensure!(!password.is_empty(), "empty password");
    Ok(password)
}

/// Writes `text` to `path` through a temporary file renamed over it, readable by the
/// owner only.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("{} is not a file name", path.display()))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
        .map_err(|e| anyhow::anyhow!("cannot replace {}: {e}", path.display()))?;
    Ok(())
}

/// Reads the files `config` names into a policy.
fn read_policy(config: &AuthConfig, deny_subscribe: &[String]) -> anyhow::Result<Policy> {
    let users = match &config.password_file {
        Some(path) => Some(
            Users::parse(&read(path)?)
                .map_err(|e| anyhow::anyhow!("password file {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let acl = match &config.acl_file {
        Some(path) => Acl::parse(&read(path)?, deny_subscribe)
            .map_err(|e| anyhow::anyhow!("acl file {}: {e}", path.display()))?,
        None => Acl::allow_all(deny_subscribe),
    };
    Ok(Policy {
        users,
        acl: Arc::new(acl),
    })
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn auth_with(users: &str, allow_anonymous: Option<bool>) -> (Auth, tempdir::Dir) {
        let dir = tempdir::Dir::new();
        let path = dir.path().join("passwd");
        std::fs::write(&path, users).unwrap();
        let config = AuthConfig {
            password_file: Some(path),
            allow_anonymous,
            ..AuthConfig::default()
        };
        (Auth::load(&config, &[]).unwrap(), dir)
    }

    /// A directory removed when dropped (no dev-dependency for it).
    mod tempdir {
        use std::path::{Path, PathBuf};

        pub(super) struct Dir(PathBuf);

        impl Dir {
            pub(super) fn new() -> Dir {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "mote-auth-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub(super) fn path(&self) -> &Path {
                &self.0
            }
        }

        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn passwords_are_checked_and_anonymous_is_off_with_a_password_file() {
        let line = format!("alice:{}\n", hash_password(b"s3cret").unwrap());
        let (auth, _dir) = auth_with(&line, None);
        let ok = auth.authenticate(IP, Some("alice"), Some(b"s3cret")).await;
        assert_eq!(ok.unwrap().as_deref(), Some("alice"));
        let bad = auth.authenticate(IP, Some("alice"), Some(b"nope")).await;
        assert_eq!(bad, Err(Refusal::BadCredentials));
        let unknown = auth.authenticate(IP, Some("bob"), Some(b"s3cret")).await;
        assert_eq!(unknown, Err(Refusal::BadCredentials));
        let none = auth.authenticate(IP, Some("alice"), None).await;
        assert_eq!(none, Err(Refusal::BadCredentials));
        let anon = auth.authenticate(IP, None, None).await;
        assert_eq!(anon, Err(Refusal::NotAuthorized));
        let (open, _dir2) = auth_with(&line, Some(true));
        assert_eq!(open.authenticate(IP, None, None).await, Ok(None));
    }

    #[tokio::test]
    async fn an_address_that_keeps_failing_is_throttled_for_the_window() {
        let line = format!("alice:{}\n", hash_password(b"s3cret").unwrap());
        let (auth, _dir) = auth_with(&line, None);
        let max = auth.config.max_failures_per_minute;
        for _ in 0..max {
            let r = auth.authenticate(IP, Some("alice"), Some(b"x")).await;
            assert_eq!(r, Err(Refusal::BadCredentials));
        }
        let r = auth.authenticate(IP, Some("alice"), Some(b"s3cret")).await;
        assert_eq!(r, Err(Refusal::Throttled));
        // Another address is not.
        let other = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
        let r = auth
            .authenticate(other, Some("alice"), Some(b"s3cret"))
            .await;
        assert!(r.is_ok());
        // The window passes.
        let later = Instant::now() + FAILURE_WINDOW;
        assert!(!auth.throttled(IP, later));
    }

    #[test]
    fn bad_password_files_name_the_line() {
        let good = hash_password(b"x").unwrap();
        for (text, want) in [
            ("alice\n".to_owned(), "line 1"),
            (format!("# c\n:{good}\n"), "line 2"),
            ("alice:notahash\n".to_owned(), "line 1"),
            (format!("a:{good}\na:{good}\n"), "line 2"),
        ] {
            let e = Users::parse(&text).unwrap_err();
            assert!(e.starts_with(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_bad_file_on_reload_keeps_the_old_policy() {
        let line = format!("alice:{}\n", hash_password(b"s3cret").unwrap());
        let (auth, dir) = auth_with(&line, None);
        std::fs::write(dir.path().join("passwd"), "broken\n").unwrap();
        assert!(auth.reload().is_err());
        assert!(auth.policy().users.as_ref().unwrap().contains("alice"));
        let two = format!("{line}bob:{}\n", hash_password(b"b").unwrap());
        std::fs::write(dir.path().join("passwd"), two).unwrap();
        let p = auth.reload().unwrap();
        assert_eq!(p.users.as_ref().unwrap().len(), 2);
    }
}
