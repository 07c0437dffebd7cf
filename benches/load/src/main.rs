//! `mqtt-load`: an MQTT load generator for side-by-side broker benchmarks.
//!
//! N publishers and M subscribers, each a raw MQTT connection encoded and decoded with
//! `mote-codec` on tokio (no third-party MQTT client, so two brokers are driven by the
//! very same bytes). Every payload starts with a mark (publisher, sequence number,
//! send time), so each subscriber can tell which messages it got, which it got twice,
//! and how long each took.
//!
//! ```text
//! # QoS 1 fan-in: 8 publishers -> 1 subscriber, 64-byte payloads, 50,000 each
//! mqtt-load --broker 127.0.0.1:1883 --publishers 8 --subscribers 1 --qos 1 --size 64 --count 50000
//! # durable publish rate: offline persistent subscriber, drained afterwards
//! mqtt-load --publishers 8 --subscribers 1 --qos 1 --persistent --offline-subs --drain --count 25000 --json
//! # across a broker restart: publish now, drain later from another process
//! mqtt-load --publishers 1 --count 1000000 --qos 1 --persistent --offline-subs
//! mqtt-load --publishers 1 --count 1000000 --qos 1 --persistent --drain-only
//! # 1,000,000 retained messages on distinct topics (ret/i/0 .. ret/i/124999)
//! mqtt-load --publishers 8 --count 125000 --topics 125000 --retain --topic-prefix ret
//! # 100,000 persistent sessions, each with its own filter, left offline
//! mqtt-load --subscribers 100000 --persistent --offline-subs --sub-filter 'sess/{i}/#' \
//!     --connect-concurrency 32 --publishers 1 --count 0
//! # PUBACK latency at a fixed rate, one record per acknowledgement in a file
//! mqtt-load --publishers 1 --subscribers 0 --rate 5000 --duration 60 --ack-log acks.bin
//! # the same QoS 0 fan-in against nats-server (core NATS: `load.>` for `load/#`)
//! mqtt-load --proto nats --broker 127.0.0.1:4222 --publishers 8 --topic-per-publisher --qos 0 --count 300000
//! # QoS 1 pairs: publisher i -> subscriber i only, 100 in flight each
//! mqtt-load --publishers 8 --subscribers 8 --pairs --qos 1 --inflight 100 --count 50000
//! # routing past 100,000 wildcard subscriptions that match nothing published
//! mqtt-load --extra-subs 100000 --connect-concurrency 16 --publishers 8 --topic-per-publisher --qos 0 --count 100000
//! # 5,000 idle connections: a JSON line once they are open, held until stdin closes
//! mqtt-load --idle 5000 --connect-concurrency 32 --hold 60 --json
//! # the QoS 1 pairs over TLS, the broker's certificate checked against ca.pem
//! mqtt-load --broker 127.0.0.1:8883 --tls --cafile ca.pem --publishers 8 --subscribers 8 --pairs --count 50000
//! # handshake rate: 5,000 TLS 1.2 connections with a client certificate, 16 at a time
//! mqtt-load --broker 127.0.0.1:8883 --tls --cafile ca.pem --cert client.pem --key client.key \
//!     --tls-version 1.2 --connect-rate 5000 --connect-concurrency 16 --json
//! ```
//!
//! With `--tls` every connection is MQTT over TLS (rustls on ring): the broker's
//! certificate is verified against `--cafile`, `--cert`/`--key` add a client certificate,
//! and every handshake is a full one unless `--tls-resume` is given. `--connect-rate N`
//! measures whole connections per second instead of messages ([`connect_rate`]).
//!
//! With `--proto nats` the same publishers and subscribers speak the core NATS text
//! protocol (CONNECT, PUB, SUB, MSG, PING/PONG): QoS 0 only, no sessions, no retain.
//!
//! What it reports:
//! - publish throughput: messages acknowledged per second (PUBACK for QoS 1, PUBCOMP for
//!   QoS 2), or written per second for QoS 0, from the start to the last acknowledgement;
//! - delivery throughput: distinct messages received by all subscribers per second, from
//!   the start of publishing (or of the drain) to the last message received;
//! - end-to-end latency p50/p90/p99/p99.9/max of first deliveries (online subscribers
//!   only: for a drained queue the wait is the point, not a latency);
//! - losses (acknowledged, or for QoS 0 sent, but never delivered) and duplicates;
//! - for QoS 1/2, publish-to-acknowledgement latency, from each write and from when each
//!   publish was due under `--rate` (the latter keeps a stall's backlog in the figure).
//!
//! Exit status: 0 when the run is valid; 2 when a QoS 1/2 message was lost, a QoS 2
//! message was delivered twice or a publish was refused; 1 when the run failed.

mod connect_rate;
mod mqtt;
mod nats;
mod stats;
mod tls;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use clap::Parser;
use mote_codec::{Protocol, QoS};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::mqtt::{AckKind, Conn, ConnectOpts, In, Mark, MARK_LEN};
use crate::stats::{Histogram, Tracker};
use crate::tls::{TlsArgs, TlsClient, TlsInfo};

/// MQTT load generator: N publishers, M subscribers, raw MQTT over mote-codec.
#[derive(Debug, Clone, Parser)]
#[command(name = "mqtt-load", version)]
struct Args {
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker: SocketAddr,
    /// Publishing connections.
    #[arg(long, default_value_t = 1)]
    publishers: u32,
    /// Subscribing connections; each receives every message.
    #[arg(long, default_value_t = 1)]
    subscribers: u32,
    /// QoS of the publishes: 0, 1 or 2.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// QoS the subscribers ask for [default: --qos].
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2))]
    sub_qos: Option<u8>,
    /// Payload bytes (at least 20: publisher, sequence number, send time).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Messages per publisher.
    #[arg(
        long,
        conflicts_with = "duration",
        required_unless_present_any = ["duration", "idle", "connect_rate"]
    )]
    count: Option<u64>,
    /// Seconds to publish for (instead of --count).
    #[arg(long)]
    duration: Option<f64>,
    /// QoS 1/2 messages each publisher keeps unacknowledged at most.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=65535))]
    inflight: u16,
    /// Messages per second per publisher; 0 = as fast as the broker takes them.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Speak MQTT 5.0 (default 3.1.1).
    #[arg(long)]
    v5: bool,
    /// Subscribers keep their session: clean session 0 (3.1.1) / clean start 0 with
    /// Session Expiry 0xFFFFFFFF (5) and a fixed client id.
    #[arg(long)]
    persistent: bool,
    /// Publisher i publishes on `<topic-prefix>/i` and subscribers subscribe to
    /// `<topic-prefix>/#`; otherwise everyone uses `<topic-prefix>/shared`.
    #[arg(long)]
    topic_per_publisher: bool,
    /// Subscribers subscribe, then disconnect before publishing starts (messages queue
    /// in their sessions). Needs --persistent.
    #[arg(long, requires = "persistent")]
    offline_subs: bool,
    /// With --offline-subs: reconnect the subscribers after publishing and count what
    /// was queued for them.
    #[arg(long, requires = "offline_subs")]
    drain: bool,
    /// Only reconnect the persistent subscribers and verify that --publishers x --count
    /// messages arrive (the publishing happened in an earlier run with the same
    /// --client-prefix, --publishers and --count).
    #[arg(
        long,
        requires = "persistent",
        requires = "count",
        conflicts_with = "offline_subs"
    )]
    drain_only: bool,
    /// Client ids are `<prefix>-pub-i` and `<prefix>-sub-i`.
    #[arg(long, default_value = "load")]
    client_prefix: String,
    /// Topics start with this.
    #[arg(long, default_value = "load")]
    topic_prefix: String,
    /// Seconds a subscriber waits without receiving anything, once the expected count is
    /// known, before it gives up and reports the rest as lost.
    #[arg(long, default_value_t = 10.0)]
    settle: f64,
    /// Seconds a publisher waits for an acknowledgement before it reports a stall.
    #[arg(long, default_value_t = 60.0)]
    stall: f64,
    /// Hard limit on the whole run, seconds.
    #[arg(long, default_value_t = 900.0)]
    timeout: f64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Publish with the RETAIN flag set.
    #[arg(long)]
    retain: bool,
    /// Publisher i cycles through N topics `<topic-prefix>/i/<seq mod N>` (0: one topic,
    /// see --topic-per-publisher). With --retain, `--count N --topics N` leaves N
    /// retained messages per publisher.
    #[arg(long, default_value_t = 0)]
    topics: u64,
    /// Subscriber i subscribes to this filter with `{i}` replaced by i (instead of the
    /// filter --topic-per-publisher implies).
    #[arg(long)]
    sub_filter: Option<String>,
    /// Subscribers set up at once (connect, subscribe and, with --offline-subs,
    /// disconnect); many persistent sessions are made faster this way.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    connect_concurrency: u32,
    /// Write one record per acknowledged QoS 1/2 publish to this file: three
    /// little-endian u64 nanosecond times since the run's epoch (`epoch_unix_ns` in the
    /// JSON report): scheduled send (= send without --rate), send, acknowledgement.
    #[arg(long)]
    ack_log: Option<std::path::PathBuf>,
    /// Wire protocol: MQTT, or core NATS (QoS 0 only; topics become subjects level by
    /// level: `/` → `.`, `+` → `*`, `#` → `>`).
    #[arg(long, value_enum, default_value_t = Proto::Mqtt)]
    proto: Proto,
    /// Publisher i is heard by subscriber i only (topic and filter `<topic-prefix>/i`);
    /// needs as many subscribers as publishers. Losses count per pair.
    #[arg(long, conflicts_with_all = ["topic_per_publisher", "sub_filter", "topics"])]
    pairs: bool,
    /// Before the run, subscribe this many extra filters that match nothing published
    /// (`+/w<j>/#` for even j, `wide/<j>/+` for odd j), spread over --extra-sub-conns
    /// connections held open until the end: routing with a wide subscription table.
    #[arg(long, default_value_t = 0)]
    extra_subs: u64,
    /// Connections holding the --extra-subs filters.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    extra_sub_conns: u32,
    /// Idle-connection mode: open this many connections (CONNECT only, keep alive 0;
    /// NATS: CONNECT and PING), print one line (`{"idle_ready": N, ...}` with --json)
    /// once all are open, keep them until standard input has a line or closes (at most
    /// --hold seconds), then close them and print the report. Nothing is published.
    #[arg(long, default_value_t = 0)]
    idle: u32,
    /// Keep Alive announced in CONNECT, seconds; no PINGREQ is sent, so runs must end
    /// within it (0: none; some brokers, such as rumqttd, refuse 0).
    #[arg(long, default_value_t = 0)]
    keep_alive: u16,
    /// Idle-connection mode: longest time the connections are held, seconds.
    #[arg(long, default_value_t = 60.0)]
    hold: f64,
    /// Connection-rate mode: open this many connections in all, --connect-concurrency
    /// at a time; each connects (TCP, and the TLS handshake with --tls), sends CONNECT,
    /// waits for CONNACK, sends DISCONNECT and waits for the broker to close. Reports
    /// connections per second and connect-to-CONNACK latency. Nothing is published.
    #[arg(long, default_value_t = 0, conflicts_with = "idle")]
    connect_rate: u64,
    /// Threads of the generator's runtime [default: one per core].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    #[command(flatten)]
    tls: TlsArgs,
}

/// The wire protocol spoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Proto {
    /// MQTT 3.1.1 (or 5.0 with --v5).
    Mqtt,
    /// Core NATS.
    Nats,
}

/// The run's settings, shared read-only by every task.
#[derive(Debug)]
struct Plan {
    args: Args,
    protocol: Protocol,
    qos: QoS,
    sub_qos: QoS,
    settle: Duration,
    stall: Duration,
    /// With --tls: the client every connection uses.
    tls: Option<TlsClient>,
}

impl Plan {
    fn new(args: Args) -> anyhow::Result<Plan> {
        if args.size < MARK_LEN {
            bail!("--size must be at least {MARK_LEN} bytes (the mark: publisher, sequence, time)");
        }
        if args.publishers == 0 {
            bail!("--publishers must be at least 1");
        }
        if let Some(d) = args.duration {
            if d.is_nan() || d <= 0.0 {
                bail!("--duration must be positive");
            }
        }
        if args.proto == Proto::Nats {
            if args.qos != 0 || args.sub_qos.unwrap_or(0) != 0 {
                bail!("--proto nats: core NATS has QoS 0 only (--qos 0)");
            }
            if args.v5 || args.persistent || args.retain || args.ack_log.is_some() {
                bail!("--proto nats: no --v5, --persistent, --retain or --ack-log");
            }
            if args.tls.tls || args.connect_rate > 0 {
                bail!("--proto nats: no --tls or --connect-rate");
            }
        }
        if args.pairs && args.publishers != args.subscribers {
            bail!("--pairs needs as many subscribers as publishers");
        }
        let qos = QoS::from_u8(args.qos).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let sub_qos =
            QoS::from_u8(args.sub_qos.unwrap_or(args.qos)).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(Plan {
            protocol: if args.v5 {
                Protocol::V5
            } else {
                Protocol::V311
            },
            qos,
            sub_qos,
            settle: Duration::from_secs_f64(args.settle),
            stall: Duration::from_secs_f64(args.stall),
            tls: TlsClient::from_args(&args.tls, args.broker)?,
            args,
        })
    }

    /// The QoS each delivery gets: the lower of publish and subscription.
    fn delivery_qos(&self) -> QoS {
        self.qos.min(self.sub_qos)
    }

    fn topic(&self, publisher: u32) -> String {
        // With --topics the publisher appends `/<seq mod N>` to this.
        if self.args.topics > 0 || self.args.topic_per_publisher || self.args.pairs {
            format!("{}/{publisher}", self.args.topic_prefix)
        } else {
            format!("{}/shared", self.args.topic_prefix)
        }
    }

    /// The filter subscriber `i` subscribes to.
    fn filter(&self, i: u32) -> String {
        if let Some(t) = &self.args.sub_filter {
            t.replace("{i}", &i.to_string())
        } else if self.args.pairs {
            format!("{}/{i}", self.args.topic_prefix)
        } else if self.args.topics > 0 || self.args.topic_per_publisher {
            format!("{}/#", self.args.topic_prefix)
        } else {
            format!("{}/shared", self.args.topic_prefix)
        }
    }

    fn publisher_opts(&self, i: u32) -> ConnectOpts {
        ConnectOpts {
            protocol: self.protocol,
            client_id: format!("{}-pub-{i}", self.args.client_prefix),
            clean: true,
            session_expiry: None,
            nats: self.nats(),
            keep_alive: self.args.keep_alive,
            tls: self.tls.clone(),
        }
    }

    fn nats(&self) -> bool {
        self.args.proto == Proto::Nats
    }

    /// A plain clean-session connection named `<client-prefix>-<what>-<i>`.
    fn plain_opts(&self, what: &str, i: impl std::fmt::Display) -> ConnectOpts {
        ConnectOpts {
            protocol: self.protocol,
            client_id: format!("{}-{what}-{i}", self.args.client_prefix),
            clean: true,
            session_expiry: None,
            nats: self.nats(),
            keep_alive: self.args.keep_alive,
            tls: self.tls.clone(),
        }
    }

    /// Extra filter `j` of --extra-subs: a wildcard filter that matches no topic the
    /// publishers use (their second level is a number or `shared`, never `w<j>`, and
    /// their first level is the topic prefix, never `wide` unless it is chosen so).
    fn extra_filter(j: u64) -> String {
        if j % 2 == 0 {
            format!("+/w{j}/#")
        } else {
            format!("wide/{j}/+")
        }
    }

    /// `clean` is forced to false when reconnecting to drain.
    fn subscriber_opts(&self, i: u32, resume: bool) -> ConnectOpts {
        let persistent = self.args.persistent;
        ConnectOpts {
            protocol: self.protocol,
            client_id: format!("{}-sub-{i}", self.args.client_prefix),
            clean: !persistent && !resume,
            session_expiry: (persistent && self.protocol.is_v5()).then_some(u32::MAX),
            nats: self.nats(),
            keep_alive: self.args.keep_alive,
            tls: self.tls.clone(),
        }
    }
}

/// The instant all timestamps in payloads count from (publishers and subscribers share
/// the process, so no clock synchronisation is involved).
fn epoch() -> Instant {
    epoch_pair().0
}

/// The epoch as a monotonic instant and as wall-clock time (to line the records of an
/// `--ack-log` up with events seen by other processes).
fn epoch_pair() -> (Instant, SystemTime) {
    static EPOCH: OnceLock<(Instant, SystemTime)> = OnceLock::new();
    *EPOCH.get_or_init(|| (Instant::now(), SystemTime::now()))
}

fn ns_since_epoch(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_nanos() as u64
}

/// What one publisher did.
#[derive(Debug, Default)]
struct PubResult {
    sent: u64,
    acked: u64,
    rejected: u64,
    /// When the last acknowledgement (QoS 1/2) or write (QoS 0) completed.
    done_at: Option<Instant>,
    error: Option<String>,
    /// QoS 1/2: time from encoding a PUBLISH to reading its PUBACK/PUBCOMP.
    ack_latency: Histogram,
    /// QoS 1/2: time from the moment a PUBLISH was due (--rate) to reading its
    /// acknowledgement. A publisher held back by a full window sends late; counting from
    /// the schedule keeps that wait in the figure (no coordinated omission).
    ack_latency_sched: Histogram,
    /// With --ack-log: (scheduled, sent, acknowledged) per acknowledged publish.
    ack_log: Vec<[u64; 3]>,
}

/// Publisher `idx`: publishes until its count or the deadline, keeping at most
/// `--inflight` QoS 1/2 messages unacknowledged, then waits for every acknowledgement.
async fn publisher(idx: u32, plan: Arc<Plan>, mut conn: Conn, start: Instant) -> PubResult {
    let mut r = PubResult::default();
    if let Err(e) = publish_loop(idx, &plan, &mut conn, start, &mut r).await {
        r.error = Some(format!("publisher {idx}: {e:#}"));
        return r;
    }
    if let Err(e) = conn.disconnect().await {
        r.error = Some(format!("publisher {idx}: {e:#}"));
    }
    r
}

async fn publish_loop(
    idx: u32,
    plan: &Plan,
    conn: &mut Conn,
    start: Instant,
    r: &mut PubResult,
) -> anyhow::Result<()> {
    let a = &plan.args;
    let qos = plan.qos;
    let base_topic = plan.topic(idx);
    let mut topic = base_topic.clone();
    let mut payload = vec![0u8; a.size];
    let window = if qos == QoS::AtMostOnce {
        usize::MAX
    } else {
        usize::from(a.inflight)
    };
    let deadline = a.duration.map(|d| start + Duration::from_secs_f64(d));
    // Packet ids in use (index = id); ids cycle from 1 and skip the ones in use.
    let mut in_use = vec![false; 65_536];
    // (scheduled, sent) nanoseconds since the epoch of the publish holding each id.
    let mut times = vec![(0u64, 0u64); 65_536];
    let log_acks = a.ack_log.is_some();
    let mut next_pid: u16 = 1;
    let mut inflight = 0usize;
    let mut last_progress = Instant::now();
    loop {
        let mut now = Instant::now();
        let mut rate_wait = None;
        // Fill the window (QoS 1/2) or a 64 KiB batch (QoS 0).
        loop {
            let more = match (a.count, deadline) {
                (Some(c), _) => r.sent < c,
                (None, Some(d)) => now < d,
                (None, None) => false,
            };
            if !more || inflight >= window || conn.pending() >= 64 * 1024 {
                break;
            }
            let mut due_at = now;
            if a.rate > 0.0 {
                let due = start + Duration::from_secs_f64(r.sent as f64 / a.rate);
                if due > now {
                    rate_wait = Some(due);
                    break;
                }
                due_at = due;
            }
            let pid = if qos == QoS::AtMostOnce {
                0
            } else {
                while in_use[usize::from(next_pid)] {
                    next_pid = next_pid.checked_add(1).unwrap_or(1);
                }
                let pid = next_pid;
                in_use[usize::from(pid)] = true;
                times[usize::from(pid)] = (ns_since_epoch(due_at), ns_since_epoch(now));
                next_pid = next_pid.checked_add(1).unwrap_or(1);
                inflight += 1;
                pid
            };
            Mark {
                publisher: idx,
                seq: r.sent,
                sent_ns: ns_since_epoch(now),
            }
            .write(&mut payload);
            if a.topics > 0 {
                use std::fmt::Write as _;
                topic.clear();
                let _ = write!(topic, "{base_topic}/{}", r.sent % a.topics);
            }
            conn.push_publish(&topic, qos, a.retain, pid, &payload)?;
            r.sent += 1;
            now = Instant::now();
        }
        let can_send_more = match (a.count, deadline) {
            (Some(c), _) => r.sent < c,
            (None, Some(d)) => Instant::now() < d,
            (None, None) => false,
        };
        conn.flush().await?;
        if qos == QoS::AtMostOnce {
            r.done_at = Some(Instant::now());
            if !can_send_more {
                return Ok(());
            }
            if let Some(due) = rate_wait {
                tokio::time::sleep_until(due.into()).await;
            }
            continue;
        }
        if !can_send_more && inflight == 0 {
            return Ok(());
        }
        // Block for acknowledgements when nothing may be sent now; otherwise only take
        // what has already arrived.
        let wait = if inflight >= window || !can_send_more {
            Duration::from_secs(1)
        } else if let Some(due) = rate_wait {
            due.saturating_duration_since(Instant::now())
        } else {
            Duration::ZERO
        };
        if inflight == 0 {
            if let Some(due) = rate_wait {
                tokio::time::sleep_until(due.into()).await;
                continue;
            }
        }
        conn.fill(wait).await?;
        let ack_ns = ns_since_epoch(Instant::now());
        let acked = |r: &mut PubResult, pid: u16| {
            let (sched, sent) = times[usize::from(pid)];
            r.ack_latency.record(ack_ns.saturating_sub(sent));
            r.ack_latency_sched.record(ack_ns.saturating_sub(sched));
            if log_acks {
                r.ack_log.push([sched, sent, ack_ns]);
            }
        };
        let mut progressed = false;
        while let Some(p) = conn.next()? {
            match p {
                In::PubAck { pid, reason } if qos == QoS::AtLeastOnce => {
                    release(&mut in_use, &mut inflight, pid)?;
                    acked(r, pid);
                    count_ack(r, reason);
                    progressed = true;
                }
                In::PubRec { pid, reason } if qos == QoS::ExactlyOnce => {
                    if reason >= 0x80 {
                        // A refused PUBREC ends the flow (MQTT 5 §4.3.3).
                        release(&mut in_use, &mut inflight, pid)?;
                        acked(r, pid);
                        count_ack(r, reason);
                    } else {
                        conn.push_ack(AckKind::PubRel, pid)?;
                    }
                    progressed = true;
                }
                In::PubComp { pid } if qos == QoS::ExactlyOnce => {
                    release(&mut in_use, &mut inflight, pid)?;
                    acked(r, pid);
                    count_ack(r, 0);
                    progressed = true;
                }
                In::Disconnect { reason } => bail!("broker sent DISCONNECT {reason:#04x}"),
                other => bail!("unexpected packet {other:?}"),
            }
        }
        let now = Instant::now();
        if progressed {
            last_progress = now;
            r.done_at = Some(now);
        } else if inflight > 0 && now - last_progress > plan.stall {
            bail!(
                "no acknowledgement for {:?} with {inflight} in flight",
                plan.stall
            );
        }
    }
}

fn release(in_use: &mut [bool], inflight: &mut usize, pid: u16) -> anyhow::Result<()> {
    let slot = &mut in_use[usize::from(pid)];
    if !*slot {
        bail!("acknowledgement for packet id {pid}, which is not in flight");
    }
    *slot = false;
    *inflight -= 1;
    Ok(())
}

fn count_ack(r: &mut PubResult, reason: u8) {
    if reason >= 0x80 {
        r.rejected += 1;
    } else {
        r.acked += 1;
    }
}

/// What one subscriber received.
#[derive(Debug, Default)]
struct SubResult {
    tracker: Tracker,
    latency: Histogram,
    last_at: Option<Instant>,
    session_present: Option<bool>,
    error: Option<String>,
}

/// How a subscriber task starts.
#[derive(Debug)]
enum SubStart {
    /// Already connected and subscribed.
    Online(Conn),
    /// Reconnect to a persistent session to drain it.
    Resume,
}

/// What each publisher got acknowledged (QoS 0: sent), known once they are done.
type Expected = watch::Receiver<Option<Arc<Vec<u64>>>>;

/// Subscriber `idx`: acknowledges and records every delivery until the expected count
/// (sent on `expected` once the publishers are done) arrived or nothing came for
/// `--settle` seconds.
async fn subscriber(
    idx: u32,
    plan: Arc<Plan>,
    start: SubStart,
    expected: Expected,
    measure_latency: bool,
) -> SubResult {
    let mut r = SubResult {
        tracker: Tracker::new(plan.args.publishers, plan.args.count.unwrap_or(0)),
        ..SubResult::default()
    };
    let conn = match start {
        SubStart::Online(c) => Ok(c),
        SubStart::Resume => Conn::connect(plan.args.broker, &plan.subscriber_opts(idx, true))
            .await
            .map(|(c, present)| {
                r.session_present = Some(present);
                c
            }),
    };
    let result = match conn {
        Ok(mut c) => {
            match receive_loop(idx, &plan, &mut c, expected, measure_latency, &mut r).await {
                Ok(()) => c.disconnect().await,
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        r.error = Some(format!("subscriber {idx}: {e:#}"));
    }
    r
}

async fn receive_loop(
    idx: u32,
    plan: &Plan,
    conn: &mut Conn,
    expected: Expected,
    measure_latency: bool,
    r: &mut SubResult,
) -> anyhow::Result<()> {
    // QoS 2 packet ids received (PUBREC sent) and not yet released: a re-sent PUBLISH
    // with such an id is the same message and is not delivered again (MQTT-4.3.3).
    let mut awaiting_rel = vec![false; 65_536];
    let mut known_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let now_ns = ns_since_epoch(now);
        while let Some(p) = conn.next()? {
            match p {
                In::Publish { qos, pid, mark, .. } => {
                    let repeat = qos == QoS::ExactlyOnce && awaiting_rel[usize::from(pid)];
                    if !repeat {
                        match mark {
                            Some(m) => {
                                if r.tracker.record(m.publisher, m.seq) && measure_latency {
                                    r.latency.record(now_ns.saturating_sub(m.sent_ns));
                                }
                            }
                            None => r.tracker.foreign += 1,
                        }
                        r.last_at = Some(now);
                    }
                    match qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => conn.push_ack(AckKind::PubAck, pid)?,
                        QoS::ExactlyOnce => {
                            awaiting_rel[usize::from(pid)] = true;
                            conn.push_ack(AckKind::PubRec, pid)?;
                        }
                    }
                }
                In::PubRel { pid } => {
                    awaiting_rel[usize::from(pid)] = false;
                    conn.push_ack(AckKind::PubComp, pid)?;
                }
                In::Disconnect { reason } => bail!("broker sent DISCONNECT {reason:#04x}"),
                _ => {}
            }
        }
        conn.flush().await?;
        let exp = expected.borrow().as_ref().map(|per_pub| {
            if plan.args.pairs {
                per_pub.get(idx as usize).copied().unwrap_or(0)
            } else {
                per_pub.iter().sum()
            }
        });
        if let Some(exp) = exp {
            let known = *known_at.get_or_insert(now);
            if r.tracker.unique >= exp {
                return Ok(());
            }
            let quiet_since = r.last_at.map_or(known, |l| l.max(known));
            if now - quiet_since > plan.settle {
                return Ok(());
            }
        }
        conn.fill(Duration::from_millis(100)).await?;
    }
}

/// The whole run's outcome, as printed.
#[derive(Debug, Serialize)]
struct Report {
    broker: String,
    /// "3.1.1", "5.0" or "nats".
    protocol: &'static str,
    /// Publisher i heard by subscriber i only (`expected_per_subscriber` is then the
    /// largest pair's count).
    pairs: bool,
    /// Extra non-matching subscriptions held during the run.
    extra_subs: u64,
    /// Seconds taken to set the extra subscriptions up.
    extra_subs_setup_secs: Option<f64>,
    qos: u8,
    sub_qos: u8,
    size: usize,
    publishers: u32,
    subscribers: u32,
    inflight: u16,
    count_per_publisher: Option<u64>,
    duration_secs: Option<f64>,
    rate_per_publisher: f64,
    topic_per_publisher: bool,
    persistent: bool,
    /// "online", "offline", "offline+drain" or "drain-only".
    mode: &'static str,
    publish: Option<PublishReport>,
    delivery: Option<DeliveryReport>,
    latency_us: Option<LatencyReport>,
    /// Publish to acknowledgement (PUBACK/PUBCOMP), all publishers, from the write.
    ack_latency_us: Option<LatencyReport>,
    /// Publish to acknowledgement counted from when each publish was due (see
    /// `PubResult::ack_latency_sched`).
    ack_latency_sched_us: Option<LatencyReport>,
    retain: bool,
    topics: u64,
    /// With --tls: what the first publisher's handshake settled on.
    tls: Option<TlsInfo>,
    /// Wall-clock time of the epoch the `--ack-log` times count from, ns since 1970.
    epoch_unix_ns: u64,
    /// False when a QoS 1/2 message was lost, a QoS 2 message duplicated, a publish
    /// refused, or a connection failed.
    valid: bool,
    problems: Vec<String>,
}

#[derive(Debug, Serialize)]
struct PublishReport {
    sent: u64,
    /// Acknowledged successfully (QoS 1/2); equals `sent` for QoS 0.
    acked: u64,
    rejected: u64,
    unacked: u64,
    secs: f64,
    /// `acked` per second from the start to the last acknowledgement (QoS 0: written).
    msgs_per_sec: f64,
}

#[derive(Debug, Serialize)]
struct DeliveryReport {
    /// "online" (while publishing) or "drain" (after reconnecting).
    phase: &'static str,
    expected_per_subscriber: u64,
    /// Distinct messages received, all subscribers together.
    received: u64,
    duplicates: u64,
    foreign: u64,
    /// Acknowledged (QoS 0: sent) messages some subscriber never received.
    lost: u64,
    secs: f64,
    /// `received` per second, all subscribers together.
    msgs_per_sec: f64,
    /// Distinct messages per subscriber.
    per_subscriber: Vec<u64>,
}

#[derive(Debug, Serialize)]
struct LatencyReport {
    samples: u64,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

/// Connects and subscribes every subscriber, `--connect-concurrency` at a time. With
/// --offline-subs each disconnects right after its SUBACK (its session stays) and
/// nothing is returned; otherwise the connections are returned in index order.
async fn setup_subscribers(plan: &Arc<Plan>) -> anyhow::Result<Vec<(u32, Conn)>> {
    let a = &plan.args;
    let workers = a.connect_concurrency.min(a.subscribers.max(1));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let plan = plan.clone();
        tasks.push(tokio::spawn(async move {
            let a = &plan.args;
            let mut kept = Vec::new();
            for i in (w..a.subscribers).step_by(workers as usize) {
                let (mut c, _) = Conn::connect(a.broker, &plan.subscriber_opts(i, false))
                    .await
                    .with_context(|| format!("subscriber {i}"))?;
                c.subscribe(&plan.filter(i), plan.sub_qos)
                    .await
                    .with_context(|| format!("subscriber {i}"))?;
                if a.offline_subs {
                    c.disconnect()
                        .await
                        .with_context(|| format!("subscriber {i}"))?;
                } else {
                    kept.push((i, c));
                }
            }
            anyhow::Ok(kept)
        }));
    }
    let mut conns = Vec::new();
    for t in tasks {
        conns.extend(t.await.context("subscriber set-up task")??);
    }
    conns.sort_by_key(|(i, _)| *i);
    Ok(conns)
}

/// Opens --extra-sub-conns connections (--connect-concurrency at a time) and subscribes
/// the --extra-subs filters, connection k taking filters j with j mod conns = k.
async fn setup_extra_subs(plan: &Arc<Plan>) -> anyhow::Result<Vec<Conn>> {
    let a = &plan.args;
    let conns = u64::from(a.extra_sub_conns).min(a.extra_subs);
    let workers = u64::from(a.connect_concurrency).min(conns);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let plan = plan.clone();
        tasks.push(tokio::spawn(async move {
            let a = &plan.args;
            let mut kept = Vec::new();
            for k in (w..conns).step_by(workers as usize) {
                let (mut c, _) = Conn::connect(a.broker, &plan.plain_opts("wide", k))
                    .await
                    .with_context(|| format!("extra-subscription connection {k}"))?;
                let filters: Vec<String> = (k..a.extra_subs)
                    .step_by(conns as usize)
                    .map(Plan::extra_filter)
                    .collect();
                c.subscribe_many(&filters, plan.sub_qos)
                    .await
                    .with_context(|| format!("extra-subscription connection {k}"))?;
                kept.push(c);
            }
            anyhow::Ok(kept)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.extend(t.await.context("extra-subscription task")??);
    }
    Ok(out)
}

/// What the idle-connection mode reports.
#[derive(Debug, Serialize)]
struct IdleReport {
    broker: String,
    protocol: &'static str,
    mode: &'static str,
    /// Connections opened and held.
    idle: u32,
    /// Seconds to open them all.
    connect_secs: f64,
    /// Seconds they were held once all were open.
    held_secs: f64,
    /// Connections found closed by the broker when the hold ended.
    closed_by_broker: u32,
    valid: bool,
    problems: Vec<String>,
}

/// Idle-connection mode: opens --idle connections, says so on stdout, holds them until
/// stdin has a line or closes (or --hold passes), then closes them.
async fn run_idle(plan: Arc<Plan>) -> anyhow::Result<IdleReport> {
    let a = &plan.args;
    let t0 = Instant::now();
    let workers = a.connect_concurrency.min(a.idle);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let plan = plan.clone();
        tasks.push(tokio::spawn(async move {
            let mut kept = Vec::new();
            for i in (w..plan.args.idle).step_by(workers as usize) {
                let (c, _) = Conn::connect(plan.args.broker, &plan.plain_opts("idle", i))
                    .await
                    .with_context(|| format!("idle connection {i}"))?;
                kept.push(c);
            }
            anyhow::Ok(kept)
        }));
    }
    let mut conns = Vec::new();
    for t in tasks {
        conns.extend(t.await.context("idle connection task")??);
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    let protocol = if plan.nats() {
        "nats"
    } else if a.v5 {
        "5.0"
    } else {
        "3.1.1"
    };
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "idle_ready": conns.len(), "connect_secs": connect_secs })
        );
    } else {
        println!(
            "idle: {} connections open in {connect_secs:.3} s; holding",
            conns.len()
        );
    }
    {
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    }
    // Standard input is read on a plain thread (a line or its end releases the hold).
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        let _ = tx.send(());
    });
    let held = Instant::now();
    tokio::select! {
        _ = rx => {}
        () = tokio::time::sleep(Duration::from_secs_f64(a.hold)) => {}
    }
    let held_secs = held.elapsed().as_secs_f64();
    // A connection the broker closed meanwhile reads end-of-file at once.
    let mut closed_by_broker = 0;
    for c in &mut conns {
        if c.fill(Duration::ZERO).await.is_err() {
            closed_by_broker += 1;
        }
    }
    drop(conns);
    let mut problems = Vec::new();
    if closed_by_broker > 0 {
        problems.push(format!(
            "{closed_by_broker} idle connections closed by the broker"
        ));
    }
    Ok(IdleReport {
        broker: a.broker.to_string(),
        protocol,
        mode: "idle",
        idle: a.idle,
        connect_secs,
        held_secs,
        closed_by_broker,
        valid: problems.is_empty(),
        problems,
    })
}

async fn run(plan: Arc<Plan>) -> anyhow::Result<Report> {
    let a = &plan.args;
    epoch();
    let mut problems = Vec::new();
    let (exp_tx, exp_rx) = watch::channel(None);
    let mut subs: Vec<JoinHandle<SubResult>> = Vec::new();
    let mut pubs: Vec<PubResult> = Vec::new();
    let mut publish_report = None;
    let mut tls = None;
    let mut start: Instant;
    let mode = if a.drain_only {
        "drain-only"
    } else if a.offline_subs && a.drain {
        "offline+drain"
    } else if a.offline_subs {
        "offline"
    } else {
        "online"
    };

    // Extra subscriptions that match nothing, in place before anything else.
    let mut extra_conns = Vec::new();
    let mut extra_subs_secs = None;
    if a.extra_subs > 0 {
        let t = Instant::now();
        extra_conns = setup_extra_subs(&plan).await?;
        extra_subs_secs = Some(t.elapsed().as_secs_f64());
    }

    if a.drain_only {
        let per_pub = vec![a.count.unwrap_or(0); a.publishers as usize];
        exp_tx.send_replace(Some(Arc::new(per_pub)));
        start = Instant::now();
        for i in 0..a.subscribers {
            subs.push(tokio::spawn(subscriber(
                i,
                plan.clone(),
                SubStart::Resume,
                exp_rx.clone(),
                false,
            )));
        }
    } else {
        // Subscribers first, so that nothing published is missed.
        for (i, c) in setup_subscribers(&plan).await? {
            subs.push(tokio::spawn(subscriber(
                i,
                plan.clone(),
                SubStart::Online(c),
                exp_rx.clone(),
                true,
            )));
        }
        let mut pconns = Vec::new();
        for i in 0..a.publishers {
            let (c, _) = Conn::connect(a.broker, &plan.publisher_opts(i))
                .await
                .with_context(|| format!("publisher {i}"))?;
            pconns.push(c);
        }
        tls = pconns.first().and_then(Conn::tls_info);
        start = Instant::now();
        let handles: Vec<_> = pconns
            .into_iter()
            .enumerate()
            .map(|(i, c)| tokio::spawn(publisher(i as u32, plan.clone(), c, start)))
            .collect();
        for h in handles {
            pubs.push(h.await.context("publisher task")?);
        }
        let (sent, acked, rejected) = pubs.iter().fold((0, 0, 0), |(s, k, x), p| {
            (s + p.sent, k + p.acked, x + p.rejected)
        });
        let acked = if plan.qos == QoS::AtMostOnce {
            sent
        } else {
            acked
        };
        let end = pubs.iter().filter_map(|p| p.done_at).max().unwrap_or(start);
        let secs = (end - start).as_secs_f64();
        problems.extend(pubs.iter().filter_map(|p| p.error.clone()));
        if let Some(path) = &a.ack_log {
            if let Err(e) = write_ack_log(path, &pubs) {
                problems.push(format!("{e:#}"));
            }
        }
        if rejected > 0 {
            problems.push(format!("{rejected} publishes refused by the broker"));
        }
        publish_report = Some(PublishReport {
            sent,
            acked,
            rejected,
            unacked: sent - acked - rejected,
            secs,
            msgs_per_sec: if secs > 0.0 { acked as f64 / secs } else { 0.0 },
        });
        let per_pub: Vec<u64> = pubs
            .iter()
            .map(|p| {
                if plan.qos == QoS::AtMostOnce {
                    p.sent
                } else {
                    p.acked
                }
            })
            .collect();
        exp_tx.send_replace(Some(Arc::new(per_pub)));
        if a.offline_subs && a.drain {
            start = Instant::now();
            for i in 0..a.subscribers {
                subs.push(tokio::spawn(subscriber(
                    i,
                    plan.clone(),
                    SubStart::Resume,
                    exp_rx.clone(),
                    false,
                )));
            }
        }
    }

    let mut results = Vec::new();
    for h in subs {
        results.push(h.await.context("subscriber task")?);
    }
    drop(extra_conns);
    let delivery = (!results.is_empty()).then(|| {
        let expected = exp_rx.borrow().as_ref().map_or(0, |per_pub| {
            if a.pairs {
                per_pub.iter().copied().max().unwrap_or(0)
            } else {
                per_pub.iter().sum()
            }
        });
        let mut lost = 0;
        for (si, r) in results.iter().enumerate() {
            for p in 0..a.publishers {
                if a.pairs && p as usize != si {
                    continue;
                }
                // Only what the publisher saw acknowledged (QoS 0: sent) must arrive.
                let (sent, unacked) = match pubs.get(p as usize) {
                    Some(pr) if plan.qos == QoS::AtMostOnce => (pr.sent, 0),
                    Some(pr) => (pr.sent, pr.sent - pr.acked),
                    None => (a.count.unwrap_or(0), 0),
                };
                lost += r.tracker.missing(p, sent).saturating_sub(unacked);
            }
        }
        let received: u64 = results.iter().map(|r| r.tracker.unique).sum();
        let end = results
            .iter()
            .filter_map(|r| r.last_at)
            .max()
            .unwrap_or(start);
        let secs = (end.max(start) - start).as_secs_f64();
        DeliveryReport {
            phase: if a.offline_subs || a.drain_only {
                "drain"
            } else {
                "online"
            },
            expected_per_subscriber: expected,
            received,
            duplicates: results.iter().map(|r| r.tracker.duplicates).sum(),
            foreign: results.iter().map(|r| r.tracker.foreign).sum(),
            lost,
            secs,
            msgs_per_sec: if secs > 0.0 {
                received as f64 / secs
            } else {
                0.0
            },
            per_subscriber: results.iter().map(|r| r.tracker.unique).collect(),
        }
    });
    for (i, r) in results.iter().enumerate() {
        problems.extend(r.error.clone());
        if r.session_present == Some(false) {
            problems.push(format!("subscriber {i}: session not present on reconnect"));
        }
    }
    let mut latency = Histogram::default();
    for r in &results {
        latency.merge(&r.latency);
    }
    let latency_us = latency_report(&latency);
    let mut ack = Histogram::default();
    let mut ack_sched = Histogram::default();
    for p in &pubs {
        ack.merge(&p.ack_latency);
        ack_sched.merge(&p.ack_latency_sched);
    }

    let mut valid = problems.is_empty();
    if let Some(d) = &delivery {
        if d.lost > 0 {
            if plan.delivery_qos() == QoS::AtMostOnce {
                problems.push(format!(
                    "{} QoS 0 messages not delivered (allowed at QoS 0)",
                    d.lost
                ));
            } else {
                problems.push(format!("LOST {} acknowledged messages", d.lost));
                valid = false;
            }
        }
        if d.duplicates > 0 {
            if plan.delivery_qos() == QoS::ExactlyOnce {
                problems.push(format!("{} QoS 2 messages delivered twice", d.duplicates));
                valid = false;
            } else {
                problems.push(format!(
                    "{} duplicate deliveries (allowed at QoS 1)",
                    d.duplicates
                ));
            }
        }
        if d.foreign > 0 {
            problems.push(format!(
                "{} deliveries without a load-generator mark",
                d.foreign
            ));
        }
    }

    Ok(Report {
        broker: a.broker.to_string(),
        protocol: if plan.nats() {
            "nats"
        } else if a.v5 {
            "5.0"
        } else {
            "3.1.1"
        },
        pairs: a.pairs,
        extra_subs: a.extra_subs,
        extra_subs_setup_secs: extra_subs_secs,
        qos: a.qos,
        sub_qos: plan.sub_qos as u8,
        size: a.size,
        publishers: a.publishers,
        subscribers: a.subscribers,
        inflight: a.inflight,
        count_per_publisher: a.count,
        duration_secs: a.duration,
        rate_per_publisher: a.rate,
        topic_per_publisher: a.topic_per_publisher,
        persistent: a.persistent,
        mode,
        publish: publish_report,
        delivery,
        latency_us,
        ack_latency_us: latency_report(&ack),
        ack_latency_sched_us: latency_report(&ack_sched),
        retain: a.retain,
        topics: a.topics,
        tls,
        epoch_unix_ns: epoch_pair()
            .1
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        valid,
        problems,
    })
}

/// Quantiles of a nanosecond histogram in microseconds; `None` when it is empty.
fn latency_report(h: &Histogram) -> Option<LatencyReport> {
    let us = |v: u64| (v as f64 / 1000.0 * 10.0).round() / 10.0;
    (h.total() > 0).then(|| LatencyReport {
        samples: h.total(),
        p50: us(h.quantile(0.50)),
        p90: us(h.quantile(0.90)),
        p99: us(h.quantile(0.99)),
        p999: us(h.quantile(0.999)),
        max: us(h.max()),
    })
}

/// Writes the publishers' `--ack-log` records to `path`, 24 bytes each.
fn write_ack_log(path: &std::path::Path, pubs: &[PubResult]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    for rec in pubs.iter().flat_map(|p| &p.ack_log) {
        for v in rec {
            w.write_all(&v.to_le_bytes())?;
        }
    }
    w.flush()
        .with_context(|| format!("cannot write {}", path.display()))
}

fn print_text(r: &Report) {
    println!(
        "mqtt-load {} protocol {} qos {} (sub {}) {} B, {} pub -> {} sub, mode {}",
        r.broker, r.protocol, r.qos, r.sub_qos, r.size, r.publishers, r.subscribers, r.mode
    );
    if let Some(t) = &r.tls {
        println!("tls:      {} {} {}", t.version, t.cipher_suite, t.kx_group);
    }
    if let Some(p) = &r.publish {
        println!(
            "publish:  {:>12.0} msg/s  ({} acked of {} sent, {} refused, {} unacked) in {:.3} s",
            p.msgs_per_sec, p.acked, p.sent, p.rejected, p.unacked, p.secs
        );
    }
    if let Some(d) = &r.delivery {
        println!(
            "delivery: {:>12.0} msg/s  ({} received, {} expected per subscriber, {} lost, {} duplicates) in {:.3} s [{}]",
            d.msgs_per_sec, d.received, d.expected_per_subscriber, d.lost, d.duplicates, d.secs, d.phase
        );
    }
    print_latencies(&[
        ("latency: ", &r.latency_us),
        ("ack:     ", &r.ack_latency_us),
        ("ack sched", &r.ack_latency_sched_us),
    ]);
    print_verdict(&r.problems, r.valid);
}

/// The text report's latency lines, one per report present.
fn print_latencies(rows: &[(&str, &Option<LatencyReport>)]) {
    for (name, l) in rows {
        if let Some(l) = l {
            println!(
                "{name} p50 {} us  p90 {} us  p99 {} us  p99.9 {} us  max {} us  ({} samples)",
                l.p50, l.p90, l.p99, l.p999, l.max, l.samples
            );
        }
    }
}

/// The text report's last lines: its problems and whether the run is valid.
fn print_verdict(problems: &[String], valid: bool) {
    for p in problems {
        println!("problem:  {p}");
    }
    println!("valid:    {valid}");
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let json = args.json;
    let timeout = Duration::from_secs_f64(args.timeout);
    let plan = match Plan::new(args) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            eprintln!("mqtt-load: {e:#}");
            return std::process::ExitCode::from(1);
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = plan.args.threads {
        builder.worker_threads(usize::from(n));
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mqtt-load: cannot start the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    if plan.args.idle > 0 {
        let outcome = runtime.block_on(within(timeout, run_idle(plan)));
        runtime.shutdown_background();
        return finish(
            outcome,
            json,
            |r| r.valid,
            |r| {
                println!(
                    "idle: {} connections held {:.1} s ({} closed by the broker)",
                    r.idle, r.held_secs, r.closed_by_broker
                );
            },
        );
    }
    if plan.args.connect_rate > 0 {
        let outcome = runtime.block_on(within(timeout, connect_rate::run(plan)));
        runtime.shutdown_background();
        return finish(outcome, json, |r| r.valid, connect_rate::print_text);
    }
    let outcome = runtime.block_on(within(timeout, run(plan)));
    // Tasks still blocked on a broker must not keep the process alive.
    runtime.shutdown_background();
    finish(outcome, json, |r| r.valid, print_text)
}

/// `fut`, or an error once `timeout` passed.
async fn within<R>(
    timeout: Duration,
    fut: impl std::future::Future<Output = anyhow::Result<R>>,
) -> anyhow::Result<R> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!("run did not finish within {timeout:?}")),
    }
}

/// Prints a run's report (JSON or text) or its error; the exit code says which: 0 valid,
/// 2 invalid (something lost), 1 failed.
fn finish<R: serde::Serialize>(
    outcome: anyhow::Result<R>,
    json: bool,
    valid: impl Fn(&R) -> bool,
    text: impl Fn(&R),
) -> std::process::ExitCode {
    match outcome {
        Ok(report) => {
            if json {
                match serde_json::to_string(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("mqtt-load: {e}");
                        return std::process::ExitCode::from(1);
                    }
                }
            } else {
                text(&report);
            }
            if valid(&report) {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::from(2)
            }
        }
        Err(e) => {
            if json {
                let msg = serde_json::json!({ "valid": false, "error": format!("{e:#}") });
                println!("{msg}");
            } else {
                eprintln!("mqtt-load: {e:#}");
            }
            std::process::ExitCode::from(1)
        }
    }
}
