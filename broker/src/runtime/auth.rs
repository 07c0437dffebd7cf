//! Authentication: user names and passwords from a password file of argon2id hashes,
//! JSON Web Tokens (`runtime/jwt.rs`), and the access rules that go with them, all
//! reloadable while clients stay connected.
//!
//! A CONNECT password shaped as a token is checked as a token when `auth.jwt_algorithm`
//! is set, and never as a password; any other password goes to the password file. A
//! token's user is its user claim; a user name sent beside it must be that one. What the
//! token says reaches the core as a [`Login`]: the user, the rules of its `acl` claim,
//! and its expiry, at which the core closes the connection. Every login also carries
//! the user's own limits (`auth.limits`), looked up here once per CONNECT.
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
use std::time::{Duration, Instant, SystemTime};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use tokio::sync::Semaphore;

use super::jwt::{self, Verifier};
use crate::config::AuthConfig;
use crate::proto::acl::Acl;
use crate::proto::login::{ClientIds, LimitsByUser, Login};

/// Password checks running at once (each holds 19 MiB while it runs).
const VERIFY_CONCURRENCY: usize = 2;

/// The window over which failed attempts per address are counted.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Addresses whose failures are remembered at most; beyond it, the oldest windows go.
const FAILURE_ADDRESSES: usize = 65_536;

/// Longest a token's expiry is looked ahead (a later `exp` is as good as never).
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Why a CONNECT is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Unknown user, wrong password, or a token refused (v5 0x86, 3.1.1 return code 4).
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

/// What is in force: users, token key and access rules, swapped whole on reload.
#[derive(Debug)]
pub(crate) struct Policy {
    /// `None`: no password file, user names are taken as given (unless tokens are on).
    pub(crate) users: Option<Users>,
    /// The access rules, with the client ids users may use.
    pub(crate) acl: Arc<Acl>,
    /// `None`: no token is accepted.
    jwt: Option<Verifier>,
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
    /// The users with limits of their own (`auth.limits`): from the configuration file,
    /// which SIGHUP does not read again.
    limits: LimitsByUser,
}

impl Auth {
    /// Reads the password and rules files named in `config`.
    ///
    /// # Errors
    /// A file that cannot be read or parsed, naming it.
    pub(crate) fn load(config: &AuthConfig, deny_subscribe: &[String]) -> anyhow::Result<Auth> {
        let policy = read_policy(config, deny_subscribe)?;
        let limits = LimitsByUser::new(&config.limits).map_err(|e| anyhow::anyhow!("{e}"))?;
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
            limits,
        })
    }

    /// The login of `user`, who logged in with a client certificate (noted: the
    /// password file does not govern it).
    pub(crate) fn certificate_login(&self, user: Arc<str>) -> Login {
        let mut set = self
            .certificate_users
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        set.insert(user.clone());
        drop(set);
        Login {
            limits: self.limits.of(Some(&user)),
            ..Login::from(Some(user))
        }
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

    /// Decides a CONNECT's credentials: who the client is from now on (its user name,
    /// `None` for anonymous, what its token says, and the user's own limits), or why it
    /// is refused (counted).
    pub(crate) async fn authenticate(
        &self,
        ip: IpAddr,
        user: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<Login, Refusal> {
        match self.decide(ip, user, password).await {
            Ok(mut login) => {
                // Once per CONNECT; the session and the connection keep the result.
                login.limits = self.limits.of(login.user.as_deref());
                Ok(login)
            }
            Err(refusal) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Err(refusal)
            }
        }
    }

    /// Whether a client without a user name may connect: as configured, else only when
    /// nothing (no password file, no tokens) asks for credentials.
    fn anonymous_allowed(&self, policy: &Policy) -> bool {
        self.config
            .allow_anonymous
            .unwrap_or(policy.users.is_none() && policy.jwt.is_none())
    }

    async fn decide(
        &self,
        ip: IpAddr,
        user: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<Login, Refusal> {
        let policy = self.policy();
        if let (Some(verifier), Some(token)) = (&policy.jwt, password) {
            if jwt::looks_like_token(token) {
                return self.token_login(verifier, ip, user, token);
            }
        }
        let Some(users) = &policy.users else {
            if policy.jwt.is_some() {
                // Tokens are the credential: a user name without one is refused, and
                // counts as a failure as a wrong password does.
                let now = Instant::now();
                return match user {
                    None if self.anonymous_allowed(&policy) => Ok(Login::default()),
                    None => Err(Refusal::NotAuthorized),
                    Some(_) if self.throttled(ip, now) => Err(Refusal::Throttled),
                    Some(_) => {
                        self.failed(ip, now);
                        Err(Refusal::BadCredentials)
                    }
                };
            }
            // No password file: a user name is taken as given (as Mosquitto does),
            // unless anonymous access is turned off, which then refuses everyone.
            return if self.anonymous_allowed(&policy) {
                Ok(Login::from(user.map(Arc::from)))
            } else {
                Err(Refusal::NotAuthorized)
            };
        };
        let Some(user) = user else {
            return if self.anonymous_allowed(&policy) {
                Ok(Login::default())
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
            Ok(Login::from(Some(Arc::from(user))))
        } else {
            self.failed(ip, Instant::now());
            Err(Refusal::BadCredentials)
        }
    }

    /// A CONNECT whose password is a token. Logged on refusal with the reason, never
    /// the token.
    fn token_login(
        &self,
        verifier: &Verifier,
        ip: IpAddr,
        user: Option<&str>,
        token: &[u8],
    ) -> Result<Login, Refusal> {
        if self.throttled(ip, Instant::now()) {
            return Err(Refusal::Throttled);
        }
        let (now_ms, now) = (unix_ms(), Instant::now());
        let why = match verifier.verify(token, now_ms) {
            Ok(t) if user.map_or(true, |u| u == &*t.user) => {
                let left = Duration::from_millis(t.valid_until_ms.saturating_sub(now_ms));
                tracing::debug!(
                    user = %t.user,
                    rules = t.grant.as_ref().map(|g| g.len()),
                    valid_for_secs = left.as_secs(),
                    "token accepted"
                );
                return Ok(Login {
                    user: Some(t.user),
                    grant: t.grant,
                    expires: now.checked_add(left.min(FAR_FUTURE)),
                    limits: None,
                });
            }
            Ok(_) => "the user name is not the token's".to_owned(),
            Err(e) => e.to_string(),
        };
        tracing::info!(reason = %why, "token refused");
        self.failed(ip, now);
        Err(Refusal::BadCredentials)
    }

    /// Who `user` with `password` is to the access rules, for a request already
    /// authenticated (HTTP): a valid token's user and rules, else the user name as
    /// given. Nothing is counted or logged.
    pub(crate) fn rights(&self, user: Option<&str>, password: Option<&[u8]>) -> Login {
        let policy = self.policy();
        let token = policy
            .jwt
            .as_ref()
            .zip(password.filter(|p| jwt::looks_like_token(p)))
            .and_then(|(v, t)| v.verify(t, unix_ms()).ok());
        match token {
            Some(t) => Login {
                user: Some(t.user),
                grant: t.grant,
                expires: None,
                limits: None,
            },
            None => Login::from(user.map(Arc::from)),
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

/// Milliseconds since the epoch, by the wall clock (what a token's dates count in).
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
    let client_ids = match config.client_id_patterns.as_slice() {
        [] => None,
        patterns => Some(
            ClientIds::parse(patterns)
                .map_err(|e| anyhow::anyhow!("auth.client_id_patterns: {e}"))?,
        ),
    };
    Ok(Policy {
        users,
        acl: Arc::new(acl.with_client_ids(client_ids)),
        jwt: Verifier::load(config)?,
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
    async fn logins_carry_the_limits_of_their_user() {
        use crate::config::UserLimits;
        let config = AuthConfig {
            limits: vec![
                UserLimits {
                    users: vec!["backend".to_owned(), "ingest-*".to_owned()],
                    max_publish_rate: Some(0),
                    ..UserLimits::default()
                },
                UserLimits {
                    users: vec!["*".to_owned()],
                    max_subscriptions_per_client: Some(5),
                    ..UserLimits::default()
                },
            ],
            ..AuthConfig::default()
        };
        let auth = Auth::load(&config, &[]).unwrap();
        let of = |l: Login| l.limits.map(|l| (l.max_publish_rate, l.max_subscriptions));
        let login = auth.authenticate(IP, Some("ingest-3"), None).await.unwrap();
        assert_eq!(of(login), Some((Some(0), None)));
        let login = auth.authenticate(IP, Some("dev"), None).await.unwrap();
        assert_eq!(of(login), Some((None, Some(5))));
        let anonymous = auth.authenticate(IP, None, None).await.unwrap();
        assert_eq!(of(anonymous), None);
        let cert = auth.certificate_login(Arc::from("backend"));
        assert_eq!(cert.user.as_deref(), Some("backend"));
        assert_eq!(of(cert), Some((Some(0), None)));
        // Without entries, nobody has limits of their own.
        let plain = Auth::load(&AuthConfig::default(), &[]).unwrap();
        let login = plain.authenticate(IP, Some("backend"), None).await.unwrap();
        assert_eq!(login.limits, None);
    }

    #[tokio::test]
    async fn passwords_are_checked_and_anonymous_is_off_with_a_password_file() {
        let line = format!("alice:{}\n", hash_password(b"s3cret").unwrap());
        let (auth, _dir) = auth_with(&line, None);
        let ok = auth.authenticate(IP, Some("alice"), Some(b"s3cret")).await;
        assert_eq!(ok.unwrap().user.as_deref(), Some("alice"));
        let bad = auth.authenticate(IP, Some("alice"), Some(b"nope")).await;
        assert_eq!(bad, Err(Refusal::BadCredentials));
        let unknown = auth.authenticate(IP, Some("bob"), Some(b"s3cret")).await;
        assert_eq!(unknown, Err(Refusal::BadCredentials));
        let none = auth.authenticate(IP, Some("alice"), None).await;
        assert_eq!(none, Err(Refusal::BadCredentials));
        let anon = auth.authenticate(IP, None, None).await;
        assert_eq!(anon, Err(Refusal::NotAuthorized));
        let (open, _dir2) = auth_with(&line, Some(true));
        assert_eq!(
            open.authenticate(IP, None, None).await,
            Ok(Login::default())
        );
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

    const SECRET: &str = "a shared secret of at least 32 bytes";

    /// An Auth taking HS256 tokens (and a password file when `users` is not empty).
    fn jwt_auth(users: &str, extra: impl FnOnce(&mut AuthConfig)) -> (Auth, tempdir::Dir) {
        let dir = tempdir::Dir::new();
        let key = dir.path().join("jwt.key");
        std::fs::write(&key, format!("{SECRET}\n")).unwrap();
        let mut config = AuthConfig {
            jwt_algorithm: Some(crate::config::JwtAlgorithm::Hs256),
            jwt_key_file: Some(key),
            ..AuthConfig::default()
        };
        if !users.is_empty() {
            let path = dir.path().join("passwd");
            std::fs::write(&path, users).unwrap();
            config.password_file = Some(path);
        }
        extra(&mut config);
        (Auth::load(&config, &[]).unwrap(), dir)
    }

    fn token(secret: &str, claims: &serde_json::Value) -> String {
        use jsonwebtoken::{encode, EncodingKey, Header};
        encode(
            &Header::default(),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn in_secs(secs: i64) -> i64 {
        i64::try_from(unix_ms() / 1000).unwrap() + secs
    }

    #[tokio::test]
    async fn a_token_logs_in_as_its_user_with_its_rules_and_expiry() {
        let (auth, _dir) = jwt_auth("", |_| {});
        let t = token(
            SECRET,
            &serde_json::json!({"sub": "dev1", "exp": in_secs(60), "acl": {"pub": ["a/#"]}}),
        );
        let before = Instant::now();
        for user in [None, Some("dev1")] {
            let login = auth
                .authenticate(IP, user, Some(t.as_bytes()))
                .await
                .unwrap();
            assert_eq!(login.user.as_deref(), Some("dev1"));
            assert_eq!(login.grant.as_ref().map(|g| g.len()), Some(1));
            let left = login.expires.unwrap() - before;
            assert!(
                left > Duration::from_secs(55) && left <= Duration::from_secs(61),
                "{left:?}"
            );
        }
        // Another user name beside it, a forged or expired token: refused and counted.
        let expired = token(
            SECRET,
            &serde_json::json!({"sub": "dev1", "exp": in_secs(-1)}),
        );
        let forged = token(
            "another secret of at least 32 bytes!",
            &serde_json::json!({"sub": "dev1", "exp": in_secs(60)}),
        );
        for (user, t) in [(Some("dev2"), &t), (None, &expired), (None, &forged)] {
            let r = auth.authenticate(IP, user, Some(t.as_bytes())).await;
            assert_eq!(r, Err(Refusal::BadCredentials));
        }
        assert_eq!(auth.logins_refused(), 3);
        // `rights` (HTTP) reads the same token; a bad one gives the user name as sent.
        assert_eq!(
            auth.rights(Some("x"), Some(t.as_bytes())).user.as_deref(),
            Some("dev1")
        );
        assert_eq!(
            auth.rights(Some("x"), Some(forged.as_bytes()))
                .user
                .as_deref(),
            Some("x")
        );
    }

    #[tokio::test]
    async fn with_tokens_on_a_user_name_alone_is_not_taken_as_given() {
        let (auth, _dir) = jwt_auth("", |_| {});
        let r = auth
            .authenticate(IP, Some("dev1"), Some(b"not a token"))
            .await;
        assert_eq!(r, Err(Refusal::BadCredentials));
        assert_eq!(
            auth.authenticate(IP, Some("dev1"), None).await,
            Err(Refusal::BadCredentials)
        );
        assert_eq!(
            auth.authenticate(IP, None, None).await,
            Err(Refusal::NotAuthorized)
        );
        let (open, _dir2) = jwt_auth("", |c| c.allow_anonymous = Some(true));
        assert_eq!(
            open.authenticate(IP, None, None).await,
            Ok(Login::default())
        );
    }

    #[tokio::test]
    async fn passwords_and_tokens_side_by_side() {
        let line = format!("alice:{}\n", hash_password(b"s3cret").unwrap());
        let (auth, _dir) = jwt_auth(&line, |_| {});
        let ok = auth.authenticate(IP, Some("alice"), Some(b"s3cret")).await;
        assert_eq!(ok.unwrap(), Login::from(Some(Arc::from("alice"))));
        let t = token(
            SECRET,
            &serde_json::json!({"sub": "dev1", "exp": in_secs(60)}),
        );
        let login = auth
            .authenticate(IP, Some("dev1"), Some(t.as_bytes()))
            .await;
        assert_eq!(login.unwrap().user.as_deref(), Some("dev1"));
        // A token's user is not the password file's: a reload does not remove it (the
        // core asks `user_gone` only of logins without an expiry).
        assert!(auth.user_gone(&auth.policy(), "dev1"));
    }

    #[tokio::test]
    async fn a_bad_key_on_reload_keeps_the_old_one() {
        let (auth, dir) = jwt_auth("", |c| c.client_id_patterns = vec!["%u-*".into()]);
        assert!(auth.policy().acl.client_id_allowed(Some("u"), "u-1"));
        assert!(!auth.policy().acl.client_id_allowed(Some("u"), "v-1"));
        std::fs::write(dir.path().join("jwt.key"), "too short\n").unwrap();
        assert!(auth.reload().is_err());
        let t = token(
            SECRET,
            &serde_json::json!({"sub": "dev1", "exp": in_secs(60)}),
        );
        assert!(auth
            .authenticate(IP, None, Some(t.as_bytes()))
            .await
            .is_ok());
        let rotated = "the next shared secret, 32 bytes or more";
        std::fs::write(dir.path().join("jwt.key"), rotated).unwrap();
        auth.reload().unwrap();
        let r = auth.authenticate(IP, None, Some(t.as_bytes())).await;
        assert_eq!(r, Err(Refusal::BadCredentials));
        let t2 = token(
            rotated,
            &serde_json::json!({"sub": "dev1", "exp": in_secs(60)}),
        );
        assert!(auth
            .authenticate(IP, None, Some(t2.as_bytes()))
            .await
            .is_ok());
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
