//! Configuration: clap flags over an optional TOML file over defaults.
//!
//! `mote --help` documents the flags; the `///` comments on [`MqttConfig`],
//! [`StorageConfig`] and [`LogConfig`] are the reference for the TOML file, and
//! `mote --print-config` prints the merged result (which is itself a valid config file).
//!
//! ```toml
//! [mqtt]
//! listen = "127.0.0.1:1883"
//! max_keepalive = 60
//! deny_subscribe = ["test/nosubscribe"]
//!
//! [storage]
//! data_dir = "mote-data"
//! fsync = "every=10"
//!
//! [log]
//! level = "info,mote_broker=debug"
//!
//! [http]
//! listen = "127.0.0.1:8083"
//!
//! [[listener]]
//! transport = "tls"
//! address = "0.0.0.0:8883"
//! cert_file = "/etc/mote/server.pem"
//! key_file = "/etc/mote/server.key"
//! ```
//!
//! Every section and every key is optional; unknown sections or keys are an error.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use serde::{Deserialize, Serialize};

pub use crate::store::fsync::{FsyncPolicy, ParseFsyncError};

/// Largest MQTT packet that can exist: 1 byte fixed header, 4 bytes Remaining Length,
/// and a Remaining Length of at most 268 435 455.
const MAX_MQTT_PACKET_SIZE: u32 = 268_435_460;
/// Smallest `max_packet_size` we accept: anything below cannot carry a useful CONNECT.
const MIN_MQTT_PACKET_SIZE: u32 = 64;
/// MQTT strings (topics, client ids) are length-prefixed with a u16.
const MAX_MQTT_STRING: usize = 65_535;
/// A server must accept client ids of 1 to 23 bytes (MQTT-3.1.3-5).
const MIN_CLIENT_ID_LENGTH: usize = 23;

/// Command-line flags of `mote`.
///
/// Flags override the TOML file given with `--config`, which overrides the defaults.
#[derive(clap::Parser, Debug, Clone, Default, PartialEq, Eq)]
#[command(
    name = "mote",
    version,
    about = "Mote: an MQTT 3.1.1 and 5.0 broker",
    long_about = None
)]
pub struct Cli {
    /// Address of the MQTT listener [default: 127.0.0.1:1883; TOML: mqtt.listen]
    #[arg(long, value_name = "ADDR:PORT")]
    pub mqtt: Option<SocketAddr>,

    /// Directory of the on-disk store [default: ./mote-data; TOML: storage.data_dir]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Keep all state in memory instead of on disk (lost on exit) [TOML: storage.memory]
    #[arg(long)]
    pub memory: bool,

    /// Read configuration from this TOML file (flags still override it)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the merged configuration as TOML and exit
    #[arg(long)]
    pub print_config: bool,

    /// When the store syncs to disk: "always", "never" or "every=MS" [default: always; TOML: storage.fsync]
    #[arg(long, value_name = "POLICY", value_parser = check_fsync_arg)]
    pub fsync: Option<String>,

    /// Address of the HTTP listener: MQTT over WebSocket, HTTP publish, SSE subscribe, metrics and the dashboard (docs/http.md) [default: off; TOML: http.listen]
    #[arg(long, value_name = "ADDR:PORT")]
    pub http: Option<SocketAddr>,

    /// Log filter, as a tracing env-filter directive, e.g. "debug" or "info,mote_broker=trace" [default: info; TOML: log.level]
    #[arg(long, value_name = "LEVEL")]
    pub log: Option<String>,

    /// A command instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Commands of `mote` besides serving.
#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Sets a user's password in a password file (read from the terminal without echo, or
    /// as one line of standard input), creating the file with mode 0600
    Passwd {
        /// Remove the user instead
        #[arg(long)]
        delete: bool,
        /// The password file (`[auth] password_file`)
        file: PathBuf,
        /// The user name
        user: String,
    },
    /// Work queues of a running broker, over MQTT (docs/queues.md)
    Queue {
        /// The broker's MQTT address
        #[arg(long, default_value = "127.0.0.1:1883", value_name = "ADDR:PORT")]
        broker: SocketAddr,
        /// User name (when the broker has a password file)
        #[arg(long)]
        username: Option<String>,
        /// Password (or the environment variable MOTE_PASSWORD)
        #[arg(long, env = "MOTE_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// What to do
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Streams of a running broker, over MQTT (docs/streams.md)
    Stream {
        /// The broker's MQTT address
        #[arg(long, default_value = "127.0.0.1:1883", value_name = "ADDR:PORT")]
        broker: SocketAddr,
        /// User name (when the broker has a password file)
        #[arg(long)]
        username: Option<String>,
        /// Password (or the environment variable MOTE_PASSWORD)
        #[arg(long, env = "MOTE_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// What to do
        #[command(subcommand)]
        action: StreamAction,
    },
}

/// `mote stream ...`.
#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum StreamAction {
    /// Lists the streams with their first and last offsets, messages and bytes (from
    /// `$SYS/broker/streams/...`, published every `sys_interval_secs`)
    Ls,
    /// Shows one stream's consumer groups with their committed offsets and lag
    Stats {
        /// The stream
        name: String,
    },
    /// Declares a stream (`$admin/stream/NAME`) with settings as JSON, e.g.
    /// '{"filter": "sensors/#", "retention": 86400}'
    Declare {
        /// The stream
        name: String,
        /// The settings, as JSON (the keys of `[stream.NAME]`)
        #[arg(default_value = "{}")]
        settings: String,
    },
}

/// `mote queue ...`.
#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum QueueAction {
    /// Lists the queues with their depth, jobs in flight, consumers and dead letters
    /// (from `$SYS/broker/queues/...`, published every `sys_interval_secs`)
    Ls,
    /// Declares a queue (`$admin/queue/NAME`) with settings as JSON, e.g.
    /// '{"visibility_timeout": 600}'
    Declare {
        /// The queue
        name: String,
        /// The settings, as JSON (the keys of `[queue.NAME]`)
        #[arg(default_value = "{}")]
        settings: String,
    },
    /// Shows one queue's depth, jobs in flight, consumers and dead letters, and those of
    /// its dead-letter queue
    Stats {
        /// The queue
        name: String,
    },
    /// Moves the jobs waiting in NAME.dlq back to NAME
    Redrive {
        /// The queue
        name: String,
    },
}

/// Lets clap reject a bad `--fsync` with its usual usage message, while the field stays a
/// `String`.
fn check_fsync_arg(s: &str) -> Result<String, ParseFsyncError> {
    s.parse::<FsyncPolicy>().map(|_| s.to_owned())
}

/// The merged, validated configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Section `[mqtt]`: the listener and every protocol limit.
    pub mqtt: MqttConfig,
    /// Section `[storage]`: where and how durably state is kept.
    pub storage: StorageConfig,
    /// Section `[log]`: logging.
    pub log: LogConfig,
    /// Section `[auth]`: users, passwords and access rules (see `docs/security.md`).
    pub auth: AuthConfig,
    /// Section `[http]`: the HTTP listener (see `docs/http.md`). Off unless `listen` is set.
    pub http: HttpConfig,
    /// Sections `[[listener]]`: listeners besides `mqtt.listen` (TLS, see `docs/tls.md`).
    /// Default none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listener: Vec<ListenerConfig>,
    /// Section `[queues]`: work queues in general (see `docs/queues.md`).
    pub queues: QueuesConfig,
    /// Sections `[queue.NAME]`: declared work queues and their settings. Default none.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub queue: std::collections::BTreeMap<String, QueueDecl>,
    /// Section `[streams]`: streams in general (see `docs/streams.md`).
    pub streams: StreamsConfig,
    /// Sections `[stream.NAME]`: declared streams and their settings. Default none.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub stream: std::collections::BTreeMap<String, StreamDecl>,
}

/// Section `[streams]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct StreamsConfig {
    /// A stream used before it is declared (a PUBLISH to `$stream/NAME`, a SUBSCRIBE
    /// to it) is created with the defaults. When `false`, undeclared streams do not
    /// exist. Default `true`.
    pub auto_create: bool,
    /// Streams the broker keeps at most (declared ones included): a stream costs a
    /// directory, open files and up to 4 MiB of recent messages in memory, so clients
    /// creating streams on first use cannot make it grow without bound. Beyond it a
    /// PUBLISH to a new stream is refused (MQTT 5: 0x97) and a SUBSCRIBE too. Default
    /// `1000`.
    pub max_streams: usize,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        StreamsConfig {
            auto_create: true,
            max_streams: 1000,
        }
    }
}

/// Where a reader that names no start begins.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DefaultOffset {
    /// The first message kept.
    Earliest,
    /// The next message appended.
    #[default]
    Latest,
}

/// A stream's declaration: `[stream.NAME]` in TOML, or the JSON body of a PUBLISH to
/// `$admin/stream/NAME` (same keys). Absent keys take the defaults (docs/streams.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct StreamDecl {
    /// The stream also appends every PUBLISH whose topic matches this filter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Seconds a segment is kept after its newest message. Default 604800 (7 days);
    /// 0 = no age limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<u64>,
    /// Bytes kept at most (the oldest segments go). Default 1 GiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Bytes at which a segment is closed. Default 16 MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment_bytes: Option<u64>,
    /// Where a reader that names no start begins: `latest` (default) or `earliest`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_offset: Option<DefaultOffset>,
    /// What orders messages within a group: `topic` (default) or `user:NAME` (the v5
    /// user property NAME).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl StreamDecl {
    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        check_collect_filter(self.filter.as_deref(), "stream")?;
        if let Some(k) = &self.key {
            let ok = k == "topic" || k.strip_prefix("user:").is_some_and(|n| !n.is_empty());
            if !ok {
                return Err(format!("key {k:?}: `topic` or `user:NAME`"));
            }
        }
        if self.max_bytes == Some(0) {
            return Err("max_bytes must be at least 1".to_owned());
        }
        if self.segment_bytes.is_some_and(|b| b < 4096) {
            return Err("segment_bytes must be at least 4096".to_owned());
        }
        Ok(())
    }
}

/// Section `[queues]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct QueuesConfig {
    /// A queue used before it is declared (a PUBLISH to `$queue/NAME`, a SUBSCRIBE to
    /// it) is created with the defaults. When `false`, undeclared queues do not exist: a
    /// PUBLISH there reaches nobody (MQTT 5: PUBACK 0x10) and a SUBSCRIBE is refused.
    /// Default `true`.
    pub auto_create: bool,
    /// Queues the broker keeps at most, declared ones aside (each costs a store session
    /// and its table entries): clients creating queues on first use cannot make it grow
    /// without bound. Past it a PUBLISH to a new queue reaches nobody (MQTT 5: 0x10) and
    /// a SUBSCRIBE is refused. Default `1000`.
    pub max_queues: usize,
}

impl Default for QueuesConfig {
    fn default() -> Self {
        QueuesConfig {
            auto_create: true,
            max_queues: 1000,
        }
    }
}

/// Checks the `filter` a queue or stream (`what`) collects: a topic filter, not of `$`
/// topics.
fn check_collect_filter(filter: Option<&str>, what: &str) -> Result<(), String> {
    let Some(f) = filter else {
        return Ok(());
    };
    check_topic_filter(f).map_err(|why| format!("filter {f:?} is not a topic filter: {why}"))?;
    if f.starts_with('$') {
        return Err(format!("filter {f:?}: a {what} cannot collect `$` topics"));
    }
    Ok(())
}

/// Whether `name` is a work queue's name: 1 to 64 of `A-Z a-z 0-9 _ . -`.
pub fn is_queue_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// What a full work queue does with one more message.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// The publisher is refused (MQTT 5: PUBACK 0x97 Quota exceeded).
    #[default]
    RejectPublish,
    /// The oldest waiting message is deleted to make room.
    DropOldest,
    /// The oldest waiting message moves to the dead-letter queue `NAME.dlq`.
    DeadLetter,
}

/// A work queue's declaration: `[queue.NAME]` in TOML, or the JSON body of a PUBLISH
/// to `$admin/queue/NAME` (same keys). Absent keys take the defaults (docs/queues.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct QueueDecl {
    /// The queue also collects every PUBLISH whose topic matches this filter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Seconds a message is kept before it is deleted unconsumed (SQS
    /// MessageRetentionPeriod). Default 345600 (4 days); 0 = forever.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retention: Option<u64>,
    /// Seconds a new message waits before it can be consumed (SQS DelaySeconds).
    /// Default 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<u32>,
    /// Seconds a consumer may hold a message unacknowledged. Default
    /// `mqtt.queue_visibility_timeout_secs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visibility_timeout: Option<u64>,
    /// Deliveries before a message is dead-lettered (0 = no limit). Default
    /// `mqtt.queue_max_deliveries`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_deliveries: Option<u32>,
    /// Unacknowledged messages per consumer at most. Default `mqtt.queue_prefetch`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefetch: Option<usize>,
    /// Messages the queue holds at most. Default `mqtt.max_queued_messages`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_messages: Option<usize>,
    /// Bytes the queue holds at most. Default `mqtt.max_queued_bytes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<usize>,
    /// What a full queue does: `reject_publish` (default), `drop_oldest` or
    /// `dead_letter`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overflow: Option<Overflow>,
}

impl QueueDecl {
    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        check_collect_filter(self.filter.as_deref(), "queue")?;
        if self.prefetch == Some(0) {
            return Err("prefetch must be at least 1".to_owned());
        }
        if self.visibility_timeout == Some(0) {
            return Err("visibility_timeout must be at least 1 second".to_owned());
        }
        if self.max_messages == Some(0) || self.max_bytes == Some(0) {
            return Err("max_messages and max_bytes must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// One `[[listener]]`: an MQTT listener over TLS (see `docs/tls.md`). Its certificate,
/// key, client CA and CRL are read at start (a bad file stops the start) and again on SIGHUP
/// or when the files change (a bad file then keeps the old ones in force).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// The transport: only `"tls"` (the plain TCP listener is `mqtt.listen`). Required.
    pub transport: String,
    /// Address to bind, e.g. `"0.0.0.0:8883"`. Required.
    pub address: SocketAddr,
    /// The server's certificate chain, PEM, the server's own certificate first. Required.
    pub cert_file: PathBuf,
    /// The private key of that certificate, PEM (PKCS#8, PKCS#1 or SEC1). Required.
    pub key_file: PathBuf,
    /// CA certificates (PEM) that client certificates are verified against (mTLS).
    /// Default none: no client certificate is asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: certificate revocation lists (PEM, one or more `X509 CRL`
    /// blocks), one from each CA that issues client certificates. A client certificate
    /// that is revoked, whose issuer has no CRL here, or checked against a CRL past its
    /// `nextUpdate` is refused. Read again with the certificates. Default none: no
    /// revocation check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_file: Option<PathBuf>,
    /// With `client_ca_file`: whether a client without a certificate is refused (a
    /// client with a certificate the CA did not sign always is). Default `false`.
    #[serde(default)]
    pub require_certificate: bool,
    /// Oldest TLS version accepted: `"1.2"` or `"1.3"`. Default `"1.2"`.
    #[serde(default = "default_min_tls_version")]
    pub min_tls_version: String,
    /// With `require_certificate`: the client certificate's subject common name (CN) is
    /// the client's user name for the access rules, and the CONNECT's user name and
    /// password are not checked. Default `false`.
    #[serde(default)]
    pub use_identity_as_username: bool,
}

/// Section `[http]`: one HTTP listener serving MQTT over WebSocket, HTTP publish, SSE
/// subscribe, retained messages, metrics and the dashboard (see `docs/http.md`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to bind, e.g. `"127.0.0.1:8083"`. Default none: no HTTP listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Paths that accept MQTT over WebSocket. Default `["/mqtt", "/"]` (what mqtt.js and
    /// paho use).
    pub ws_paths: Vec<String>,
    /// Events an SSE client may have waiting before the oldest QoS 0 ones are dropped
    /// (and a `dropped` event says how many). Default 1000.
    pub sse_buffer: usize,
    /// Payload bytes an SSE client may have waiting before QoS 0 messages are dropped
    /// (beside `sse_buffer`, which counts them). Default 4 MiB.
    pub sse_buffer_bytes: usize,
    /// Seconds between keep-alive comments on an idle SSE stream. Default 15.
    pub sse_keepalive_secs: u64,
    /// Unacknowledged messages an SSE client with a named session holds at once (its
    /// MQTT Receive Maximum): the broker keeps the rest queued. Default 100.
    pub sse_window: u16,
    /// `Idempotency-Key`s of HTTP publishes remembered, newest first. Default 10000.
    pub idempotency_keys: usize,
    /// Seconds an `Idempotency-Key` is remembered. Default 86400 (a day).
    pub idempotency_ttl_secs: u64,
    /// Seconds a client may take to send a request's headers. Default 10.
    pub header_timeout_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: None,
            ws_paths: vec!["/mqtt".to_owned(), "/".to_owned()],
            sse_buffer: 1000,
            sse_buffer_bytes: 4 * 1024 * 1024,
            sse_keepalive_secs: 15,
            sse_window: 100,
            idempotency_keys: 10_000,
            idempotency_ttl_secs: 86_400,
            header_timeout_secs: 10,
        }
    }
}

impl HttpConfig {
    /// Checks the section's values; errors name the key.
    fn validate(&self) -> anyhow::Result<()> {
        for p in &self.ws_paths {
            ensure!(
                p.starts_with('/') && !p.starts_with("/api/") && !p.starts_with("/ui"),
                "http.ws_paths: {p:?} must start with / and not be under /api/ or /ui"
            );
        }
        ensure!(self.sse_buffer >= 1, "http.sse_buffer must be at least 1");
        ensure!(self.sse_window >= 1, "http.sse_window must be at least 1");
        ensure!(
            self.sse_keepalive_secs >= 1,
            "http.sse_keepalive_secs must be at least 1"
        );
        ensure!(
            self.header_timeout_secs >= 1,
            "http.header_timeout_secs must be at least 1"
        );
        Ok(())
    }
}

/// `listener.min_tls_version`'s default.
fn default_min_tls_version() -> String {
    "1.2".to_owned()
}

/// Section `[auth]`: who may connect and what each may read and write. The files are
/// read at start and again on SIGHUP (a bad file then keeps the old ones in force).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Password file: `USER:HASH` lines (argon2id PHC strings) as `mote passwd` writes
    /// them. Default none: no password is checked.
    pub password_file: Option<PathBuf>,
    /// Access rules file (format in `docs/security.md`). Default none: every topic may be
    /// read and written, except what `mqtt.deny_subscribe` lists.
    pub acl_file: Option<PathBuf>,
    /// Whether a client without a user name may connect. Default: `false` when a
    /// password file or JWT logins are set, `true` otherwise.
    pub allow_anonymous: Option<bool>,
    /// Failed logins one IP address may have per minute; beyond them its logins are
    /// refused unchecked until the minute is over. `0` means no limit. Default `10`.
    pub max_failures_per_minute: u32,
    /// JSON Web Token logins (`docs/security.md`): the algorithm every token must be
    /// signed with, `"HS256"`, `"RS256"` or `"ES256"`. A client sends its token as the
    /// CONNECT password. Needs `jwt_key_file`. Default none: no token is accepted.
    pub jwt_algorithm: Option<JwtAlgorithm>,
    /// The key tokens are checked with. RS256 and ES256: a PEM public key
    /// (`-----BEGIN PUBLIC KEY-----`; ES256 on the P-256 curve). HS256: a file holding
    /// the shared secret, its bytes less one final line break, at least 32 bytes (never
    /// put the secret in this file). Read at start and on SIGHUP. Default none.
    pub jwt_key_file: Option<PathBuf>,
    /// When set, a token's `iss` claim must equal it. Default none: not checked.
    pub jwt_issuer: Option<String>,
    /// When set, a token's `aud` claim must be it or a list holding it. Default none: not
    /// checked (set it when the key also signs tokens meant for other services).
    pub jwt_audience: Option<String>,
    /// The claim whose string value is the client's user name. Default `"sub"`.
    pub jwt_user_claim: String,
    /// The claim that may carry the client's access rules, an object of topic filter
    /// lists `{"pub": [...], "sub": [...], "all": [...]}` (`docs/security.md`). A token
    /// without it gets the rules file's rules only. Default `"acl"`.
    pub jwt_acl_claim: String,
    /// Seconds of clock difference allowed with the token issuer when `exp` and `nbf`
    /// are checked (and added to the time a connection may stay after `exp`). At most
    /// 300. Default `0`.
    pub jwt_leeway_secs: u32,
    /// Client ids a user may use: a CONNECT whose client id matches none of these
    /// patterns is refused (MQTT 5 CONNACK 0x85, 3.1.1 return code 2). In a pattern `%u`
    /// stands for the user name and `*` for any run of characters, e.g.
    /// `["%u", "%u-*"]`. A client without a user name matches no pattern that holds
    /// `%u`. Default none: any client id.
    pub client_id_patterns: Vec<String>,
    /// Sections `[[auth.limits]]`: per-user overrides of `[mqtt]`'s per-client limits
    /// (`docs/security.md`), e.g. a backend with no publish rate and a large queue
    /// beside devices held to little. Decided once, at CONNECT, from the client's user
    /// name: the first entry that lists it applies; a limit it does not set is
    /// `[mqtt]`'s; a client without a user name (anonymous) has `[mqtt]`'s. Read at
    /// start only (SIGHUP does not read the configuration file again). Default none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<UserLimits>,
}

/// Section `[[auth.limits]]`: the limits of the users it lists. Each limit is optional;
/// one left out is `[mqtt]`'s.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct UserLimits {
    /// User names it applies to, `*` standing for any run of characters (`"ingest-*"`;
    /// `"*"`: every user with a name). Required, not empty.
    pub users: Vec<String>,
    /// PUBLISH packets one of its clients may send per second, as
    /// `mqtt.max_publish_rate`. `0` = no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_publish_rate: Option<u32>,
    /// PUBLISH bytes one of its clients may send per second, as
    /// `mqtt.max_publish_bytes_rate`. `0` = no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_publish_bytes_rate: Option<u64>,
    /// Most subscriptions one of its sessions may hold, as
    /// `mqtt.max_subscriptions_per_client`. Must be at least 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_subscriptions_per_client: Option<usize>,
    /// Most messages queued per session, as `mqtt.max_queued_messages`. Must be at
    /// least 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queued_messages: Option<usize>,
    /// Most payload bytes queued per session, as `mqtt.max_queued_bytes`. Must be at
    /// least 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queued_bytes: Option<usize>,
}

/// How JSON Web Tokens are signed (`auth.jwt_algorithm`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 and a shared secret.
    #[serde(rename = "HS256")]
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (an RSA key of 2048 bits or more).
    #[serde(rename = "RS256")]
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    #[serde(rename = "ES256")]
    Es256,
}

/// Largest `auth.jwt_leeway_secs`.
pub const MAX_JWT_LEEWAY_SECS: u32 = 300;

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            password_file: None,
            acl_file: None,
            allow_anonymous: None,
            max_failures_per_minute: 10,
            jwt_algorithm: None,
            jwt_key_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_user_claim: "sub".to_owned(),
            jwt_acl_claim: "acl".to_owned(),
            jwt_leeway_secs: 0,
            client_id_patterns: Vec::new(),
            limits: Vec::new(),
        }
    }
}

impl AuthConfig {
    /// Checks the values that need no file; errors name the key as `auth.key`.
    fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            self.jwt_algorithm.is_some() == self.jwt_key_file.is_some(),
            "auth.jwt_algorithm and auth.jwt_key_file go together: set both or neither"
        );
        ensure!(
            !self.jwt_user_claim.is_empty(),
            "auth.jwt_user_claim must not be empty"
        );
        ensure!(
            !self.jwt_acl_claim.is_empty(),
            "auth.jwt_acl_claim must not be empty"
        );
        ensure!(
            self.jwt_issuer.as_deref() != Some(""),
            "auth.jwt_issuer must not be empty (leave it out not to check)"
        );
        ensure!(
            self.jwt_audience.as_deref() != Some(""),
            "auth.jwt_audience must not be empty (leave it out not to check)"
        );
        ensure!(
            self.jwt_leeway_secs <= MAX_JWT_LEEWAY_SECS,
            "auth.jwt_leeway_secs must be at most {MAX_JWT_LEEWAY_SECS} (got {})",
            self.jwt_leeway_secs
        );
        for (i, p) in self.client_id_patterns.iter().enumerate() {
            if let Err(why) = crate::proto::login::ClientIds::parse(std::slice::from_ref(p)) {
                bail!("auth.client_id_patterns[{i}] = {p:?}: {why}");
            }
        }
        for (i, l) in self.limits.iter().enumerate() {
            ensure!(
                !l.users.is_empty(),
                "auth.limits[{i}].users must list at least one user name or pattern"
            );
            if let Some(u) = l.users.iter().find(|u| u.is_empty()) {
                bail!("auth.limits[{i}].users holds an empty name {u:?}");
            }
            ensure!(
                l.max_subscriptions_per_client != Some(0),
                "auth.limits[{i}].max_subscriptions_per_client must be at least 1 (got 0)"
            );
            ensure!(
                l.max_queued_messages != Some(0),
                "auth.limits[{i}].max_queued_messages must be at least 1 (got 0)"
            );
            ensure!(
                l.max_queued_bytes != Some(0),
                "auth.limits[{i}].max_queued_bytes must be at least 1 (got 0)"
            );
        }
        Ok(())
    }
}

/// Section `[mqtt]`: the MQTT listener and the limits it enforces.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Address the MQTT listener binds to (flag `--mqtt`). Default `"127.0.0.1:1883"`.
    pub listen: SocketAddr,
    /// Most client connections open at once (counting sockets that have not sent CONNECT
    /// yet). When the table is full a new connection takes the place of the oldest socket
    /// that has not completed CONNECT, else of the connected client idle longest (see
    /// `idle_evict_after_secs`); when there is neither it is refused.
    /// Must be at least 1. Default `10000`.
    pub max_connections: usize,
    /// Largest MQTT packet accepted, in bytes, counting the whole packet (fixed header
    /// included); also announced as the v5 Maximum Packet Size. Must be between 64 and
    /// 268435460. Default `1048576` (1 MiB).
    pub max_packet_size: u32,
    /// Largest keep alive, in seconds, a v5 client may use; `0` means no maximum. A v5
    /// client asking for more (or for 0) is told this value in Server Keep Alive and held
    /// to it. MQTT 3.1.1 has no way to tell a client its keep alive, so a 3.1.1 client is
    /// held to its own value (holding it to a shorter one would disconnect a client that
    /// follows the protocol). Default `3600`.
    pub max_keepalive: u16,
    /// Time allowed between TCP accept and a complete CONNECT packet, in milliseconds.
    /// Must be at least 1. Default `10000`.
    pub connect_timeout_ms: u64,
    /// Inbound QoS 1/2 PUBLISHes a client may have unacknowledged at once (the v5 Receive
    /// Maximum the broker announces). Must be at least 1. Default `1024`.
    pub receive_maximum: u16,
    /// Outbound QoS 1/2 messages the broker keeps unacknowledged per client (further
    /// capped by the client's own Receive Maximum). Must be at least 1. Default `256`.
    pub max_inflight: u16,
    /// PUBLISH packets a client may send per second (a token bucket holding one second's
    /// worth). A client over it is not disconnected: the broker stops reading its
    /// socket until it is within the rate again (TCP backpressure). `0` = no limit.
    /// Default `0`.
    pub max_publish_rate: u32,
    /// PUBLISH bytes a client may send per second, the same way. `0` = no limit.
    /// Default `0`.
    pub max_publish_bytes_rate: u64,
    /// Publisher backpressure: a PUBLISH that fills an online subscriber's queue past
    /// half of `max_queued_messages` or `max_queued_bytes` makes the broker stop reading
    /// the publisher's socket until that subscriber drained below a quarter of them, so
    /// publishers that outrun a subscriber are slowed rather than its messages dropped.
    /// One congested subscriber pauses publishers for at most this many milliseconds in
    /// a row; past it the queue's limits apply (QoS 0 dropped oldest first, a QoS 1/2
    /// consumer that cannot keep up disconnected). A publisher whose own queue is
    /// congested is never paused. `0` = off. Default `5000`.
    pub publisher_backpressure_ms: u64,
    /// Inbound topic aliases accepted from a v5 client (the Topic Alias Maximum the broker
    /// announces); `0` disables topic aliases. Default `64`.
    pub topic_alias_maximum: u16,
    /// Highest QoS the broker grants and accepts (0, 1 or 2). Default `2`.
    pub max_qos: u8,
    /// Whether retained messages are supported. Default `true`.
    pub retain_available: bool,
    /// Whether subscriptions may use the wildcards `+` and `#`. Default `true`.
    pub wildcard_subscriptions: bool,
    /// Whether v5 Subscription Identifiers are supported. Default `true`.
    pub subscription_identifiers: bool,
    /// Whether shared subscriptions (`$share/group/filter`) are supported. Default `true`.
    pub shared_subscriptions: bool,
    /// Longest session expiry interval granted, in seconds; `4294967295` means a session
    /// may never expire. Default `4294967295`.
    pub max_session_expiry: u32,
    /// Most messages queued per session (offline and online queue together).
    /// Must be at least 1. Default `10000`.
    pub max_queued_messages: usize,
    /// Most payload bytes queued per session (offline and online queue together).
    /// Must be at least 1. Default `67108864` (64 MiB).
    pub max_queued_bytes: usize,
    /// Longest topic name or topic filter accepted, in bytes. Must be between 1 and
    /// 65535. Default `65535`.
    pub max_topic_length: usize,
    /// Most levels (`/`-separated parts) in a topic name or filter. Must be at least 1.
    /// Default `128`.
    pub max_topic_levels: usize,
    /// Longest client identifier accepted, in bytes. Must be between 23 (the least MQTT
    /// allows a server to accept) and 65535. Default `256`.
    pub max_client_id_length: usize,
    /// Most retained messages kept across all topics. Default `1000000`.
    pub max_retained_messages: usize,
    /// Most bytes of retained messages kept across all topics (payload, topic,
    /// properties and bookkeeping); a retained message that would pass it is delivered
    /// but not retained, and counted (`$SYS/broker/retained/refused`). Must be at
    /// least 1. Default `1073741824` (1 GiB: a million small retained messages fit,
    /// a thousand of a megabyte do not).
    pub max_retained_bytes: usize,
    /// Largest payload, in bytes, of a message that is retained; a larger one is
    /// delivered but not retained, and counted. Default `1048576` (1 MiB).
    pub max_retained_message_bytes: usize,
    /// Most subscriptions one session may hold; a SUBSCRIBE past it gets v5 reason 0x97
    /// (Quota exceeded), 3.1.1 0x80, for the filters beyond it. Must be at least 1.
    /// Default `10000`.
    pub max_subscriptions_per_client: usize,
    /// Work queues (`docs/queues.md`): most unacknowledged jobs one consumer holds from
    /// a queue (further capped by its Receive Maximum). Must be at least 1. Default `10`.
    pub queue_prefetch: usize,
    /// Work queues: deliveries of a job after which, still unacknowledged, it moves to
    /// the queue `NAME.dlq` instead of back (SQS's maxReceiveCount). `0` means no limit.
    /// Default `5`.
    pub queue_max_deliveries: u32,
    /// Work queues: seconds a consumer may hold a job without acknowledging it before
    /// it is given to another (SQS's visibility timeout). Must be at least 1. Default
    /// `300`.
    pub queue_visibility_timeout_secs: u64,
    /// Topic filters that may not be subscribed to (SUBACK 0x80; MQTT 5: 0x87). A requested
    /// filter is refused if it equals a listed filter or is matched by a listed wildcard
    /// filter. Each entry must be a valid topic filter. Default `[]`.
    pub deny_subscribe: Vec<String>,
    /// Topic filters whose payloads are `SensorEvent`s even without the MQTT 5 content
    /// type `application/x-mote-event` (3.1.1 devices have none): shown as JSON over SSE
    /// and HTTP and to `$json/` subscribers (docs/http.md). Default
    /// `["mote/events", "mote/events/#"]` (the device client's default topic).
    pub event_topics: Vec<String>,
    /// Seconds between publications of the broker's counters under `$SYS/broker/...`
    /// (retained, QoS 0); `0` turns them off. Default `10`.
    pub sys_interval_secs: u64,
    /// Largest packet accepted from a client before its CONNECT is accepted, that is the
    /// CONNECT itself, in bytes (whole packet; `max_packet_size` applies too when it is
    /// smaller). A larger one closes the connection without reading its body, so a
    /// client that has not connected cannot make the broker buffer more than this.
    /// Must be between 64 and 268435460. Default `65536` (64 KiB: room for a 256-byte
    /// client id, a multi-KiB token as password and a will of tens of KiB).
    pub max_connect_packet_size: u32,
    /// Seconds a connected client must have sent nothing before it can be evicted to make
    /// room for a new connection when `max_connections` is reached (sockets that have not
    /// completed CONNECT go first, oldest first; then the client idle longest, with v5
    /// DISCONNECT 0x89 Server busy; its will and session expiry proceed as for any lost
    /// connection). `0` never evicts connected clients. MQTT 3.1.1 §3.1.2.10 lets a server
    /// disconnect a client it finds inactive whatever its Keep Alive. Default `60`.
    pub idle_evict_after_secs: u64,
    /// Most sockets one IP address may hold that have not completed CONNECT; a further
    /// one is closed at once. `0` means no limit. Default `64`.
    pub max_pending_per_ip: usize,
    /// Most connections (with or without CONNECT) one IP address may hold; a further one
    /// is closed at once. `0` means no limit. Default `0` (devices behind one NAT
    /// address share it).
    pub max_connections_per_ip: usize,
    /// Threads serving connections; `0` means one per core. Packets that arrive together
    /// are handled in the order they arrived, also across connections (a SUBSCRIBE that
    /// reaches the broker before another client's PUBLISH is handled first): with one
    /// thread the scheduler keeps that order, with more the connections take arrival
    /// tickets (`runtime/arrival.rs`). At most 1024. Default `1`.
    pub worker_threads: usize,
}

impl MqttConfig {
    /// The threads serving connections: `worker_threads`, or one per core for `0`.
    pub fn threads(&self) -> usize {
        match self.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 1883)),
            max_connections: 10_000,
            max_packet_size: 1_048_576,
            max_keepalive: 3600,
            connect_timeout_ms: 10_000,
            receive_maximum: 1024,
            max_inflight: 256,
            max_publish_rate: 0,
            max_publish_bytes_rate: 0,
            publisher_backpressure_ms: 5000,
            topic_alias_maximum: 64,
            max_qos: 2,
            retain_available: true,
            wildcard_subscriptions: true,
            subscription_identifiers: true,
            shared_subscriptions: true,
            max_session_expiry: u32::MAX,
            max_queued_messages: 10_000,
            max_queued_bytes: 64 * 1024 * 1024,
            max_topic_length: MAX_MQTT_STRING,
            max_topic_levels: 128,
            max_client_id_length: 256,
            max_retained_messages: 1_000_000,
            max_retained_bytes: 1024 * 1024 * 1024,
            max_retained_message_bytes: 1024 * 1024,
            max_subscriptions_per_client: 10_000,
            queue_prefetch: 10,
            queue_max_deliveries: 5,
            queue_visibility_timeout_secs: 300,
            deny_subscribe: Vec::new(),
            event_topics: vec!["mote/events".to_owned(), "mote/events/#".to_owned()],
            sys_interval_secs: 10,
            max_connect_packet_size: 64 * 1024,
            idle_evict_after_secs: 60,
            max_pending_per_ip: 64,
            max_connections_per_ip: 0,
            worker_threads: 1,
        }
    }
}

/// Section `[storage]`: the store that keeps sessions, queued, inflight and retained
/// messages.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Directory of the on-disk store, created if missing (flag `--data-dir`); unused when
    /// `memory` is true. Default `"mote-data"` (relative to the working directory).
    pub data_dir: PathBuf,
    /// Keep all state in memory instead of on disk; it is lost when the broker exits
    /// (flag `--memory`). Default `false`.
    pub memory: bool,
    /// When the store syncs writes to disk before acknowledging them (flag `--fsync`):
    /// `"always"` (before every acknowledgement), `"never"` (leave it to the OS), or
    /// `"every=MS"` (at most MS milliseconds of acknowledged messages may be lost).
    /// Default `"always"`.
    pub fsync: FsyncPolicy,
    /// Bytes of queued deliveries the broker keeps in memory across all sessions. Beyond
    /// it, deliveries to persistent sessions wait on disk only (read back as the session
    /// drains); per-session limits (`mqtt.max_queued_messages`, `mqtt.max_queued_bytes`)
    /// still apply. Deliveries that cannot wait on disk (QoS 0, clean sessions, and every
    /// delivery with `memory = true`) meet it as a hard cap: past it they are dropped and
    /// counted (`$SYS/broker/messages/dropped`). Must be at least 1. Default `268435456`
    /// (256 MiB).
    pub queue_memory_bytes: usize,
    /// Resident memory (RSS) the whole broker should stay within while queues grow;
    /// 0 = no such target. When set, the in-memory queue budget is also capped at this
    /// minus what the rest of the broker uses (RSS less queued bytes, measured every
    /// 100 ms), so queued deliveries move to disk before the process passes it.
    /// Connections, their buffers and messages in flight still need memory of their
    /// own: this steers the queues, it is not a hard limit. Unused with
    /// `memory = true`. Default `0`.
    pub memory_budget_bytes: usize,
    /// Size at which a log segment is closed and the next one started (the next is
    /// prepared, zero-filled, in the background once the current one is half full).
    /// At least 65536. Default `67108864` (64 MiB).
    pub segment_bytes: u64,
    /// Log growth since the last compaction below which the log is never compacted.
    /// Beyond it, the log is rewritten as a snapshot of the live state once it is at
    /// least twice the last snapshot and at least half of it is garbage. At least 65536.
    /// Default `67108864` (64 MiB).
    pub compact_min_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("mote-data"),
            memory: false,
            fsync: FsyncPolicy::Always,
            queue_memory_bytes: 256 * 1024 * 1024,
            memory_budget_bytes: 0,
            segment_bytes: crate::store::journal::DEFAULT_SEGMENT_BYTES,
            compact_min_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Section `[log]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Log filter as a `tracing` env-filter directive, e.g. `"debug"` or
    /// `"info,mote_broker=trace"` (flag `--log`). Default `"info"`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
        }
    }
}

impl Config {
    /// Defaults, then the TOML file named by `--config` (if any), then the flags.
    /// The result is validated; errors name the file and the offending key.
    pub fn load(cli: &Cli) -> anyhow::Result<Config> {
        let mut config = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                Self::parse_toml(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => Config::default(),
        };
        config.apply_cli(cli)?;
        config.validate().with_context(|| match &cli.config {
            Some(path) => format!("invalid configuration (from {} and flags)", path.display()),
            None => "invalid configuration (from flags)".to_owned(),
        })?;
        Ok(config)
    }

    /// Parses TOML file content over the defaults and validates the result.
    pub fn from_toml_str(s: &str) -> anyhow::Result<Config> {
        let config = Self::parse_toml(s)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value is in range; the error names the key (`section.key`).
    pub fn validate(&self) -> anyhow::Result<()> {
        let m = &self.mqtt;
        ensure!(
            m.max_connections >= 1,
            "mqtt.max_connections must be at least 1 (got 0)"
        );
        ensure!(
            (MIN_MQTT_PACKET_SIZE..=MAX_MQTT_PACKET_SIZE).contains(&m.max_packet_size),
            "mqtt.max_packet_size must be between {MIN_MQTT_PACKET_SIZE} and \
             {MAX_MQTT_PACKET_SIZE} bytes (got {})",
            m.max_packet_size
        );
        ensure!(
            m.connect_timeout_ms >= 1,
            "mqtt.connect_timeout_ms must be at least 1 (got 0)"
        );
        ensure!(
            m.receive_maximum >= 1,
            "mqtt.receive_maximum must be at least 1 (got 0)"
        );
        ensure!(
            m.max_inflight >= 1,
            "mqtt.max_inflight must be at least 1 (got 0)"
        );
        ensure!(
            m.max_qos <= 2,
            "mqtt.max_qos must be 0, 1 or 2 (got {})",
            m.max_qos
        );
        ensure!(
            m.max_queued_messages >= 1,
            "mqtt.max_queued_messages must be at least 1 (got 0)"
        );
        ensure!(
            m.max_queued_bytes >= 1,
            "mqtt.max_queued_bytes must be at least 1 (got 0)"
        );
        ensure!(
            (1..=MAX_MQTT_STRING).contains(&m.max_topic_length),
            "mqtt.max_topic_length must be between 1 and {MAX_MQTT_STRING} (got {})",
            m.max_topic_length
        );
        ensure!(
            m.max_topic_levels >= 1,
            "mqtt.max_topic_levels must be at least 1 (got 0)"
        );
        ensure!(
            (MIN_CLIENT_ID_LENGTH..=MAX_MQTT_STRING).contains(&m.max_client_id_length),
            "mqtt.max_client_id_length must be between {MIN_CLIENT_ID_LENGTH} and \
             {MAX_MQTT_STRING} (got {})",
            m.max_client_id_length
        );
        ensure!(
            (MIN_MQTT_PACKET_SIZE..=MAX_MQTT_PACKET_SIZE).contains(&m.max_connect_packet_size),
            "mqtt.max_connect_packet_size must be between {MIN_MQTT_PACKET_SIZE} and \
             {MAX_MQTT_PACKET_SIZE} bytes (got {})",
            m.max_connect_packet_size
        );
        ensure!(
            m.max_retained_bytes >= 1,
            "mqtt.max_retained_bytes must be at least 1 (got 0)"
        );
        ensure!(
            m.max_subscriptions_per_client >= 1,
            "mqtt.max_subscriptions_per_client must be at least 1 (got 0)"
        );
        ensure!(
            m.queue_prefetch >= 1,
            "mqtt.queue_prefetch must be at least 1 (got 0)"
        );
        ensure!(
            m.queue_visibility_timeout_secs >= 1,
            "mqtt.queue_visibility_timeout_secs must be at least 1 (got 0)"
        );
        ensure!(
            m.worker_threads <= 1024,
            "mqtt.worker_threads must be at most 1024 (got {})",
            m.worker_threads
        );
        for (i, filter) in m.event_topics.iter().enumerate() {
            if let Err(why) = check_topic_filter(filter) {
                bail!("mqtt.event_topics[{i}] = {filter:?} is not a valid topic filter: {why}");
            }
        }
        for (i, filter) in m.deny_subscribe.iter().enumerate() {
            if let Err(why) = check_topic_filter(filter) {
                bail!("mqtt.deny_subscribe[{i}] = {filter:?} is not a valid topic filter: {why}");
            }
        }

        let s = &self.storage;
        if !s.memory {
            ensure!(
                !s.data_dir.as_os_str().is_empty(),
                "storage.data_dir must not be empty (or set storage.memory = true)"
            );
        }
        ensure!(
            s.queue_memory_bytes >= 1,
            "storage.queue_memory_bytes must be at least 1 (got 0)"
        );
        ensure!(
            s.segment_bytes >= 65536,
            "storage.segment_bytes must be at least 65536 (got {})",
            s.segment_bytes
        );
        ensure!(
            s.compact_min_bytes >= 65536,
            "storage.compact_min_bytes must be at least 65536 (got {})",
            s.compact_min_bytes
        );
        if let FsyncPolicy::Every(d) = s.fsync {
            ensure!(
                d >= Duration::from_millis(1),
                "storage.fsync interval must be at least 1 ms (got {d:?})"
            );
        }

        self.auth.validate()?;
        self.http.validate()?;
        for (name, q) in &self.queue {
            ensure!(
                is_queue_name(name),
                "[queue.{name:?}]: a queue name is 1 to 64 of A-Z a-z 0-9 _ . -"
            );
            if let Err(why) = q.validate() {
                bail!("queue.{name}: {why}");
            }
        }
        for (name, d) in &self.stream {
            ensure!(
                is_queue_name(name),
                "[stream.{name:?}]: a stream name is 1 to 64 of A-Z a-z 0-9 _ . -"
            );
            if let Err(why) = d.validate() {
                bail!("stream.{name}: {why}");
            }
        }
        if let Some(h) = self.http.listen {
            ensure!(
                h.port() == 0 || h != m.listen,
                "http.listen = \"{h}\" is also mqtt.listen"
            );
        }
        for (i, l) in self.listener.iter().enumerate() {
            l.validate(i, m.listen)?;
            if l.address.port() != 0 {
                if let Some(j) = self.listener[..i]
                    .iter()
                    .position(|o| o.address == l.address)
                {
                    bail!(
                        "listener[{i}].address = \"{}\" is already the address of listener[{j}]",
                        l.address
                    );
                }
            }
        }

        ensure!(
            !self.log.level.trim().is_empty(),
            "log.level must not be empty (e.g. \"info\")"
        );
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            bail!(
                "log.level = {:?} is not a valid tracing filter: {e}",
                self.log.level
            );
        }
        Ok(())
    }

    /// The configuration as a TOML document (what `--print-config` prints); parsing it
    /// with [`Config::from_toml_str`] gives back an equal `Config`.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        toml::to_string_pretty(self).context("cannot write configuration as TOML")
    }

    /// TOML over defaults, without validation (flags may still change values).
    fn parse_toml(s: &str) -> anyhow::Result<Config> {
        // toml's error already names the unknown or mistyped key and shows the line.
        toml::from_str(s).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))
    }

    /// Applies the flags that override configuration values.
    fn apply_cli(&mut self, cli: &Cli) -> anyhow::Result<()> {
        if let Some(addr) = cli.mqtt {
            self.mqtt.listen = addr;
        }
        if let Some(dir) = &cli.data_dir {
            self.storage.data_dir.clone_from(dir);
        }
        if cli.memory {
            self.storage.memory = true;
        }
        if let Some(policy) = &cli.fsync {
            self.storage.fsync = policy
                .parse()
                .with_context(|| format!("invalid --fsync {policy:?}"))?;
        }
        if let Some(level) = &cli.log {
            self.log.level.clone_from(level);
        }
        if let Some(addr) = cli.http {
            self.http.listen = Some(addr);
        }
        Ok(())
    }
}

impl ListenerConfig {
    /// Checks the listener's values; errors name the key as `listener[i].key`.
    fn validate(&self, i: usize, mqtt_listen: SocketAddr) -> anyhow::Result<()> {
        match self.transport.as_str() {
            "tls" => {}
            "tcp" => bail!(
                "listener[{i}].transport = \"tcp\" is not supported: the plain MQTT listener \
                 is mqtt.listen (flag --mqtt); a [[listener]] is \"tls\""
            ),
            other => bail!(
                "listener[{i}].transport = {other:?} is unknown: the only transport is \"tls\""
            ),
        }
        ensure!(
            self.address.port() == 0 || self.address != mqtt_listen,
            "listener[{i}].address = \"{}\" is also mqtt.listen",
            self.address
        );
        ensure!(
            !self.cert_file.as_os_str().is_empty(),
            "listener[{i}].cert_file must not be empty"
        );
        ensure!(
            !self.key_file.as_os_str().is_empty(),
            "listener[{i}].key_file must not be empty"
        );
        ensure!(
            matches!(self.min_tls_version.as_str(), "1.2" | "1.3"),
            "listener[{i}].min_tls_version must be \"1.2\" or \"1.3\" (got {:?})",
            self.min_tls_version
        );
        ensure!(
            !self.require_certificate || self.client_ca_file.is_some(),
            "listener[{i}].require_certificate needs listener[{i}].client_ca_file (the CA \
             client certificates are verified against)"
        );
        if let Some(crl) = &self.crl_file {
            ensure!(
                !crl.as_os_str().is_empty(),
                "listener[{i}].crl_file must not be empty"
            );
            ensure!(
                self.client_ca_file.is_some(),
                "listener[{i}].crl_file needs listener[{i}].client_ca_file (the CA whose \
                 revocations it lists)"
            );
        }
        ensure!(
            !self.use_identity_as_username || self.require_certificate,
            "listener[{i}].use_identity_as_username needs listener[{i}].require_certificate = \
             true (and a client_ca_file)"
        );
        Ok(())
    }
}

/// Syntax of an MQTT topic filter: non-empty, no NUL, `#` only as the whole last level,
/// `+` only as a whole level, at most 65535 bytes.
fn check_topic_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("it is empty");
    }
    if filter.len() > MAX_MQTT_STRING {
        return Err("it is longer than 65535 bytes");
    }
    if filter.contains('\0') {
        return Err("it contains a NUL character");
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err("'#' must be a whole level and the last one");
        }
        if level.contains('+') && level != "+" {
            return Err("'+' must be a whole level");
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    /// A file in the temp dir, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, content: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let path = std::env::temp_dir().join(format!(
                "mote-config-test-{}-{nanos}-{name}.toml",
                std::process::id()
            ));
            std::fs::write(&path, content).unwrap();
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn err_text(r: anyhow::Result<Config>) -> String {
        format!("{:#}", r.unwrap_err())
    }

    #[test]
    fn defaults_validate() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.mqtt.listen, "127.0.0.1:1883".parse().unwrap());
        assert_eq!(c.mqtt.max_packet_size, 1_048_576);
        assert_eq!(c.mqtt.max_keepalive, 3600);
        assert_eq!(c.mqtt.max_session_expiry, u32::MAX);
        assert_eq!(c.mqtt.max_queued_bytes, 64 * 1024 * 1024);
        assert_eq!(c.storage.data_dir, PathBuf::from("mote-data"));
        assert!(!c.storage.memory);
        assert_eq!(c.storage.fsync, FsyncPolicy::Always);
        assert_eq!(c.log.level, "info");
    }

    #[test]
    fn empty_toml_is_defaults() {
        assert_eq!(Config::from_toml_str("").unwrap(), Config::default());
    }

    #[test]
    fn partial_toml_keeps_other_defaults() {
        let c = Config::from_toml_str(
            "[mqtt]\nmax_keepalive = 60\ndeny_subscribe = [\"test/nosubscribe\"]\n",
        )
        .unwrap();
        let mut expected = Config::default();
        expected.mqtt.max_keepalive = 60;
        expected.mqtt.deny_subscribe = vec!["test/nosubscribe".to_owned()];
        assert_eq!(c, expected);
    }

    #[test]
    fn worker_threads_zero_means_one_per_core() {
        let c = Config::from_toml_str("[mqtt]\nworker_threads = 0\n").unwrap();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(c.mqtt.threads(), cores);
        assert_eq!(Config::default().mqtt.threads(), 1);
    }

    #[test]
    fn unknown_key_rejected_with_its_name() {
        let e = err_text(Config::from_toml_str("[mqtt]\nmax_keepalve = 60\n"));
        assert!(e.contains("max_keepalve"), "{e}");
        let e = err_text(Config::from_toml_str("[storage]\nfsink = \"never\"\n"));
        assert!(e.contains("fsink"), "{e}");
        let e = err_text(Config::from_toml_str("[mqt]\nlisten = \"0.0.0.0:1\"\n"));
        assert!(e.contains("mqt"), "{e}");
    }

    #[test]
    fn wrong_type_rejected_with_key_name() {
        let e = err_text(Config::from_toml_str("[mqtt]\nmax_qos = \"two\"\n"));
        assert!(e.contains("max_qos"), "{e}");
        let e = err_text(Config::from_toml_str("[storage]\nfsync = \"sometimes\"\n"));
        assert!(e.contains("sometimes"), "{e}");
    }

    #[test]
    fn fsync_parse_display_round_trip() {
        for (s, p) in [
            ("always", FsyncPolicy::Always),
            ("never", FsyncPolicy::Never),
            ("every=10", FsyncPolicy::Every(Duration::from_millis(10))),
            ("every=1", FsyncPolicy::Every(Duration::from_millis(1))),
        ] {
            assert_eq!(s.parse::<FsyncPolicy>().unwrap(), p);
            assert_eq!(p.to_string(), s);
            assert_eq!(p.to_string().parse::<FsyncPolicy>().unwrap(), p);
        }
    }

    #[test]
    fn fsync_parse_errors() {
        assert_eq!(
            "every=".parse::<FsyncPolicy>(),
            Err(ParseFsyncError::MissingInterval)
        );
        assert!(matches!(
            "every=abc".parse::<FsyncPolicy>(),
            Err(ParseFsyncError::InvalidInterval(_))
        ));
        assert!(matches!(
            "every=-5".parse::<FsyncPolicy>(),
            Err(ParseFsyncError::InvalidInterval(_))
        ));
        assert_eq!(
            "every=0".parse::<FsyncPolicy>(),
            Err(ParseFsyncError::ZeroInterval)
        );
        assert_eq!(
            "sometimes".parse::<FsyncPolicy>(),
            Err(ParseFsyncError::Unknown("sometimes".to_owned()))
        );
        assert!("Always".parse::<FsyncPolicy>().is_err());
        assert!("".parse::<FsyncPolicy>().is_err());
        let msg = "sometimes".parse::<FsyncPolicy>().unwrap_err().to_string();
        assert!(
            msg.contains("sometimes") && msg.contains("every=MS"),
            "{msg}"
        );
    }

    #[test]
    fn to_toml_round_trip() {
        let mut c = Config::default();
        c.mqtt.listen = "[::1]:18830".parse().unwrap();
        c.mqtt.max_keepalive = 0;
        c.mqtt.deny_subscribe = vec!["a/+/c".to_owned(), "$SYS/#".to_owned()];
        c.storage.fsync = FsyncPolicy::Every(Duration::from_millis(25));
        c.storage.data_dir = PathBuf::from("/var/lib/mote");
        c.log.level = "info,mote_broker=debug".to_owned();
        for config in [Config::default(), c] {
            let text = config.to_toml().unwrap();
            assert!(
                text.contains("[mqtt]") && text.contains("[storage]"),
                "{text}"
            );
            assert_eq!(Config::from_toml_str(&text).unwrap(), config, "{text}");
        }
        let text = Config::default().to_toml().unwrap();
        assert!(text.contains("fsync = \"always\""), "{text}");
    }

    #[test]
    fn invalid_ranges_rejected_with_key_name() {
        for (toml, key) in [
            ("[mqtt]\nreceive_maximum = 0", "mqtt.receive_maximum"),
            ("[mqtt]\nmax_qos = 3", "mqtt.max_qos"),
            ("[mqtt]\nmax_packet_size = 10", "mqtt.max_packet_size"),
            (
                "[mqtt]\nmax_packet_size = 268435461",
                "mqtt.max_packet_size",
            ),
            ("[mqtt]\nmax_inflight = 0", "mqtt.max_inflight"),
            ("[mqtt]\nmax_connections = 0", "mqtt.max_connections"),
            (
                "[mqtt]\nmax_connect_packet_size = 63",
                "mqtt.max_connect_packet_size",
            ),
            ("[mqtt]\nworker_threads = 1025", "mqtt.worker_threads"),
            ("[mqtt]\nmax_topic_length = 0", "mqtt.max_topic_length"),
            (
                "[mqtt]\nmax_client_id_length = 5",
                "mqtt.max_client_id_length",
            ),
            (
                "[mqtt]\ndeny_subscribe = [\"a/#/b\"]",
                "mqtt.deny_subscribe[0]",
            ),
            (
                "[mqtt]\ndeny_subscribe = [\"ok\", \"a+\"]",
                "mqtt.deny_subscribe[1]",
            ),
            ("[mqtt]\ndeny_subscribe = [\"\"]", "mqtt.deny_subscribe[0]"),
            ("[storage]\ndata_dir = \"\"", "storage.data_dir"),
            ("[log]\nlevel = \"\"", "log.level"),
        ] {
            let e = err_text(Config::from_toml_str(toml));
            assert!(e.contains(key), "{toml}: {e}");
        }
        // Boundaries are accepted.
        Config::from_toml_str("[mqtt]\nmax_packet_size = 64\nmax_qos = 0\nreceive_maximum = 1")
            .unwrap();
        Config::from_toml_str("[mqtt]\nmax_packet_size = 268435460").unwrap();
        Config::from_toml_str("[storage]\ndata_dir = \"\"\nmemory = true").unwrap();
    }

    const TLS_LISTENER: &str = "[[listener]]\ntransport = \"tls\"\naddress = \"127.0.0.1:8883\"\n\
                                cert_file = \"/etc/mote/server.pem\"\n\
                                key_file = \"/etc/mote/server.key\"\n";

    #[test]
    fn tls_listener_defaults_and_round_trip() {
        let c = Config::from_toml_str(TLS_LISTENER).unwrap();
        assert_eq!(c.listener.len(), 1);
        let l = &c.listener[0];
        assert_eq!(l.address, "127.0.0.1:8883".parse().unwrap());
        assert_eq!(l.client_ca_file, None);
        assert_eq!(l.crl_file, None);
        assert!(!l.require_certificate && !l.use_identity_as_username);
        assert_eq!(l.min_tls_version, "1.2");
        // No listener: nothing printed for it.
        assert!(!Config::default().to_toml().unwrap().contains("listener"));
        let mut full = c.clone();
        full.listener.push(ListenerConfig {
            transport: "tls".to_owned(),
            address: "[::]:8884".parse().unwrap(),
            cert_file: PathBuf::from("b.pem"),
            key_file: PathBuf::from("b.key"),
            client_ca_file: Some(PathBuf::from("ca.pem")),
            crl_file: Some(PathBuf::from("ca.crl")),
            require_certificate: true,
            min_tls_version: "1.3".to_owned(),
            use_identity_as_username: true,
        });
        for config in [c, full] {
            let text = config.to_toml().unwrap();
            assert!(text.contains("[[listener]]"), "{text}");
            assert_eq!(Config::from_toml_str(&text).unwrap(), config, "{text}");
        }
    }

    #[test]
    fn bad_tls_listeners_rejected_with_key_name() {
        let with = |extra: &str| format!("{TLS_LISTENER}{extra}\n");
        for (toml, key) in [
            (
                TLS_LISTENER.replace("\"tls\"", "\"tcp\""),
                "listener[0].transport = \"tcp\"",
            ),
            (
                TLS_LISTENER.replace("\"tls\"", "\"quic\""),
                "listener[0].transport = \"quic\"",
            ),
            (
                with("min_tls_version = \"1.1\""),
                "listener[0].min_tls_version",
            ),
            (
                with("require_certificate = true"),
                "listener[0].require_certificate",
            ),
            (
                with("client_ca_file = \"ca.pem\"\nuse_identity_as_username = true"),
                "listener[0].use_identity_as_username",
            ),
            (
                with("crl_file = \"ca.crl\""),
                "listener[0].crl_file needs listener[0].client_ca_file",
            ),
            (
                with("client_ca_file = \"ca.pem\"\ncrl_file = \"\""),
                "listener[0].crl_file must not be empty",
            ),
            (with("cert_file2 = \"x\""), "cert_file2"),
            (
                format!("{TLS_LISTENER}{TLS_LISTENER}"),
                "listener[1].address",
            ),
            (
                TLS_LISTENER.replace("8883", "1883"),
                "listener[0].address = \"127.0.0.1:1883\" is also mqtt.listen",
            ),
            (
                "[[listener]]\ntransport = \"tls\"\naddress = \"127.0.0.1:8883\"\n".to_owned(),
                "cert_file",
            ),
        ] {
            let e = err_text(Config::from_toml_str(&toml));
            assert!(e.contains(key), "{toml}: {e}");
        }
        // Port 0 (any free port) may repeat.
        let any = TLS_LISTENER.replace("8883", "0");
        Config::from_toml_str(&format!("{any}{any}")).unwrap();
        Config::from_toml_str(&with(
            "client_ca_file = \"ca.pem\"\nrequire_certificate = true\n\
             use_identity_as_username = true\nmin_tls_version = \"1.3\"\n\
             crl_file = \"ca.crl\"",
        ))
        .unwrap();
    }

    #[test]
    fn load_without_file_or_flags_is_defaults() {
        let cli = Cli::try_parse_from(["mote"]).unwrap();
        assert_eq!(Config::load(&cli).unwrap(), Config::default());
    }

    #[test]
    fn flags_override_file() {
        let file = TempFile::new(
            "override",
            "[mqtt]\nlisten = \"0.0.0.0:2000\"\nmax_keepalive = 60\n\
             [storage]\ndata_dir = \"from-file\"\nfsync = \"never\"\n\
             [log]\nlevel = \"warn\"\n",
        );
        let path = file.0.to_str().unwrap();

        // The file alone.
        let cli = Cli::try_parse_from(["mote", "--config", path]).unwrap();
        let c = Config::load(&cli).unwrap();
        assert_eq!(c.mqtt.listen, "0.0.0.0:2000".parse().unwrap());
        assert_eq!(c.mqtt.max_keepalive, 60);
        assert_eq!(c.storage.data_dir, PathBuf::from("from-file"));
        assert_eq!(c.storage.fsync, FsyncPolicy::Never);
        assert_eq!(c.log.level, "warn");

        // Flags win; what no flag sets still comes from the file.
        let cli = Cli::try_parse_from([
            "mote",
            "--config",
            path,
            "--mqtt",
            "127.0.0.1:2001",
            "--data-dir",
            "from-flag",
            "--memory",
            "--fsync",
            "every=5",
            "--log",
            "debug",
        ])
        .unwrap();
        let c = Config::load(&cli).unwrap();
        assert_eq!(c.mqtt.listen, "127.0.0.1:2001".parse().unwrap());
        assert_eq!(c.mqtt.max_keepalive, 60);
        assert_eq!(c.storage.data_dir, PathBuf::from("from-flag"));
        assert!(c.storage.memory);
        assert_eq!(
            c.storage.fsync,
            FsyncPolicy::Every(Duration::from_millis(5))
        );
        assert_eq!(c.log.level, "debug");
    }

    #[test]
    fn load_errors_name_file_and_key() {
        let file = TempFile::new("bad", "[mqtt]\nbogus_key = 1\n");
        let cli = Cli {
            config: Some(file.0.clone()),
            ..Cli::default()
        };
        let e = err_text(Config::load(&cli));
        assert!(e.contains("bogus_key"), "{e}");
        assert!(e.contains(&*file.0.to_string_lossy()), "{e}");

        let file = TempFile::new("range", "[mqtt]\nmax_qos = 3\n");
        let cli = Cli {
            config: Some(file.0.clone()),
            ..Cli::default()
        };
        let e = err_text(Config::load(&cli));
        assert!(e.contains("mqtt.max_qos"), "{e}");

        let cli = Cli {
            config: Some(PathBuf::from("/nonexistent/mote-config.toml")),
            ..Cli::default()
        };
        let e = err_text(Config::load(&cli));
        assert!(e.contains("/nonexistent/mote-config.toml"), "{e}");
    }

    #[test]
    fn cli_rejects_bad_values() {
        assert!(Cli::try_parse_from(["mote", "--fsync", "sometimes"]).is_err());
        assert!(Cli::try_parse_from(["mote", "--fsync", "every="]).is_err());
        assert!(Cli::try_parse_from(["mote", "--mqtt", "not-an-address"]).is_err());
        // A bad --fsync built without clap is still caught by load.
        let cli = Cli {
            fsync: Some("every=abc".to_owned()),
            ..Cli::default()
        };
        let e = err_text(Config::load(&cli));
        assert!(e.contains("--fsync"), "{e}");
    }

    #[test]
    fn cli_parses_flags() {
        let cli = Cli::try_parse_from([
            "mote",
            "--mqtt",
            "0.0.0.0:1884",
            "--memory",
            "--print-config",
        ])
        .unwrap();
        assert_eq!(cli.mqtt, Some("0.0.0.0:1884".parse().unwrap()));
        assert!(cli.memory);
        assert!(cli.print_config);
        assert_eq!(cli.config, None);
    }

    #[test]
    fn cli_debug_assert() {
        Cli::command().debug_assert();
    }

    #[test]
    fn auth_jwt_and_client_id_settings_are_checked() {
        let ok = Config::from_toml_str(
            "[auth]\njwt_algorithm = \"ES256\"\njwt_key_file = \"/k.pem\"\n\
             client_id_patterns = [\"%u-*\"]\n",
        )
        .unwrap();
        assert_eq!(ok.auth.jwt_algorithm, Some(JwtAlgorithm::Es256));
        assert_eq!(ok.auth.jwt_user_claim, "sub");
        assert_eq!(Config::from_toml_str(&ok.to_toml().unwrap()).unwrap(), ok);
        for (toml, key) in [
            ("jwt_algorithm = \"HS256\"\n", "jwt_key_file"),
            ("jwt_key_file = \"/k\"\n", "jwt_algorithm"),
            ("jwt_algorithm = \"none\"\n", "jwt_algorithm"),
            ("jwt_leeway_secs = 301\n", "jwt_leeway_secs"),
            ("jwt_user_claim = \"\"\n", "jwt_user_claim"),
            ("jwt_audience = \"\"\n", "jwt_audience"),
            ("client_id_patterns = [\"%c-*\"]\n", "client_id_patterns[0]"),
        ] {
            let e = err_text(Config::from_toml_str(&format!("[auth]\n{toml}")));
            assert!(e.contains(key), "{toml}: {e}");
        }
    }
}
