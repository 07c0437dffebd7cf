//! A model-checking driver of the protocol core (`proto::Core`) with virtual time,
//! shared by the seeded unit test (`proto/tests/fuzz.rs`) and the cargo-fuzz target
//! `core` (`broker/fuzz/`). Built for tests, and with the `fuzzing` feature (off by
//! default) for the fuzz target; nothing else uses it.
//!
//! 3 to 6 simulated clients (MQTT 3.1.1 and 5.0) drive one core with operations chosen
//! by a source of choices: a seeded generator ([`run_seeded`]) or the fuzzer's input, a
//! byte or two per choice ([`run_input`]). The driver plays the runtime's part as
//! `proto/tests/twins.rs` does: every packet a client sends is encoded and decoded again
//! with the codec (a packet the decoder refuses closes the connection, as the
//! connection task does), replies are decoded as the client reads them, virtual time
//! moves only when an operation moves it and fires the core's timers (`poll_timeout`
//! then `handle_timeout`) and the clients' keep-alive deadlines in time order. With the
//! durable journal a case may "crash": the core is dropped without ending any link and
//! rebuilt from the surviving log (and streams), as the runtime's start-up does (index,
//! sessions, deliveries, retained and wills, then a full compaction).
//!
//! Operations are structured (CONNECT with or without Clean Start and a will,
//! SUBSCRIBE, PUBLISH, acknowledgements, DISCONNECT, link loss, packets the broker must
//! refuse, taken-over connections, time, crashes, compaction) and, when raw frames are
//! on, raw: bytes from the source or a template frame (over a wider alphabet: work
//! queues and their control topics, streams, delayed publishes, declarations) with a
//! few bytes changed, read as the connection task reads them (`check` within the
//! Maximum Packet Size, then `decode_body`; a CONNECT first on a new connection): a
//! frame the decoder refuses, or a trailing partial one, ends the link.
//!
//! Invariants. While every packet the core was handed came from a structured operation
//! the model is exact and all of these hold, at every step:
//! - no panic (the core's debug assertions included); every byte the core writes for a
//!   client decodes as packets of that client's protocol, of the kinds a server sends,
//!   within the client's Maximum Packet Size, with topic aliases inside the client's
//!   Topic Alias Maximum;
//! - a QoS 1/2 PUBLISH to a client has a non-zero packet id not in flight in its session
//!   (a re-send after a resumed CONNECT carries DUP and the id of the same message), and
//!   leaves only while fewer than the client's Receive Maximum are unacknowledged;
//! - a client receives a message only if its session held a matching subscription when
//!   the message was routed (No Local ones of the publisher excluded), or, for messages
//!   that may reach later subscribers, subscribed to a matching filter since: retained
//!   ones while they are the topic's retained message and only as Retain Handling
//!   allows, never to a shared subscription; shared deliveries only within the group
//!   they were routed to; queue jobs; wills (published at a time the model does not
//!   track);
//! - never a QoS above the publish's or the granted one, never another subscription's
//!   Subscription Identifier, never an expired message as a new PUBLISH;
//! - Session Present agrees with the model where the model is sure; SUBACK, UNSUBACK,
//!   PUBACK/PUBREC (v5 reasons included), PUBCOMP and PINGRESP answer what was sent;
//!   protocol errors close with the reason expected.
//!
//! At the end every client without a connection resumes its session, and every client
//! acknowledges everything until the core has nothing left to send. Then, for QoS 1/2
//! messages acknowledged to their publisher (reason below 0x80, a payload, no message
//! expiry, not a work queue):
//! - every connection that was online with a matching non-shared subscription when it
//!   was published, and stayed connected without unsubscribing since, received it;
//! - every session with a matching non-shared subscription granting QoS 1/2 when it was
//!   published (online or not) that is still the same session (Session Present on every
//!   CONNECT since, across takeovers and crashes) and unsubscribed nothing since,
//!   received it.
//!
//! Once a raw frame reached the core the model no longer knows what was published,
//! subscribed or acknowledged, and only the checks that stay certain are made: no panic;
//! every byte written decodes as server packets of the client's protocol within its
//! Maximum Packet Size (the CONNACK included) and its Topic Alias Maximum; QoS 0
//! PUBLISHes have packet id 0, QoS 1/2 ones a non-zero id not in flight (the model
//! follows every acknowledgement the core may have taken, raw ones included, and
//! forgets a flight whenever the core may have) and no more than the window in flight;
//! a live connection is never told it was taken over, a taken-over one always is and
//! gets nothing written.
//!
//! A failing seeded case prints its seed and its last operations; a failing input is
//! replayed with every operation printed by [`run_input`] with `verbose`.

// A driver of tests: a failed unwrap is a finding, like a failed assertion.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mote_codec::{
    check, decode_body, reason, topic, Ack, Connect, Disconnect, List, Packet, PropList,
    PropValues, Properties, Protocol, Publish, QoS, RetainHandling, SubOptions, Subscribe,
    SubscribeFilter, Unsubscribe, Will,
};

use crate::config::MqttConfig;
use crate::proto::durable::{self, MemStreamLog, StreamLog, StreamStore};
use crate::proto::login::Login;
use crate::proto::message::Message;
use crate::proto::session::{Kick, OutBuf, Wake};
use crate::proto::{Clock, Close, Compaction, Core, Effects, End};
use crate::store::recover::Index;

/// Filters clients subscribe to.
const FILTERS: &[&str] = &[
    "a",
    "a/b",
    "a/+",
    "#",
    "+/b",
    "$SYS/#",
    "$share/g/a/#",
    "$queue/q1",
    "c",
    "$share/g/+/b",
];

/// Topics clients publish to.
const TOPICS: &[&str] = &["a", "a/b", "c", "$queue/q1"];

/// The work queue of the alphabet.
const QUEUE: &str = "$queue/q1";

/// Topics of raw frames: the structured ones, and the core's other rooms (work queues
/// and their control topics, declarations, streams, delayed publishes, `$SYS`).
const RAW_TOPICS: &[&str] = &[
    "a",
    "a/b",
    "c",
    "$queue/q1",
    "$queue/q2",
    "$queue/q1.dlq",
    "$queue/$nack/1",
    "$queue/$nack/2/5",
    "$queue/$touch/1",
    "$queue/$touch/1/0",
    "$queue/$credit/q1/2",
    "$admin/queue/q1",
    "$admin/queue/q1/redrive",
    "$admin/stream/s1",
    "$stream/s1",
    "$stream/s1/k1",
    "$stream/s2/k2",
    "$delayed/2/a",
    "$delayed/5/$queue/q1",
    "$delayed/1/$stream/s1",
    "$SYS/x",
];

/// Filters of raw frames.
const RAW_FILTERS: &[&str] = &[
    "a",
    "a/+",
    "#",
    "+/+",
    "$queue/q1",
    "$queue/q2",
    "$queue/q1.dlq",
    "$share/g/a/#",
    "$share/h/$stream/s1",
    "$stream/s1",
    "$stream/s1/@earliest",
    "$stream/s2/@0/k2",
    "$json/a/#",
    "$admin/#",
    "$delayed/#",
    "$SYS/#",
];

/// Payloads of raw frames: declarations (good and bad) among them.
const RAW_PAYLOADS: &[&[u8]] = &[
    b"",
    b"x",
    b"{}",
    b"{\"filter\": \"a/#\"}",
    b"{\"retention\": 1, \"max_bytes\": 10}",
    b"{\"overflow\": \"drop_oldest\", \"max_messages\": 1}",
    b"{\"visibility_timeout\": 1, \"max_deliveries\": 1, \"prefetch\": 1}",
    b"{\"default_offset\": \"earliest\", \"max_bytes\": 1}",
    b"{\"delay\": 2}",
    b"{\"key\": \"topic\"}",
    b"{\"nope\": 1}",
    b"\xff",
];

/// Steps of one fuzzer input at most (its bytes usually run out first).
const INPUT_STEPS: usize = 400;

/// Operations kept for the failure report.
const TRACE: usize = 60;

// ---------------------------------------------------------------------------------------
// Choices
// ---------------------------------------------------------------------------------------

/// SplitMix64: spreads a case number into a seed.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Where a case's choices come from.
enum Rng {
    /// Xorshift64: small, fast, reproducible.
    Seeded(u64),
    /// The fuzzer's input: a byte per choice (two for more than 256 ways), zeros once
    /// it has run out.
    Input { data: Vec<u8>, at: usize },
    /// Xorshift64, each choice also written in `out` as the input that makes it.
    Recording { x: u64, out: Vec<u8> },
}

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng::Seeded(splitmix(seed) | 1)
    }

    fn next(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    /// The next byte of the input (0 past its end).
    fn byte(data: &[u8], at: &mut usize) -> u8 {
        let b = data.get(*at).copied().unwrap_or(0);
        *at += 1;
        b
    }

    /// True once the input has run out (never for a seeded source).
    fn exhausted(&self) -> bool {
        match self {
            Rng::Seeded(_) | Rng::Recording { .. } => false,
            Rng::Input { data, at } => *at >= data.len(),
        }
    }

    fn below(&mut self, n: usize) -> usize {
        match self {
            Rng::Seeded(x) => (Rng::next(x) % n as u64) as usize,
            Rng::Input { data, at } if n <= 256 => usize::from(Rng::byte(data, at)) % n,
            Rng::Input { data, at } => {
                let lo = usize::from(Rng::byte(data, at));
                (lo | usize::from(Rng::byte(data, at)) << 8) % n
            }
            Rng::Recording { x, out } => {
                let v = (Rng::next(x) % n as u64) as usize;
                out.push(v as u8);
                if n > 256 {
                    out.push((v >> 8) as u8);
                }
                v
            }
        }
    }

    /// True with probability `pct` percent.
    fn pct(&mut self, pct: u64) -> bool {
        match self {
            Rng::Seeded(x) => Rng::next(x) % 100 < pct,
            Rng::Input { data, at } => u64::from(Rng::byte(data, at)) % 100 < pct,
            Rng::Recording { x, out } => {
                let v = Rng::next(x) % 100;
                out.push(v as u8);
                v < pct
            }
        }
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }

    fn qos(&mut self) -> QoS {
        self.pick(&[QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
    }

    /// Up to `n` bytes: as many as the input has left, or `n` random ones.
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        match self {
            Rng::Seeded(x) => (0..n).map(|_| Rng::next(x) as u8).collect(),
            Rng::Recording { x, out } => {
                let b: Vec<u8> = (0..n).map(|_| Rng::next(x) as u8).collect();
                out.extend_from_slice(&b);
                b
            }
            Rng::Input { data, at } => {
                let from = (*at).min(data.len());
                let to = from.saturating_add(n).min(data.len());
                *at = to;
                data[from..to].to_vec()
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------

/// One simulated client attached to the core.
#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) id: Arc<str>,
    pub(crate) conn: u64,
    pub(crate) protocol: Protocol,
    /// Its link's wake-up, which holds the kick the core set (see [`NoWake::get`]).
    pub(crate) kick: Arc<NoWake>,
    pub(crate) out: BytesMut,
}

/// A connection task that is never woken (the driver, and the core's tests, drain
/// explicitly).
#[derive(Debug, Default)]
pub(crate) struct NoWake(Kick);

impl NoWake {
    /// The v5 reason the core asked the connection to close with (0: none).
    pub(crate) fn get(&self) -> u8 {
        self.0.get()
    }
}

impl Wake for NoWake {
    fn wake(&self) {}
    fn kick(&self) -> &Kick {
        &self.0
    }
}

/// `c` handed to the core as the runtime hands it an authenticated CONNECT: the client
/// if accepted, and what the core wrote (the CONNACK and what followed it).
pub(crate) fn connect_with(
    core: &mut Core,
    c: &Connect<'_>,
    now: Instant,
) -> (Option<Client>, Vec<u8>) {
    connect_login(core, c, Login::from(c.username.map(Arc::from)), now)
}

/// [`connect_with`] with what the login brought (a token's rules, limits...).
pub(crate) fn connect_login(
    core: &mut Core,
    c: &Connect<'_>,
    login: Login,
    now: Instant,
) -> (Option<Client>, Vec<u8>) {
    let kick = Arc::new(NoWake::default());
    let mut out = BytesMut::new();
    let acc = core.connect(
        c,
        login,
        kick.clone(),
        now,
        &mut out,
        &mut Effects::default(),
    );
    let client = acc.map(|a| Client {
        id: a.client_id,
        conn: a.conn_id,
        protocol: a.protocol,
        kick,
        out: BytesMut::new(),
    });
    (client, out.to_vec())
}

/// A CONNECT without will or credentials, keep alive 30 s.
pub(crate) fn connect_packet<'a>(
    protocol: Protocol,
    id: &'a str,
    clean: bool,
    props: Properties<'a>,
) -> Connect<'a> {
    Connect {
        protocol,
        clean_start: clean,
        keep_alive: 30,
        properties: props,
        client_id: id,
        will: None,
        username: None,
        password: None,
    }
}

/// `p` encoded for `protocol` (empty if the encoder refuses it).
fn encoded(p: &Packet<'_>, protocol: Protocol) -> Vec<u8> {
    let mut b = BytesMut::new();
    match p.encode_to(protocol, &mut b) {
        Ok(()) => b.to_vec(),
        Err(_) => Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------
// The journal and recovery
// ---------------------------------------------------------------------------------------

/// A journal in memory, durable once appended, that compacts like the store: records
/// appended while a snapshot is written follow it; a crash before the snapshot ends
/// keeps the old log and what was appended meanwhile.
#[derive(Debug, Default)]
pub(crate) struct FuzzJournal {
    inner: std::sync::Mutex<FuzzLog>,
}

/// Journal records in order.
type Records = Vec<Vec<u8>>;

#[derive(Debug, Default)]
struct FuzzLog {
    records: Vec<Vec<u8>>,
    /// While a snapshot is written: its records, and those appended since it began.
    snapshot: Option<(Records, Records)>,
    appended: u64,
}

impl FuzzJournal {
    fn with(records: Vec<Vec<u8>>) -> FuzzJournal {
        let appended = records.len() as u64;
        FuzzJournal {
            inner: std::sync::Mutex::new(FuzzLog {
                records,
                snapshot: None,
                appended,
            }),
        }
    }

    /// What a crash leaves of the log.
    pub(crate) fn surviving(&self) -> Vec<Vec<u8>> {
        let j = self.inner.lock().unwrap();
        let mut r = j.records.clone();
        if let Some((_, after)) = &j.snapshot {
            r.extend(after.iter().cloned());
        }
        r
    }
}

impl durable::Journal for FuzzJournal {
    fn append_with(&self, encode: &mut dyn FnMut(&mut Vec<u8>)) -> u64 {
        let mut b = Vec::new();
        encode(&mut b);
        let mut j = self.inner.lock().unwrap();
        match &mut j.snapshot {
            Some((_, after)) => after.push(b),
            None => j.records.push(b),
        }
        j.appended += 1;
        j.appended
    }
    fn waits(&self) -> bool {
        true
    }
    fn durable(&self) -> u64 {
        self.inner.lock().unwrap().appended
    }
    fn since_snapshot(&self) -> u64 {
        // Always enough: the driver decides when to compact.
        1 << 40
    }
    fn snapshot_begin(&self) {
        self.inner.lock().unwrap().snapshot = Some((Vec::new(), Vec::new()));
    }
    fn snapshot_chunk(&self, framed: Vec<u8>) {
        // Unframe: magic (4), length (4), CRC (4), payload.
        let mut j = self.inner.lock().unwrap();
        let Some((snap, _)) = &mut j.snapshot else {
            panic!("chunk outside a snapshot");
        };
        let mut at = 0;
        while at < framed.len() {
            let len = u32::from_le_bytes(framed[at + 4..at + 8].try_into().unwrap()) as usize;
            snap.push(framed[at + 12..at + 12 + len].to_vec());
            at += 12 + len;
        }
    }
    fn snapshot_end(&self) {
        let mut j = self.inner.lock().unwrap();
        let (snap, after) = j.snapshot.take().unwrap();
        j.records = snap.into_iter().chain(after).collect();
    }
}

/// Queue tails that cannot be made: with an unlimited budget none is asked for.
#[derive(Debug)]
struct NoSpill;

impl durable::TailStore for NoSpill {
    fn create(&self) -> std::io::Result<Box<dyn durable::QueueTail>> {
        Err(std::io::Error::other("no spill files in the fuzz"))
    }
}

/// Streams in memory that outlive a crash, as the store keeps them in files: an entry
/// is durable once appended, like a record of [`FuzzJournal`].
#[derive(Debug, Default)]
struct FuzzStreams {
    logs: Mutex<BTreeMap<String, Arc<Mutex<MemStreamLog>>>>,
}

/// One stream of [`FuzzStreams`], shared by the cores before and after a crash.
#[derive(Debug)]
struct FuzzStreamLog(Arc<Mutex<MemStreamLog>>);

impl StreamLog for FuzzStreamLog {
    fn bounds(&self) -> (u64, u64) {
        self.0.lock().unwrap().bounds()
    }
    fn bytes(&self) -> u64 {
        self.0.lock().unwrap().bytes()
    }
    fn append(&mut self, offset: u64, ts: u64, encode: &mut dyn FnMut(&mut Vec<u8>)) -> u64 {
        self.0.lock().unwrap().append(offset, ts, encode)
    }
    fn read(
        &self,
        from: u64,
        max_bytes: usize,
        visit: &mut dyn FnMut(u64, u64, &[u8]),
    ) -> std::io::Result<()> {
        self.0.lock().unwrap().read(from, max_bytes, visit)
    }
    fn seek_time(&self, ts: u64) -> std::io::Result<u64> {
        self.0.lock().unwrap().seek_time(ts)
    }
    fn trim(&mut self, older_than: Option<u64>, max_bytes: u64) -> std::io::Result<u64> {
        self.0.lock().unwrap().trim(older_than, max_bytes)
    }
}

impl StreamStore for FuzzStreams {
    fn list(&self) -> Vec<String> {
        self.logs.lock().unwrap().keys().cloned().collect()
    }
    fn open(&self, name: &str, _segment_bytes: u64) -> std::io::Result<Box<dyn StreamLog>> {
        let mut logs = self.logs.lock().unwrap();
        let log = logs.entry(name.to_owned()).or_default().clone();
        Ok(Box::new(FuzzStreamLog(log)))
    }
}

/// A core of `shards` shards journaling into `journal`, its streams in `streams`.
fn journaled(
    cfg: &Arc<MqttConfig>,
    shards: usize,
    journal: Arc<FuzzJournal>,
    streams: &Arc<FuzzStreams>,
    clock: Clock,
) -> Core {
    let mut core = Core::with_journal(cfg.clone(), journal, Arc::new(NoSpill), usize::MAX, clock)
        .with_shards(shards);
    core.set_stream_store(streams.clone(), clock.at);
    core
}

/// The core the runtime's start-up rebuilds from `records` and `streams`: the streams,
/// then [`replay_into`], then a full compaction into the same log.
fn recover(
    cfg: &Arc<MqttConfig>,
    shards: usize,
    records: Vec<Vec<u8>>,
    streams: &Arc<FuzzStreams>,
    clock: Clock,
    now: Instant,
) -> (Core, Arc<FuzzJournal>) {
    let journal = Arc::new(FuzzJournal::with(records.clone()));
    let mut core = journaled(cfg, shards, journal.clone(), streams, clock);
    replay_into(&mut core, &records, now, clock.unix_ms(now));
    core.compact(now);
    (core, journal)
}

/// Replays a journal's `records` into `core` as the runtime's start-up does: the index
/// pass, the sessions, the deliveries in log order, retained messages and wills (`now_ms`:
/// the wall clock at `now`).
pub(crate) fn replay_into(core: &mut Core, records: &[Vec<u8>], now: Instant, now_ms: u64) {
    let mut index = Index::default();
    for r in records {
        index.apply_bytes(r);
    }
    core.restore_sessions(&index, now);
    let mut replay = index.replay();
    for r in records {
        replay.apply_bytes(
            r,
            &mut |mid, m| {
                let (msg, will_expiry) = Message::from_stored(mid, m, now, now_ms);
                (Arc::new(msg), will_expiry)
            },
            &mut |client, dseq, d, (msg, _)| core.restore_delivery(client, dseq, d, msg, now),
        );
    }
    let kept = replay.finish();
    core.restore_finish(&index, &kept);
}

// ---------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------

/// When a message may reach a subscription made after it was routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Late {
    /// Only through a matching shared or queue subscription (re-routing, dispatch).
    Rerouted,
    /// Any matching subscription: a will (published at a time the model does not know).
    Always,
}

/// A message a client published (or a will), as the model knows it.
#[derive(Debug)]
struct Born {
    topic: String,
    /// Highest QoS it may be delivered with.
    max_qos: QoS,
    late: Late,
    /// `(client slot, session generation)` that may receive it.
    eligible: HashSet<(usize, u32)>,
    /// Step at which it was published.
    step: usize,
    /// When its Message Expiry Interval runs out (not known for wills).
    expires_at: Option<Instant>,
    /// Shared subscriptions (`$share/G/F`) that matched it when it was routed: only
    /// their later members may get it (re-routed), never another group.
    groups: HashSet<String>,
}

/// Where a will stands, as the model knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WillAt {
    /// Its connection lives: it must not be published.
    Alive,
    /// Its connection ended: published from this instant on (Will Delay Interval, or
    /// the session's end if sooner).
    Due(Instant),
    /// Published (its session ended first).
    Fired,
    /// Removed: DISCONNECT 0x00, or the session resumed within the delay.
    Disarmed,
    /// After a crash: the model does not follow it any more.
    Unknown,
}

/// A will and the connection it belongs to.
#[derive(Debug)]
struct WillTrack {
    msg: usize,
    slot: usize,
    conn: u64,
    /// Will Delay Interval (0 in 3.1.1).
    delay: u32,
    at: WillAt,
}

/// An outbound QoS 1/2 delivery in flight in a session, as the client saw it.
#[derive(Debug, Clone, Copy)]
struct OutFlight {
    /// The message (`None`: the model does not know it, after raw frames).
    msg: Option<usize>,
    qos: QoS,
    /// PUBREC sent: a PUBREL is what comes next.
    released: bool,
    /// A work-queue delivery (goes back to its queue when the connection ends).
    queue: bool,
}

/// The model of the session of one client id.
#[derive(Debug, Default)]
struct Sess {
    /// The client id of the session (the slot's, or one the broker assigned).
    client: String,
    /// Bumped whenever the broker says the session is new.
    gen: u32,
    /// Filter -> (granted options, certain): uncertain ones were applied by a SUBSCRIBE
    /// that ended in a protocol error (not acknowledged, not journaled).
    subs: BTreeMap<String, (SubOptions, bool)>,
    out: HashMap<u16, OutFlight>,
    /// Our QoS 2 PUBLISHes acknowledged with PUBREC: (packet id, message); PUBREL owed.
    held: Vec<(u16, usize)>,
    expiry: u32,
    /// When its last connection ended (None: never connected).
    offline_at: Option<Instant>,
    /// The model cannot tell whether the session exists (after a crash).
    unsure: bool,
    /// Next packet id this client uses (never reused: the broker may still hold one).
    next_pid: u16,
    /// Messages received in this session (any of its connections).
    got: HashSet<usize>,
    /// Messages this session must receive: QoS 1/2 deliveries of acknowledged publishes.
    kept: Vec<usize>,
    /// Step of its last UNSUBSCRIBE.
    unsub_at: Option<usize>,
    /// Every (filter, Subscription Identifier) this session subscribed with.
    sub_ids: HashSet<(String, u32)>,
    /// The highest QoS ever granted per filter (queued deliveries keep their QoS).
    granted: HashMap<String, QoS>,
}

/// What a run exercised (printed at the end; a fuzz that checks nothing passes too).
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Operations.
    pub steps: u64,
    /// PUBLISHes clients read.
    pub publishes_received: u64,
    /// Messages a connection had to receive, and did.
    pub conn_checks: u64,
    /// Messages a session had to keep and deliver, and did.
    pub session_checks: u64,
    /// CONNACKs with Session Present.
    pub resumed: u64,
    /// CONNECTs that took a live connection's session over.
    pub takeovers: u64,
    /// Crashes and recoveries.
    pub crashes: u64,
    /// Compactions written.
    pub compactions: u64,
    /// Connections closed for a packet the broker refused.
    pub closed_by_error: u64,
    /// Wills clients read.
    pub wills_received: u64,
    /// Raw frames the core was handed (CONNECTs included).
    pub raw_handled: u64,
}

impl Stats {
    /// Adds the figures of `o`.
    pub fn add(&mut self, o: Stats) {
        self.steps += o.steps;
        self.publishes_received += o.publishes_received;
        self.conn_checks += o.conn_checks;
        self.session_checks += o.session_checks;
        self.resumed += o.resumed;
        self.takeovers += o.takeovers;
        self.crashes += o.crashes;
        self.compactions += o.compactions;
        self.closed_by_error += o.closed_by_error;
        self.wills_received += o.wills_received;
        self.raw_handled += o.raw_handled;
    }
}

/// A live connection of a client.
struct Conn {
    c: Client,
    v5: bool,
    /// Topic Alias Maximum it announced (aliases the broker may use).
    alias_max: u16,
    /// Aliases the broker set on this connection.
    aliases: HashMap<u16, String>,
    /// Aliases this client set (client to broker).
    my_aliases: HashMap<u16, String>,
    max_packet: u32,
    /// QoS 1/2 PUBLISHes the broker may have unacknowledged: min(the client's Receive
    /// Maximum, the broker's `max_inflight`).
    window: u16,
    /// Keep alive the runtime enforces (0: none) and the last packet from the client.
    keep_alive: u16,
    last_rx: Instant,
    /// PUBLISHes received and not yet acknowledged: (packet id, qos).
    unacked: Vec<(u16, QoS)>,
    /// PUBRELs from the broker to answer with PUBCOMP.
    rels: Vec<u16>,
    /// Replies to what this client sent, in order (not deliveries).
    replies: Vec<Out>,
    received: HashSet<usize>,
    /// Messages it must receive (liveness) and the step they were published.
    expect: Vec<usize>,
    /// Step of its last UNSUBSCRIBE.
    unsubscribed_at: Option<usize>,
    /// The SUBSCRIBE awaiting its SUBACK: packet id and filters.
    pending_sub: Option<(u16, Vec<PendingSub>)>,
}

/// One filter of a SUBSCRIBE awaiting its SUBACK.
#[derive(Debug, Clone)]
struct PendingSub {
    filter: String,
    options: SubOptions,
    /// The session held the filter before this SUBSCRIBE.
    existed: bool,
    /// Its Subscription Identifier.
    id: Option<u32>,
    v5: bool,
}

/// A reply the broker wrote, owned.
#[derive(Debug, Clone, PartialEq)]
enum Out {
    PubAck(u16, u8),
    PubRec(u16, u8),
    PubComp(u16, u8),
    SubAck(u16, Vec<u8>),
    UnsubAck(u16, Vec<u8>),
    PingResp,
    Disconnect(u8),
}

/// What became of a packet sent on a connection.
#[derive(Debug, PartialEq)]
enum Sent {
    /// The encoder refused it: never on the wire.
    Unencodable,
    /// The decoder refused it: the runtime closed the connection.
    Malformed(u8),
    /// The core's answer.
    Handled(Result<(), Close>),
}

/// What a CONNECT asked for, as the model follows it.
#[derive(Debug, Clone, Copy)]
struct Asked<'a> {
    v5: bool,
    clean: bool,
    /// Session Expiry Interval.
    expiry: Option<u32>,
    /// Receive Maximum.
    recv_max: Option<u16>,
    /// Topic Alias Maximum (0: none).
    alias_max: u16,
    /// Maximum Packet Size.
    max_packet: Option<u32>,
    keep_alive: u16,
    /// Its will: topic, payload, QoS and Will Delay Interval.
    will: Option<(&'a str, &'a [u8], QoS, Option<u32>)>,
}

/// One case: the core, the clients and the model.
struct World {
    rng: Rng,
    cfg: Arc<MqttConfig>,
    core: Core,
    journal: Option<Arc<FuzzJournal>>,
    /// The streams of a journaled core (they outlive a crash with the journal).
    streams: Arc<FuzzStreams>,
    compaction: Option<Compaction>,
    /// Raw frames are among the operations.
    raw: bool,
    /// Every packet the core was handed came from a structured operation: the model is
    /// exact and every invariant is checked (otherwise only the certain ones).
    exact: bool,
    t0: Instant,
    now: Instant,
    step: usize,
    conns: Vec<Option<Conn>>,
    sess: Vec<Sess>,
    ids: Vec<String>,
    /// Connections taken over: the core must refuse them.
    stale: Vec<Client>,
    msgs: Vec<Born>,
    wills: Vec<WillTrack>,
    by_content: HashMap<(String, Vec<u8>), Vec<usize>>,
    /// The model's retained message per topic (current).
    retained: HashMap<String, usize>,
    trace: VecDeque<String>,
    verbose: bool,
    stats: Stats,
}

/// True when subscription `full` (plain, `$share/G/F` or `$queue/NAME`) matches `topic`.
fn sub_matches(full: &str, topic: &str) -> bool {
    if full == QUEUE {
        return topic == QUEUE || topic.starts_with("$queue/q1/");
    }
    if topic.starts_with("$queue/") {
        return false;
    }
    let inner = match topic::split_shared(full) {
        Some(Ok((_, inner))) => inner,
        Some(Err(())) => return false,
        None => full,
    };
    topic::matches(inner, topic)
}

fn is_plain(full: &str) -> bool {
    !full.starts_with("$share/") && !full.starts_with("$queue/")
}

impl World {
    /// A case taking its choices from `rng`, with raw frames when `raw`.
    fn new(mut rng: Rng, raw: bool, verbose: bool) -> World {
        let mut cfg = MqttConfig::default();
        if rng.pct(30) {
            cfg.max_inflight = rng.pick(&[1, 2, 4]);
        }
        let cfg = Arc::new(cfg);
        // The sessions in one shard or in four (`proto/shard.rs`): the model is the
        // same, so both must agree with it.
        let shards = if rng.pct(50) { 4 } else { 1 };
        let t0 = Instant::now();
        let clock = Clock::new(t0, 1_700_000_000_000);
        let streams = Arc::new(FuzzStreams::default());
        let (core, journal) = if rng.pct(50) {
            let j = Arc::new(FuzzJournal::default());
            (journaled(&cfg, shards, j.clone(), &streams, clock), Some(j))
        } else {
            (Core::new(cfg.clone(), clock).with_shards(shards), None)
        };
        let n = 3 + rng.below(4);
        World {
            rng,
            cfg,
            core,
            journal,
            streams,
            compaction: None,
            raw,
            exact: true,
            t0,
            now: t0,
            step: 0,
            conns: (0..n).map(|_| None).collect(),
            sess: (0..n)
                .map(|i| Sess {
                    client: format!("c{i}"),
                    next_pid: 1,
                    ..Sess::default()
                })
                .collect(),
            ids: (0..n).map(|i| format!("c{i}")).collect(),
            stale: Vec::new(),
            msgs: Vec::new(),
            wills: Vec::new(),
            by_content: HashMap::new(),
            retained: HashMap::new(),
            trace: VecDeque::new(),
            verbose,
            stats: Stats::default(),
        }
    }

    fn note(&mut self, s: String) {
        if self.verbose {
            eprintln!("[{}] {s}", self.step);
        }
        if self.trace.len() == TRACE {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("[{}] {s}", self.step));
    }

    /// The wall clock consistent with the first core's.
    fn clock(&self) -> Clock {
        let ms = (self.now - self.t0).as_millis() as u64;
        Clock::new(self.now, 1_700_000_000_000 + ms)
    }

    fn alive(&self) -> Vec<usize> {
        (0..self.conns.len())
            .filter(|&i| self.conns[i].is_some())
            .collect()
    }

    fn next_pid(&mut self, slot: usize) -> u16 {
        let s = &mut self.sess[slot];
        let id = s.next_pid;
        s.next_pid = s.next_pid.checked_add(1).unwrap_or(1);
        id
    }

    // -----------------------------------------------------------------------------------
    // Wire
    // -----------------------------------------------------------------------------------

    /// Sends `p` on `slot`'s connection the way the runtime does: encoded, decoded, then
    /// handed to the core; what the core wrote is read by the client. A refused packet or
    /// a `Close` ends the link as the runtime ends it.
    fn send(&mut self, slot: usize, p: &Packet<'_>) -> Sent {
        let now = self.now;
        let max = self.cfg.max_packet_size;
        let conn = self.conns[slot].as_mut().unwrap();
        conn.last_rx = now;
        if !self.exact {
            // Replies to raw frames nobody waits for: what follows answers this packet.
            conn.replies.clear();
        }
        let protocol = conn.c.protocol;
        let mut buf = BytesMut::new();
        if p.encode_to(protocol, &mut buf).is_err() {
            return Sent::Unencodable;
        }
        let r = match mote_codec::decode(&buf, protocol, max) {
            Err(e) => Sent::Malformed(e.reason_code()),
            Ok(None) => panic!("a whole frame decoded as incomplete: {p:?}"),
            Ok(Some((decoded, n))) => {
                assert_eq!(n, buf.len(), "frame length of {p:?}");
                let mut fx = Effects::default();
                let c = &mut conn.c;
                Sent::Handled(
                    self.core
                        .handle(&c.id, c.conn, &decoded, now, &mut c.out, &mut fx),
                )
            }
        };
        self.absorb(slot, false);
        match r {
            Sent::Malformed(_) | Sent::Handled(Err(Close::Error(_))) => {
                self.stats.closed_by_error += 1;
                self.end_link(slot, End::Abnormal);
            }
            Sent::Handled(Err(Close::Disconnected { will })) => {
                self.end_link(slot, End::Normal { will });
            }
            Sent::Handled(Err(Close::TakenOver)) => {
                panic!(
                    "{}: a live connection was told it was taken over",
                    self.ids[slot]
                )
            }
            _ => {}
        }
        r
    }

    /// What the connection task does when woken: drain the session.
    fn pump(&mut self, slot: usize) {
        let now = self.now;
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        let c = &mut conn.c;
        // As the runtime does: the PUBLISH packets are encoded after the core's call.
        let mut outbox = crate::proto::session::Outbox::default();
        let r = self
            .core
            .drain_deferred(&c.id, c.conn, now, &mut c.out, &mut outbox);
        // Large payloads spliced, as the connection writes them, then laid out flat.
        let mut spliced = OutBuf::from(std::mem::take(&mut c.out));
        outbox.write(&mut spliced);
        c.out = spliced.flatten();
        match r {
            Ok(_) => self.absorb(slot, false),
            Err(e) => panic!("{}: drain of a live connection: {e:?}", self.ids[slot]),
        }
    }

    /// Reads and checks what the core wrote for `slot`; `resuming` while reading what
    /// followed a CONNACK with Session Present.
    fn absorb(&mut self, slot: usize, resuming: bool) {
        let conn = self.conns[slot].as_mut().unwrap();
        let bytes = conn.c.out.split().to_vec();
        self.absorb_bytes(slot, &bytes, resuming);
    }

    fn absorb_bytes(&mut self, slot: usize, bytes: &[u8], resuming: bool) {
        let protocol = self.conns[slot].as_ref().unwrap().c.protocol;
        let mut at = 0;
        while at < bytes.len() {
            let (p, n) = match mote_codec::decode(&bytes[at..], protocol, u32::MAX) {
                Ok(Some(x)) => x,
                Ok(None) => panic!("{}: truncated output {:?}", self.ids[slot], &bytes[at..]),
                Err(e) => panic!(
                    "{}: output does not decode as {protocol:?}: {e} ({:?})",
                    self.ids[slot],
                    &bytes[at..]
                ),
            };
            let conn = self.conns[slot].as_ref().unwrap();
            assert!(
                n <= conn.max_packet as usize,
                "{}: a {n}-byte packet over its Maximum Packet Size {}",
                self.ids[slot],
                conn.max_packet
            );
            self.read(slot, &p, resuming);
            at += n;
        }
    }

    /// One packet the client read.
    fn read(&mut self, slot: usize, p: &Packet<'_>, resuming: bool) {
        let id = self.ids[slot].clone();
        let conn = self.conns[slot].as_mut().unwrap();
        let reply = match p {
            Packet::Publish(p) => return self.delivered(slot, p, resuming),
            Packet::PubAck(a) => Out::PubAck(a.packet_id, a.reason),
            Packet::PubRec(a) => Out::PubRec(a.packet_id, a.reason),
            Packet::PubComp(a) => Out::PubComp(a.packet_id, a.reason),
            Packet::PubRel(a) => {
                let f = self.sess[slot].out.get(&a.packet_id);
                if self.exact && conn.v5 && a.reason == 0 {
                    assert!(
                        f.is_some_and(|f| f.qos == QoS::ExactlyOnce && f.released),
                        "{id}: PUBREL {} for no released QoS 2 flow ({f:?})",
                        a.packet_id
                    );
                }
                if a.reason == 0 && (f.is_some() || !self.exact) {
                    conn.rels.push(a.packet_id);
                }
                return;
            }
            Packet::SubAck(a) => {
                // The subscriptions hold from the SUBACK on: retained messages follow it.
                if let Some((pid, filters)) = conn.pending_sub.take() {
                    assert_eq!(a.packet_id, pid, "{id}: SUBACK packet id");
                    assert_eq!(a.codes.len(), filters.len(), "one SUBACK code per filter");
                    for (f, &code) in filters.iter().zip(a.codes) {
                        assert!(
                            code == f.options.qos as u8 || !self.exact,
                            "{id}: SUBACK for {} granted as asked, not {code:#x}",
                            f.filter
                        );
                        self.sess[slot]
                            .subs
                            .insert(f.filter.clone(), (f.options, true));
                        self.subscribed(slot, &f.filter, f);
                    }
                }
                Out::SubAck(a.packet_id, a.codes.to_vec())
            }
            Packet::UnsubAck(a) => Out::UnsubAck(a.packet_id, a.codes.to_vec()),
            Packet::PingResp => Out::PingResp,
            Packet::Disconnect(d) => {
                assert!(conn.v5, "{id}: DISCONNECT sent to a 3.1.1 client");
                Out::Disconnect(d.reason)
            }
            other => panic!("{id}: the broker sent {other:?}"),
        };
        self.conns[slot].as_mut().unwrap().replies.push(reply);
    }

    /// A PUBLISH the client read: topic alias, identity, eligibility, packet id.
    fn delivered(&mut self, slot: usize, p: &Publish<'_>, resuming: bool) {
        let id = self.ids[slot].clone();
        let step = self.step;
        let conn = self.conns[slot].as_mut().unwrap();
        let mut topic = p.topic.to_owned();
        match p.properties.topic_alias() {
            Some(a) => {
                assert!(conn.v5, "{id}: topic alias to a 3.1.1 client");
                assert!(
                    a >= 1 && a <= conn.alias_max,
                    "{id}: topic alias {a} outside 1..={}",
                    conn.alias_max
                );
                if topic.is_empty() {
                    topic = match conn.aliases.get(&a) {
                        Some(t) => t.clone(),
                        None => panic!("{id}: PUBLISH with unknown topic alias {a}"),
                    };
                } else {
                    conn.aliases.insert(a, topic.clone());
                }
            }
            None => assert!(!topic.is_empty(), "{id}: PUBLISH without a topic"),
        }
        assert!(topic::is_valid_name(&topic), "{id}: topic {topic:?}");
        if !self.exact {
            return self.delivered_unknown(slot, p, &topic, resuming);
        }
        let key = (topic.clone(), p.payload.to_vec());
        let Some(candidates) = self.by_content.get(&key) else {
            panic!(
                "{id}: received a message nobody published: {topic:?} {:?}",
                String::from_utf8_lossy(p.payload)
            );
        };
        let gen = self.sess[slot].gen;
        // Several only for empty payloads (retained deletes): any that fits will do.
        let fits = |m: &usize| {
            self.msgs[*m].eligible.contains(&(slot, gen)) && p.qos <= self.msgs[*m].max_qos
        };
        // A re-send is the message in flight with its id.
        let inflight = self.sess[slot]
            .out
            .get(&p.packet_id)
            .and_then(|f| f.msg)
            .filter(|m| p.qos != QoS::AtMostOnce && candidates.contains(m) && fits(m));
        let now = self.now;
        let live = |m: &usize| fits(m) && self.msgs[*m].expires_at.map_or(true, |t| t > now);
        let msg = inflight
            .or_else(|| candidates.iter().rev().copied().find(live))
            .or_else(|| candidates.iter().rev().copied().find(fits))
            .or_else(|| {
                candidates
                    .iter()
                    .copied()
                    .find(|&m| self.msgs[m].eligible.contains(&(slot, gen)))
            });
        let Some(msg) = msg else {
            panic!(
                "{id} (session {gen}): received {topic:?} {:?} (message {:?}) without a \
                 matching subscription; its subscriptions: {:?}",
                String::from_utf8_lossy(p.payload),
                candidates,
                self.sess[slot].subs
            );
        };
        let born = &self.msgs[msg];
        let sess = &self.sess[slot];
        // Subscription Identifiers: those of matching subscriptions only (MQTT-3.3.4-3).
        for sid in p.properties.subscription_identifiers().iter() {
            let ok = sess
                .sub_ids
                .iter()
                .any(|(f, i)| *i == sid && sub_matches(f, &topic));
            assert!(
                ok,
                "{id}: {topic} carries Subscription Identifier {sid} of no matching \
                 subscription ({:?}; granted {:?}; message {msg}: {born:?})",
                sess.sub_ids, sess.granted,
            );
        }
        // At most the QoS granted to a matching subscription (MQTT-3.8.4-8).
        let granted = sess
            .granted
            .iter()
            .filter(|(f, _)| sub_matches(f, &topic))
            .map(|(_, q)| *q)
            .max();
        assert!(
            granted.is_some_and(|g| p.qos <= g),
            "{id}: {topic} delivered at {:?} above the QoS granted ({granted:?})",
            p.qos
        );
        if let Some(w) = self.wills.iter().find(|w| w.msg == msg) {
            let ok = match w.at {
                WillAt::Due(t) => t <= self.now,
                WillAt::Fired | WillAt::Unknown => true,
                WillAt::Alive | WillAt::Disarmed => false,
            };
            assert!(
                ok,
                "{id}: received the will {topic:?} of {} while it is {:?} (now {:?})",
                self.ids[w.slot],
                w.at,
                self.now - self.t0
            );
            self.stats.wills_received += 1;
        }
        let born = &self.msgs[msg];
        assert!(
            p.qos <= born.max_qos,
            "{id}: {topic} delivered at {:?} above its {:?}",
            p.qos,
            born.max_qos
        );
        let conn = self.conns[slot].as_mut().unwrap();
        conn.received.insert(msg);
        self.sess[slot].got.insert(msg);
        self.stats.publishes_received += 1;
        if p.qos == QoS::AtMostOnce {
            assert_eq!(p.packet_id, 0);
            return;
        }
        assert_ne!(
            p.packet_id, 0,
            "{id}: QoS {:?} PUBLISH with packet id 0",
            p.qos
        );
        let s = &mut self.sess[slot];
        match s.out.get(&p.packet_id) {
            Some(f) => {
                assert!(
                    resuming && p.dup && !f.released && f.msg == Some(msg) && f.qos == p.qos,
                    "{id}: packet id {} reused while in flight (step {step}): in flight \
                     {f:?}, now message {msg} {:?} dup {} resuming {resuming}",
                    p.packet_id,
                    p.qos,
                    p.dup
                );
            }
            None => {
                s.out.insert(
                    p.packet_id,
                    OutFlight {
                        msg: Some(msg),
                        qos: p.qos,
                        released: false,
                        queue: topic.starts_with("$queue/"),
                    },
                );
                // A new QoS 1/2 PUBLISH only while fewer than the client's Receive
                // Maximum are unacknowledged (MQTT-3.3.4-9), and the broker's own window.
                assert!(
                    s.out.len() <= usize::from(conn.window),
                    "{id}: {} QoS 1/2 PUBLISHes unacknowledged, window {}",
                    s.out.len(),
                    conn.window
                );
                // An expired message is not sent as a new PUBLISH (v5 §3.3.2.3.3).
                assert!(
                    born.expires_at.map_or(true, |t| t > self.now),
                    "{id}: message {msg} sent after it expired"
                );
            }
        }
        conn.unacked.push((p.packet_id, p.qos));
    }

    /// A PUBLISH the client read once the model no longer knows what was published: its
    /// packet id (0 for QoS 0; otherwise not 0, not in flight unless re-sent with DUP
    /// after a resumed CONNECT) and the window.
    fn delivered_unknown(&mut self, slot: usize, p: &Publish<'_>, topic: &str, resuming: bool) {
        let id = &self.ids[slot];
        self.stats.publishes_received += 1;
        if p.qos == QoS::AtMostOnce {
            assert_eq!(p.packet_id, 0, "{id}: QoS 0 PUBLISH with a packet id");
            return;
        }
        assert_ne!(p.packet_id, 0, "{id}: {:?} PUBLISH with packet id 0", p.qos);
        let conn = self.conns[slot].as_mut().unwrap();
        let s = &mut self.sess[slot];
        match s.out.get(&p.packet_id) {
            Some(f) => assert!(
                resuming && p.dup && !f.released && f.qos == p.qos,
                "{id}: packet id {} reused while in flight: in flight {f:?}, now {topic} {:?} \
                 dup {} resuming {resuming}",
                p.packet_id,
                p.qos,
                p.dup
            ),
            None => {
                s.out.insert(
                    p.packet_id,
                    OutFlight {
                        msg: None,
                        qos: p.qos,
                        released: false,
                        queue: topic.starts_with("$queue/"),
                    },
                );
                // A re-send after a resumed CONNECT the model had forgotten is not new:
                // the whole window of the old connection is sent again (MQTT-4.4.0-1).
                assert!(
                    (resuming && p.dup) || s.out.len() <= usize::from(conn.window),
                    "{id}: {} QoS 1/2 PUBLISHes unacknowledged, window {}",
                    s.out.len(),
                    conn.window
                );
            }
        }
        conn.unacked.push((p.packet_id, p.qos));
    }

    /// Takes the first reply `pick` accepts.
    fn reply(&mut self, slot: usize, pick: impl Fn(&Out) -> bool) -> Option<Out> {
        let conn = self.conns[slot].as_mut()?;
        let i = conn.replies.iter().position(pick)?;
        Some(conn.replies.remove(i))
    }

    // -----------------------------------------------------------------------------------
    // Links
    // -----------------------------------------------------------------------------------

    /// The link of `slot` ended as `end` (the core is told, the model follows).
    fn end_link(&mut self, slot: usize, end: End) {
        let Some(conn) = self.conns[slot].take() else {
            return;
        };
        let mut fx = Effects::default();
        self.core
            .disconnected(&conn.c.id, conn.c.conn, end, self.now, &mut fx);
        self.wills_ended(slot, conn.c.conn, end == End::Normal { will: false });
        self.forget_link(slot);
    }

    /// The connection `conn` of `slot` ended: its will is removed by DISCONNECT 0x00
    /// (MQTT-3.1.2-10), otherwise due after its delay or the session's end
    /// (v5 §3.1.3.2.2).
    fn wills_ended(&mut self, slot: usize, conn: u64, removed: bool) {
        let (now, expiry) = (self.now, self.sess[slot].expiry);
        for w in &mut self.wills {
            if w.slot == slot && w.conn == conn && w.at == WillAt::Alive {
                let delay = Duration::from_secs(u64::from(w.delay.min(expiry)));
                w.at = if removed {
                    WillAt::Disarmed
                } else {
                    WillAt::Due(now + delay)
                };
            }
        }
    }

    /// `slot` connected again: a will not yet due is cancelled by a resumed session and
    /// published by the end of the old one (MQTT 5 §3.1.2.5, §3.1.3.2.2).
    fn wills_reconnected(&mut self, slot: usize, present: bool) {
        let now = self.now;
        for w in &mut self.wills {
            match w.at {
                WillAt::Due(t) if w.slot == slot && now < t => {
                    w.at = if present {
                        WillAt::Disarmed
                    } else {
                        WillAt::Fired
                    };
                }
                _ => {}
            }
        }
    }

    /// What the model drops when a link ends (its session stays as it is): work-queue
    /// jobs in flight go back to their queue. Once the model is not exact, every flight
    /// is forgotten: the core may have taken back any of them (jobs of declared queues,
    /// stream deliveries), and a packet id the model forgets is only checked less.
    fn forget_link(&mut self, slot: usize) {
        let exact = self.exact;
        let s = &mut self.sess[slot];
        if exact {
            s.out.retain(|_, f| !f.queue);
        } else {
            s.out.clear();
        }
        s.offline_at = Some(self.now);
    }

    /// Whether CONNECT (Clean Start 0) must find a session, where the model is sure.
    fn expect_present(&self, slot: usize) -> Option<bool> {
        let s = &self.sess[slot];
        if s.unsure {
            return None;
        }
        if self.conns[slot].is_some() {
            // A takeover: a session that lived only as long as its connection ends first.
            return Some(s.expiry > 0);
        }
        match s.offline_at {
            None => Some(false),
            Some(_) if s.expiry == u32::MAX => Some(true),
            Some(t) => Some(self.now < t + Duration::from_secs(u64::from(s.expiry))),
        }
    }

    /// Messages born now: who may get them.
    /// A message `from` (a client slot; None for a will) publishes now: who may get it.
    /// No Local subscriptions of the publisher do not count (MQTT-3.8.3-3).
    fn eligible_now(&self, topic: &str, from: Option<usize>) -> HashSet<(usize, u32)> {
        let mut e = HashSet::new();
        if topic.starts_with("$SYS") {
            return e;
        }
        for (i, s) in self.sess.iter().enumerate() {
            let counts = |(f, (o, _)): (&String, &(SubOptions, bool))| {
                sub_matches(f, topic) && !(o.no_local && is_plain(f) && from == Some(i))
            };
            if s.subs.iter().any(counts) {
                e.insert((i, s.gen));
            }
        }
        e
    }

    fn born(
        &mut self,
        topic: &str,
        payload: &[u8],
        max_qos: QoS,
        late: Late,
        from: Option<usize>,
    ) -> usize {
        let eligible = self.eligible_now(topic, from);
        let groups = self
            .sess
            .iter()
            .flat_map(|s| s.subs.keys())
            .filter(|f| f.starts_with("$share/") && sub_matches(f, topic))
            .cloned()
            .collect();
        let i = self.msgs.len();
        self.msgs.push(Born {
            topic: topic.to_owned(),
            max_qos,
            late,
            eligible,
            step: self.step,
            expires_at: None,
            groups,
        });
        self.by_content
            .entry((topic.to_owned(), payload.to_vec()))
            .or_default()
            .push(i);
        i
    }

    /// `slot`'s session now holds `filter`: messages that may still reach it.
    ///
    /// Retained messages only as its Retain Handling allows (v5 §3.8.3.1: 0 always, 1
    /// if the subscription did not exist before this SUBSCRIBE, 2 never; 3.1.1 always),
    /// never to a shared subscription (v5 §4.8.2); a shared subscription only gets what
    /// was routed to its group.
    fn subscribed(&mut self, slot: usize, filter: &str, sub: &PendingSub) {
        let key = (slot, self.sess[slot].gen);
        if let Some(id) = sub.id {
            self.sess[slot].sub_ids.insert((filter.to_owned(), id));
        }
        let g = self.sess[slot]
            .granted
            .entry(filter.to_owned())
            .or_insert(QoS::AtMostOnce);
        *g = (*g).max(sub.options.qos);
        let retained_ok = !sub.v5
            || match sub.options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendIfNew => !sub.existed,
                RetainHandling::DoNotSend => false,
            };
        for (i, m) in self.msgs.iter_mut().enumerate() {
            if !sub_matches(filter, &m.topic) {
                continue;
            }
            let late = m.late == Late::Always
                || filter == QUEUE
                || m.groups.contains(filter)
                || (is_plain(filter) && retained_ok && self.retained.get(&m.topic) == Some(&i));
            if late {
                m.eligible.insert(key);
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // Operations
    // -----------------------------------------------------------------------------------

    /// CONNECT from `slot` (a takeover when it is connected); `resume` asks for the
    /// session (Clean Start 0, no will).
    fn op_connect(&mut self, slot: usize, resume: bool) {
        let v5 = self.rng.pct(50);
        let protocol = if v5 { Protocol::V5 } else { Protocol::V311 };
        let clean = !resume && self.rng.pct(40);
        let expiry = if v5 {
            self.rng
                .pick(&[None, Some(0), Some(5), Some(60), Some(3600), Some(u32::MAX)])
        } else {
            None
        };
        let recv_max = self.rng.pick(&[None, Some(1), Some(2), Some(10)]);
        let alias_max = if v5 {
            self.rng.pick(&[0u16, 0, 2, 10])
        } else {
            0
        };
        let max_packet = self.rng.pick(&[None, None, Some(2048u32)]);
        let keep_alive = if resume {
            0
        } else {
            self.rng.pick(&[0u16, 0, 10, 60, 600])
        };
        let props = PropValues {
            session_expiry_interval: expiry,
            receive_maximum: recv_max,
            topic_alias_maximum: (alias_max > 0).then_some(alias_max),
            maximum_packet_size: max_packet,
            ..PropValues::default()
        };
        let will_props = PropValues {
            will_delay_interval: self.rng.pick(&[None, Some(0), Some(5), Some(120)]),
            message_expiry_interval: self.rng.pick(&[None, None, Some(30)]),
            ..PropValues::default()
        };
        let will_topic = self.rng.pick(TOPICS);
        let will_payload = format!("w{}", self.msgs.len()).into_bytes();
        let will = (!resume && self.rng.pct(30)).then(|| Will {
            topic: will_topic,
            payload: &will_payload,
            qos: self.rng.qos(),
            retain: self.rng.pct(30),
            properties: if v5 {
                Properties::Values(&will_props)
            } else {
                Properties::default()
            },
        });
        let id = self.ids[slot].clone();
        let c = Connect {
            protocol,
            clean_start: clean,
            keep_alive,
            properties: if v5 {
                Properties::Values(&props)
            } else {
                Properties::default()
            },
            client_id: &id,
            will,
            username: None,
            password: None,
        };
        self.note(format!(
            "CONNECT {id} {protocol:?} clean={clean} expiry={expiry:?} recv_max={recv_max:?} \
             alias_max={alias_max} max_packet={max_packet:?} ka={keep_alive} will={:?}",
            will.map(|w| (w.topic, w.qos, w.retain, will_props.will_delay_interval))
        ));
        let mut buf = BytesMut::new();
        Packet::Connect(c)
            .encode_to(protocol, &mut buf)
            .expect("CONNECT encodes");
        let (decoded, _) = mote_codec::decode(&buf, protocol, self.cfg.max_connect_packet_size)
            .expect("our CONNECT decodes")
            .expect("a whole CONNECT");
        let Packet::Connect(decoded) = decoded else {
            panic!("not a CONNECT")
        };
        let expect = if clean {
            Some(false)
        } else if self.exact {
            self.expect_present(slot)
        } else {
            // Raw frames may have ended the session (a DISCONNECT's Session Expiry 0).
            None
        };
        self.leave_other_session(slot, &id);
        // Through the harness's helper, as the other core tests connect.
        let (client, out) = connect_with(&mut self.core, &decoded, self.now);
        let client = client.expect("CONNECT refused");
        let asked = Asked {
            v5,
            clean,
            expiry,
            recv_max,
            alias_max,
            max_packet,
            keep_alive,
            will: will.map(|w| (w.topic, w.payload, w.qos, will_props.will_delay_interval)),
        };
        self.connected(slot, client, &out, &asked, expect);
    }

    /// A live connection of `slot` to a session other than `id`'s (one the broker named)
    /// is dropped before `slot` connects as `id`: the slot is one client at a time.
    fn leave_other_session(&mut self, slot: usize, id: &str) {
        if self.conns[slot]
            .as_ref()
            .is_some_and(|c| id.is_empty() || *c.c.id != *id)
        {
            self.note(format!(
                "link lost {} (connecting as {id:?})",
                self.ids[slot]
            ));
            self.end_link(slot, End::Abnormal);
        }
    }

    /// `client` of `slot` connected, asking for `asked`; `out` holds the CONNACK and what
    /// followed it. `expect`: the Session Present the model is sure of.
    fn connected(
        &mut self,
        slot: usize,
        client: Client,
        out: &[u8],
        asked: &Asked<'_>,
        expect: Option<bool>,
    ) {
        let id = self.ids[slot].clone();
        let Asked {
            v5,
            clean,
            expiry,
            recv_max,
            alias_max,
            max_packet,
            keep_alive,
            will,
        } = *asked;
        let protocol = client.protocol;
        let taking_over = self.conns[slot].is_some();
        self.stats.takeovers += u64::from(taking_over);
        if taking_over {
            // The core detached the old link; the runtime only closes its socket.
            let old = self.conns[slot].take().unwrap();
            assert_eq!(
                old.c.kick.get(),
                reason::SESSION_TAKEN_OVER,
                "{id}: the old link is kicked"
            );
            self.wills_ended(slot, old.c.conn, false);
            self.forget_link(slot);
            if self.stale.len() < 4 {
                self.stale.push(old.c);
            }
        }
        // The CONNACK is not held to the client's Maximum Packet Size: the limits it
        // announces cannot be left out, and a client that allows less cannot connect.
        let (p, n) = mote_codec::decode(out, protocol, u32::MAX)
            .unwrap()
            .unwrap();
        let Packet::ConnAck(ack) = p else {
            panic!("{id}: CONNECT answered with {p:?}")
        };
        assert_eq!(ack.code, 0, "{id}: CONNACK code");
        if let Some(want) = expect {
            assert_eq!(
                ack.session_present, want,
                "{id}: Session Present (clean={clean}, model {:?})",
                self.sess[slot]
            );
        }
        self.stats.resumed += u64::from(ack.session_present);
        self.wills_reconnected(slot, ack.session_present);
        let s = &mut self.sess[slot];
        if !ack.session_present || s.client != *client.id {
            let next_pid = s.next_pid;
            *s = Sess {
                client: client.id.to_string(),
                gen: s.gen + 1,
                next_pid,
                ..Sess::default()
            };
        }
        s.unsure = false;
        s.offline_at = None;
        s.expiry = match expiry {
            _ if !v5 && clean => 0,
            _ if !v5 => u32::MAX,
            e => e.unwrap_or(0).min(self.cfg.max_session_expiry),
        };
        if let Some((will_topic, will_payload, qos, delay)) = will {
            // A will to a work queue is a job: kept as QoS 1 at least (docs/queues.md).
            let qos = if will_topic == QUEUE {
                qos.max(QoS::AtLeastOnce)
            } else {
                qos
            };
            let msg = self.born(will_topic, will_payload, qos, Late::Always, None);
            self.wills.push(WillTrack {
                msg,
                slot,
                conn: client.conn,
                delay: if v5 { delay.unwrap_or(0) } else { 0 },
                at: WillAt::Alive,
            });
        }
        let keep_alive = self.keep_alive_of(v5, keep_alive);
        self.conns[slot] = Some(Conn {
            c: client,
            v5,
            alias_max,
            aliases: HashMap::new(),
            my_aliases: HashMap::new(),
            max_packet: max_packet.unwrap_or(u32::MAX),
            window: recv_max
                .filter(|_| v5)
                .unwrap_or(u16::MAX)
                .min(self.cfg.max_inflight)
                .max(1),
            keep_alive,
            last_rx: self.now,
            unacked: Vec::new(),
            rels: Vec::new(),
            replies: Vec::new(),
            received: HashSet::new(),
            expect: Vec::new(),
            unsubscribed_at: None,
            pending_sub: None,
        });
        self.absorb_bytes(slot, &out[n..], ack.session_present);
    }

    /// The keep alive the runtime enforces for a CONNECT's `keep_alive` (the core caps
    /// a v5 one at `max_keepalive`, 0 included; `Accepted` is not visible through the
    /// harness's helper).
    fn keep_alive_of(&self, v5: bool, keep_alive: u16) -> u16 {
        let max = self.cfg.max_keepalive;
        if v5 && max > 0 && (keep_alive == 0 || keep_alive > max) {
            max
        } else {
            keep_alive
        }
    }

    /// A CONNECT the broker must refuse; nothing changes.
    fn op_refused_connect(&mut self) {
        let which = self.rng.below(3);
        let auth = PropValues {
            authentication_method: Some("SCRAM-SHA-1"),
            ..PropValues::default()
        };
        let (protocol, id, clean, props) = match which {
            0 => (Protocol::V311, "", false, Properties::default()),
            1 => (Protocol::V5, "$queue/q1", true, Properties::default()),
            _ => (Protocol::V5, "c0", true, Properties::Values(&auth)),
        };
        self.note(format!(
            "CONNECT refused: {protocol:?} {id:?} clean={clean}"
        ));
        let c = connect_packet(protocol, id, clean, props);
        let (acc, out) = connect_with(&mut self.core, &c, self.now);
        assert!(acc.is_none(), "accepted {c:?}");
        let (p, n) = mote_codec::decode(&out, protocol, u32::MAX)
            .unwrap()
            .unwrap();
        assert_eq!(n, out.len(), "only a CONNACK");
        let Packet::ConnAck(a) = p else {
            panic!("{p:?}")
        };
        assert!(a.code != 0 && !a.session_present);
    }

    fn op_disconnect(&mut self, slot: usize) {
        let v5 = self.conns[slot].as_ref().unwrap().v5;
        let with_will = v5 && self.rng.pct(30);
        let expiry = if v5 {
            self.rng.pick(&[None, None, Some(0), Some(30)])
        } else {
            None
        };
        let props = PropValues {
            session_expiry_interval: expiry,
            ..PropValues::default()
        };
        let d = Disconnect {
            reason: if with_will {
                reason::DISCONNECT_WITH_WILL
            } else {
                0
            },
            properties: Properties::Values(&props),
        };
        self.note(format!(
            "DISCONNECT {} will={with_will} expiry={expiry:?}",
            self.ids[slot]
        ));
        let old = self.sess[slot].expiry;
        let raising = matches!(expiry, Some(e) if e > 0) && old == 0;
        if let (Some(e), false) = (expiry, raising) {
            self.sess[slot].expiry = e.min(self.cfg.max_session_expiry);
        }
        let r = self.send(slot, &Packet::Disconnect(d));
        if raising {
            assert_eq!(
                r,
                Sent::Handled(Err(Close::Error(reason::PROTOCOL_ERROR))),
                "raising Session Expiry from 0 at DISCONNECT (MQTT-3.14.2-2)"
            );
        } else {
            assert_eq!(
                r,
                Sent::Handled(Err(Close::Disconnected { will: with_will }))
            );
        }
    }

    fn op_link_loss(&mut self, slot: usize) {
        self.note(format!("link lost {}", self.ids[slot]));
        self.end_link(slot, End::Abnormal);
    }

    fn options(&mut self, v5: bool) -> SubOptions {
        let mut o = SubOptions::qos(self.rng.qos());
        if v5 {
            o.no_local = self.rng.pct(15);
            o.retain_as_published = self.rng.pct(30);
            o.retain_handling = self.rng.pick(&[
                RetainHandling::SendAtSubscribe,
                RetainHandling::SendIfNew,
                RetainHandling::DoNotSend,
            ]);
        }
        o
    }

    fn op_subscribe(&mut self, slot: usize) {
        let v5 = self.conns[slot].as_ref().unwrap().v5;
        let n = 1 + self.rng.below(4);
        let mut filters: Vec<SubscribeFilter<'static>> = Vec::new();
        for _ in 0..n {
            let filter = self.rng.pick(FILTERS);
            let mut options = self.options(v5);
            // No Local on a shared subscription is a Protocol Error (MQTT-3.8.3-4): mostly
            // not asked for.
            if filter.starts_with("$share/") && !self.rng.pct(10) {
                options.no_local = false;
            }
            filters.push(SubscribeFilter { filter, options });
        }
        let sub_id = (v5 && self.rng.pct(30)).then(|| 1 + self.rng.below(100) as u32);
        let ids: Vec<u32> = sub_id.into_iter().collect();
        let pid = self.next_pid(slot);
        let props = PropValues {
            subscription_identifiers: PropList::Slice(&ids),
            ..PropValues::default()
        };
        let p = Packet::Subscribe(Subscribe {
            packet_id: pid,
            properties: Properties::Values(&props),
            filters: List::Slice(&filters),
        });
        self.note(format!(
            "SUBSCRIBE {} pid={pid} id={sub_id:?} {:?}",
            self.ids[slot],
            filters
                .iter()
                .map(|f| (f.filter, f.options.to_byte(Protocol::V5)))
                .collect::<Vec<_>>()
        ));
        let bad = filters
            .iter()
            .position(|f| f.filter.starts_with("$share/") && f.options.no_local);
        let pending: Vec<PendingSub> = filters
            .iter()
            .map(|f| PendingSub {
                filter: f.filter.to_owned(),
                options: f.options,
                existed: self.sess[slot].subs.contains_key(f.filter),
                id: sub_id,
                v5,
            })
            .collect();
        self.conns[slot].as_mut().unwrap().pending_sub = Some((pid, pending.clone()));
        let r = self.send(slot, &p);
        if let Some(bad) = bad {
            assert_eq!(
                r,
                Sent::Handled(Err(Close::Error(reason::PROTOCOL_ERROR))),
                "No Local on a shared subscription"
            );
            // The filters before it may have been applied: the model allows them.
            for f in &pending[..bad] {
                // The last options of a repeated filter win; one held before stays held.
                let s = &mut self.sess[slot];
                let held = s.subs.get(&f.filter).is_some_and(|x| x.1);
                s.subs.insert(f.filter.clone(), (f.options, held));
                self.subscribed(slot, &f.filter, f);
            }
            return;
        }
        assert_eq!(r, Sent::Handled(Ok(())), "SUBSCRIBE");
        let Some(Out::SubAck(got, codes)) = self.reply(slot, |o| matches!(o, Out::SubAck(..)))
        else {
            panic!("{}: no SUBACK", self.ids[slot])
        };
        assert_eq!(got, pid, "SUBACK packet id");
        assert_eq!(codes.len(), filters.len(), "one SUBACK code per filter");
    }

    fn op_unsubscribe(&mut self, slot: usize) {
        let v5 = self.conns[slot].as_ref().unwrap().v5;
        let n = 1 + self.rng.below(3);
        let held: Vec<String> = self.sess[slot].subs.keys().cloned().collect();
        let filters: Vec<String> = (0..n)
            .map(|_| {
                if !held.is_empty() && self.rng.pct(70) {
                    held[self.rng.below(held.len())].clone()
                } else {
                    self.rng.pick(FILTERS).to_owned()
                }
            })
            .collect();
        let refs: Vec<&str> = filters.iter().map(String::as_str).collect();
        let pid = self.next_pid(slot);
        let p = Packet::Unsubscribe(Unsubscribe {
            packet_id: pid,
            properties: Properties::default(),
            filters: List::Slice(&refs),
        });
        self.note(format!("UNSUBSCRIBE {} pid={pid} {refs:?}", self.ids[slot]));
        if !self.exact {
            // The core may take back any delivery in flight (queue jobs, stream entries).
            self.sess[slot].out.clear();
        }
        let r = self.send(slot, &p);
        assert_eq!(r, Sent::Handled(Ok(())), "UNSUBSCRIBE");
        let Some(Out::UnsubAck(got, codes)) = self.reply(slot, |o| matches!(o, Out::UnsubAck(..)))
        else {
            panic!("{}: no UNSUBACK", self.ids[slot])
        };
        assert_eq!(got, pid, "UNSUBACK packet id");
        if !self.exact {
            return;
        }
        let step = self.step;
        let conn = self.conns[slot].as_mut().unwrap();
        conn.unsubscribed_at = Some(step);
        self.sess[slot].unsub_at = Some(step);
        if v5 {
            assert_eq!(codes.len(), filters.len(), "one UNSUBACK code per filter");
        }
        let s = &mut self.sess[slot];
        for (i, f) in filters.iter().enumerate() {
            let had = s.subs.remove(f);
            if v5 {
                match had {
                    Some((_, true)) => assert_eq!(codes[i], 0, "UNSUBACK for held {f}"),
                    None => assert_eq!(codes[i], 0x11, "UNSUBACK for {f} not held"),
                    Some((_, false)) => {}
                }
            }
            if f == QUEUE && had.is_some() {
                s.out.retain(|_, fl| !fl.queue);
            }
        }
    }

    fn op_publish(&mut self, slot: usize) {
        let v5 = self.conns[slot].as_ref().unwrap().v5;
        let topic = if self.rng.pct(3) {
            "$SYS/x"
        } else {
            self.rng.pick(TOPICS)
        };
        let qos = self.rng.qos();
        let retain = self.rng.pct(25);
        let mut payload = if self.rng.pct(10) {
            Vec::new()
        } else {
            format!("m{}", self.msgs.len()).into_bytes()
        };
        let mut props = PropValues::default();
        let mut wire_topic = topic;
        let mut bad_pfi = false;
        if v5 {
            if self.rng.pct(10) {
                props.message_expiry_interval = Some(self.rng.pick(&[1, 30, 600]));
            }
            if self.rng.pct(20) {
                let alias = 1 + self.rng.below(3) as u16;
                let conn = self.conns[slot].as_mut().unwrap();
                props.topic_alias = Some(alias);
                if conn.my_aliases.get(&alias).map(String::as_str) == Some(topic)
                    && self.rng.pct(70)
                {
                    wire_topic = "";
                } else {
                    conn.my_aliases.insert(alias, topic.to_owned());
                }
            }
            if qos != QoS::AtMostOnce && !payload.is_empty() && self.rng.pct(4) {
                props.payload_format_indicator = Some(1);
                payload.insert(0, 0xFF);
                bad_pfi = true;
            }
        }
        let pid = if qos == QoS::AtMostOnce {
            0
        } else {
            self.next_pid(slot)
        };
        let p = Publish {
            dup: false,
            qos,
            retain,
            topic: wire_topic,
            packet_id: pid,
            properties: Properties::Values(&props),
            payload: &payload,
        };
        self.note(format!(
            "PUBLISH {} {topic} (wire {wire_topic:?}) {qos:?} pid={pid} retain={retain} \
             {:?} expiry={:?} alias={:?} bad_pfi={bad_pfi}",
            self.ids[slot],
            String::from_utf8_lossy(&payload),
            props.message_expiry_interval,
            props.topic_alias
        ));
        // Who must get it, if it is acknowledged.
        let gens: Vec<(usize, u64)> = self
            .alive()
            .into_iter()
            .filter(|&i| {
                !bad_pfi
                    && !topic.starts_with("$SYS")
                    && self.sess[i].subs.iter().any(|(f, (o, certain))| {
                        *certain
                            && is_plain(f)
                            && sub_matches(f, topic)
                            && !(o.no_local && i == slot)
                    })
            })
            .map(|i| (i, self.conns[i].as_ref().unwrap().c.conn))
            .collect();
        let msg = if bad_pfi || topic.starts_with("$SYS") {
            // Not routed: nobody may get it.
            let i = self.born(topic, &payload, qos, Late::Rerouted, Some(slot));
            self.msgs[i].eligible.clear();
            i
        } else {
            let max_qos = if topic == QUEUE {
                QoS::AtLeastOnce
            } else {
                qos
            };
            self.born(topic, &payload, max_qos, Late::Rerouted, Some(slot))
        };
        if let Some(e) = props.message_expiry_interval {
            self.msgs[msg].expires_at = Some(self.now + Duration::from_secs(u64::from(e)));
        }
        let r = self.send(slot, &Packet::Publish(p));
        if !self.exact {
            return;
        }
        assert_eq!(r, Sent::Handled(Ok(())), "PUBLISH");
        let acked = match qos {
            QoS::AtMostOnce => true,
            QoS::AtLeastOnce => {
                let a = self.reply(slot, |o| matches!(o, Out::PubAck(..)));
                let Some(Out::PubAck(id, code)) = a else {
                    panic!("{}: no PUBACK", self.ids[slot])
                };
                assert_eq!(id, pid, "PUBACK packet id");
                self.check_publish_reason(slot, code, bad_pfi, topic, &gens);
                code < 0x80
            }
            QoS::ExactlyOnce => {
                let a = self.reply(slot, |o| matches!(o, Out::PubRec(..)));
                let Some(Out::PubRec(id, code)) = a else {
                    panic!("{}: no PUBREC", self.ids[slot])
                };
                assert_eq!(id, pid, "PUBREC packet id");
                self.check_publish_reason(slot, code, bad_pfi, topic, &gens);
                if code < 0x80 {
                    self.sess[slot].held.push((pid, msg));
                }
                code < 0x80
            }
        };
        let routed = acked && !bad_pfi && !topic.starts_with("$SYS") && topic != QUEUE;
        if routed && retain {
            if payload.is_empty() {
                self.retained.remove(topic);
            } else {
                self.retained.insert(topic.to_owned(), msg);
            }
        }
        // Empty payloads (retained deletes) cannot be told apart on receipt: not counted.
        let liveness = routed
            && qos != QoS::AtMostOnce
            && props.message_expiry_interval.is_none()
            && !payload.is_empty();
        if liveness {
            // Sessions online or not whose subscriptions give it QoS 1/2: they keep it.
            for i in 0..self.sess.len() {
                let granted = self.sess[i]
                    .subs
                    .iter()
                    .filter(|(f, (o, certain))| {
                        *certain
                            && is_plain(f)
                            && sub_matches(f, topic)
                            && !(o.no_local && i == slot)
                    })
                    .map(|(_, (o, _))| o.qos)
                    .max();
                if granted.is_some_and(|g| g.min(qos) != QoS::AtMostOnce) {
                    self.sess[i].kept.push(msg);
                }
            }
            for (i, conn_id) in gens {
                if let Some(c) = self.conns[i].as_mut().filter(|c| c.c.conn == conn_id) {
                    c.expect.push(msg);
                }
            }
        }
    }

    /// The v5 reason of a PUBACK/PUBREC.
    fn check_publish_reason(
        &self,
        slot: usize,
        code: u8,
        bad_pfi: bool,
        topic: &str,
        gens: &[(usize, u64)],
    ) {
        if !self.conns[slot].as_ref().is_some_and(|c| c.v5) {
            assert_eq!(code, 0, "3.1.1 has no reason codes");
            return;
        }
        if bad_pfi {
            assert_eq!(
                code,
                reason::PAYLOAD_FORMAT_INVALID,
                "PUBLISH with invalid UTF-8"
            );
        } else if topic == QUEUE {
            assert!(
                matches!(code, 0 | reason::QUOTA_EXCEEDED),
                "enqueue: {code:#x}"
            );
        } else if !gens.is_empty() {
            assert_eq!(
                code, 0,
                "{topic}: 0x{code:02x} with online subscribers {gens:?}"
            );
        } else {
            assert!(
                matches!(code, 0 | reason::NO_MATCHING_SUBSCRIBERS),
                "{code:#x}"
            );
        }
    }

    /// Re-sends a held QoS 2 PUBLISH (DUP): acknowledged again, never delivered again.
    fn op_publish_dup(&mut self, slot: usize) {
        let held = self.sess[slot].held.clone();
        if held.is_empty() {
            return;
        }
        let (pid, msg) = held[self.rng.below(held.len())];
        let topic = self.msgs[msg].topic.clone();
        let payload = self
            .by_content
            .iter()
            .find(|(_, v)| v.contains(&msg))
            .map(|(k, _)| k.1.clone())
            .unwrap();
        if payload.first() == Some(&0xFF) {
            return;
        }
        self.note(format!("PUBLISH dup {} pid={pid} {topic}", self.ids[slot]));
        let p = Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: &topic,
            packet_id: pid,
            properties: Properties::default(),
            payload: &payload,
        };
        let r = self.send(slot, &Packet::Publish(p));
        if !self.exact {
            return;
        }
        assert_eq!(r, Sent::Handled(Ok(())));
        let a = self.reply(slot, |o| matches!(o, Out::PubRec(..)));
        assert!(
            matches!(a, Some(Out::PubRec(id, 0)) if id == pid),
            "{}: re-sent QoS 2 PUBLISH answered {a:?}",
            self.ids[slot]
        );
    }

    /// Acknowledges some of what the client holds: PUBACK, PUBREC, PUBCOMP, PUBREL.
    fn op_ack(&mut self, slot: usize, all: bool) {
        let mut sent_any = false;
        loop {
            let conn = self.conns[slot].as_ref().unwrap();
            let v5 = conn.v5;
            // One thing at a time: what was received first, then PUBRELs, then our own.
            let (p, what) = if let Some(&(id, qos)) = conn.unacked.first() {
                self.conns[slot].as_mut().unwrap().unacked.remove(0);
                match qos {
                    QoS::AtLeastOnce => {
                        // v5: a PUBACK with an error reason (a work queue takes the job
                        // back, or dead-letters it on 0x99).
                        let mut a = Ack::new(id);
                        if v5 && !all && self.rng.pct(5) {
                            a.reason = self.rng.pick(&[0x80, 0x99]);
                        }
                        (Packet::PubAck(a), "PUBACK")
                    }
                    _ => {
                        let mut a = Ack::new(id);
                        if v5 && !all && self.rng.pct(5) {
                            a.reason = 0x80;
                        }
                        (Packet::PubRec(a), "PUBREC")
                    }
                }
            } else if let Some(&id) = conn.rels.first() {
                self.conns[slot].as_mut().unwrap().rels.remove(0);
                (Packet::PubComp(Ack::new(id)), "PUBCOMP")
            } else if let Some(&(id, _)) = self.sess[slot].held.first() {
                self.sess[slot].held.remove(0);
                (Packet::PubRel(Ack::new(id)), "PUBREL")
            } else {
                break;
            };
            // The model follows the acknowledgement before the core answers (PUBREL).
            self.follow_ack(slot, &p);
            let id = match p {
                Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubComp(a) | Packet::PubRel(a) => {
                    a.packet_id
                }
                _ => 0,
            };
            self.note(format!("{what} {} {id}", self.ids[slot]));
            let r = self.send(slot, &p);
            assert_eq!(r, Sent::Handled(Ok(())), "{what}");
            if what == "PUBREL" && self.exact {
                let a = self.reply(slot, |o| matches!(o, Out::PubComp(..)));
                assert_eq!(a, Some(Out::PubComp(id, 0)), "PUBCOMP for our PUBREL");
            }
            sent_any = true;
            if !all && self.rng.pct(50) {
                break;
            }
        }
        let _ = sent_any;
    }

    /// The model follows an acknowledgement `slot` sends, as the session's outbound half
    /// takes it (`proto/session/outbound.rs`).
    fn follow_ack(&mut self, slot: usize, p: &Packet<'_>) {
        let s = &mut self.sess[slot];
        match p {
            Packet::PubAck(a)
                if s.out
                    .get(&a.packet_id)
                    .is_some_and(|f| f.qos == QoS::AtLeastOnce) =>
            {
                s.out.remove(&a.packet_id);
            }
            Packet::PubRec(a) => {
                if let Some(f) = s.out.get_mut(&a.packet_id) {
                    if f.qos == QoS::ExactlyOnce {
                        if a.reason >= 0x80 {
                            s.out.remove(&a.packet_id);
                        } else {
                            f.released = true;
                        }
                    }
                }
            }
            Packet::PubComp(a) if s.out.get(&a.packet_id).is_some_and(|f| f.released) => {
                s.out.remove(&a.packet_id);
            }
            _ => {}
        }
    }

    /// Acknowledgements for ids the client never got.
    fn op_wrong_ack(&mut self, slot: usize) {
        let v5 = self.conns[slot].as_ref().unwrap().v5;
        let id = self.rng.pick(&[1u16, 2, 3, 500, 65535]);
        let out = &self.sess[slot].out;
        let known = out.contains_key(&id);
        let which = self.rng.below(4);
        self.note(format!(
            "wrong ack {which} {} {id} known={known}",
            self.ids[slot]
        ));
        if known && which != 2 {
            // Would be a real acknowledgement.
            return;
        }
        let held = self.sess[slot].held.iter().any(|h| h.0 == id);
        let p = match which {
            0 => Packet::PubAck(Ack::new(id)),
            1 => Packet::PubRec(Ack::new(id)),
            2 => {
                if held {
                    return;
                }
                Packet::PubRel(Ack::new(id))
            }
            _ => Packet::PubComp(Ack::new(id)),
        };
        let r = self.send(slot, &p);
        assert_eq!(r, Sent::Handled(Ok(())), "{p:?}");
        if which == 2 && self.exact {
            let a = self.reply(slot, |o| matches!(o, Out::PubComp(..)));
            let want = if v5 {
                reason::PACKET_IDENTIFIER_NOT_FOUND
            } else {
                0
            };
            assert_eq!(
                a,
                Some(Out::PubComp(id, want)),
                "PUBCOMP for an unknown PUBREL"
            );
        }
    }

    fn op_ping(&mut self, slot: usize) {
        self.note(format!("PINGREQ {}", self.ids[slot]));
        let r = self.send(slot, &Packet::PingReq);
        assert_eq!(r, Sent::Handled(Ok(())));
        assert_eq!(
            self.reply(slot, |o| *o == Out::PingResp),
            Some(Out::PingResp)
        );
    }

    /// A packet the codec can carry but the broker must refuse by closing.
    fn op_bad(&mut self, slot: usize) {
        let v5 = self.conns[slot].as_ref().unwrap().v5;
        let which = self.rng.below(11);
        let sub_ids = [if which == 9 { 0 } else { 7u32 }];
        let with_id = PropValues {
            subscription_identifiers: PropList::Slice(&sub_ids),
            ..PropValues::default()
        };
        let alias = PropValues {
            topic_alias: Some(if which == 3 { 9 } else { 200 }),
            ..PropValues::default()
        };
        let connect = connect_packet(
            if v5 { Protocol::V5 } else { Protocol::V311 },
            "c0",
            true,
            Properties::default(),
        );
        let publish_fields = |topic| Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic,
            packet_id: 0,
            properties: Properties::default(),
            payload: b"bad",
        };
        let publish = |topic, props| {
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic,
                packet_id: 0,
                properties: props,
                payload: b"bad",
            })
        };
        let expiry = PropValues {
            session_expiry_interval: Some(60),
            ..PropValues::default()
        };
        let (p, want) = match which {
            // MQTT-3.1.0-2.
            0 => (Packet::Connect(connect), Some(reason::PROTOCOL_ERROR)),
            // MQTT-3.3.4-6.
            1 if v5 => (
                publish("a", Properties::Values(&with_id)),
                Some(reason::PROTOCOL_ERROR),
            ),
            // An alias never set (MQTT-3.3.2-7 / v5 §3.3.2.3.4).
            3 if v5
                && !self.conns[slot]
                    .as_ref()
                    .unwrap()
                    .my_aliases
                    .contains_key(&9) =>
            {
                (
                    publish("", Properties::Values(&alias)),
                    Some(reason::PROTOCOL_ERROR),
                )
            }
            // Above the Topic Alias Maximum.
            4 if v5 => (
                publish("a", Properties::Values(&alias)),
                Some(reason::TOPIC_ALIAS_INVALID),
            ),
            // Packets only a server sends.
            5 => (Packet::PingResp, Some(reason::PROTOCOL_ERROR)),
            6 if v5 => (
                Packet::Auth(Disconnect::new(0x18)),
                Some(reason::PROTOCOL_ERROR),
            ),
            // Raising Session Expiry from 0 at DISCONNECT (MQTT-3.14.2-2).
            7 if v5 && self.sess[slot].expiry == 0 => (
                Packet::Disconnect(Disconnect {
                    reason: 0,
                    properties: Properties::Values(&expiry),
                }),
                Some(reason::PROTOCOL_ERROR),
            ),
            // Packet id 0 on a QoS 1 PUBLISH and on SUBSCRIBE (MQTT-2.2.1-3): the
            // decoder refuses them.
            8 => (
                Packet::Publish(Publish {
                    qos: QoS::AtLeastOnce,
                    ..publish_fields("a")
                }),
                None,
            ),
            9 | 10 if v5 || which == 10 => (
                Packet::Subscribe(Subscribe {
                    packet_id: if which == 10 { 0 } else { 1 },
                    // Subscription Identifier 0 is a Protocol Error (v5 §3.8.2.1.2).
                    properties: Properties::Values(&with_id),
                    filters: List::Slice(&[SubscribeFilter {
                        filter: "a",
                        options: SubOptions::qos(QoS::AtMostOnce),
                    }]),
                }),
                None,
            ),
            // A wildcard in a topic name: the decoder refuses it.
            _ => (publish("a/+", Properties::default()), None),
        };
        self.note(format!("bad {which} {}: {p:?}", self.ids[slot]));
        let r = self.send(slot, &p);
        if !self.exact {
            // Raw frames may have set the topic alias this relies on.
            return;
        }
        match (r, want) {
            (Sent::Malformed(_) | Sent::Unencodable, _) => {}
            (Sent::Handled(Err(Close::Error(got))), Some(want)) => {
                assert_eq!(got, want, "{p:?}");
            }
            (Sent::Handled(Err(Close::Error(_))), None) => {}
            (other, _) => panic!("{}: {p:?} gave {other:?}", self.ids[slot]),
        }
    }

    /// A connection that was taken over: the core must refuse it without harm.
    fn op_stale(&mut self) {
        if self.stale.is_empty() {
            return;
        }
        let i = self.rng.below(self.stale.len());
        let which = self.rng.below(3);
        let now = self.now;
        let mut c = self.stale.swap_remove(i);
        self.note(format!("stale {} conn {} op {which}", c.id, c.conn));
        let mut fx = Effects::default();
        match which {
            0 => {
                let r = self
                    .core
                    .handle(&c.id, c.conn, &Packet::PingReq, now, &mut c.out, &mut fx);
                assert_eq!(r, Err(Close::TakenOver), "a taken-over connection");
            }
            1 => {
                let mut outbox = crate::proto::session::Outbox::default();
                let r = self
                    .core
                    .drain_deferred(&c.id, c.conn, now, &mut c.out, &mut outbox);
                assert_eq!(r, Err(Close::TakenOver), "a taken-over connection drains");
                assert!(
                    outbox.is_empty(),
                    "nothing staged for a taken-over connection"
                );
            }
            _ => self
                .core
                .disconnected(&c.id, c.conn, End::Abnormal, now, &mut fx),
        }
        assert!(
            c.out.is_empty(),
            "nothing written for a taken-over connection"
        );
    }

    /// Moves virtual time by `by`, firing the core's timers and the clients' keep-alive
    /// deadlines in time order, as the runtime's ticker and connection tasks do.
    fn advance(&mut self, by: Duration) {
        let to = self.now + by;
        self.note(format!("advance {by:?}"));
        for _ in 0..10_000 {
            let ka = self
                .alive()
                .into_iter()
                .filter_map(|i| {
                    let c = self.conns[i].as_ref().unwrap();
                    (c.keep_alive > 0).then(|| {
                        let d = Duration::from_millis(u64::from(c.keep_alive) * 1500);
                        (c.last_rx + d, i)
                    })
                })
                .min();
            let timer = self.core.poll_timeout();
            match (ka, timer) {
                (Some((t, i)), tm) if t <= to && tm.map_or(true, |tm| t <= tm) => {
                    self.now = self.now.max(t);
                    self.note(format!("keep alive of {} expired", self.ids[i]));
                    self.end_link(i, End::Abnormal);
                }
                (_, Some(t)) if t <= to => {
                    self.now = self.now.max(t);
                    self.core.handle_timeout(self.now, &mut Effects::default());
                }
                _ => break,
            }
        }
        self.now = to;
        if self.core.poll_timeout().is_some_and(|t| t <= to) {
            self.core.handle_timeout(to, &mut Effects::default());
        }
    }

    /// The broker process dies: nothing after the last durable record survives; the
    /// core is rebuilt from the log.
    fn crash(&mut self) {
        let Some(journal) = self.journal.take() else {
            return;
        };
        self.note("CRASH".to_owned());
        self.stats.crashes += 1;
        for w in &mut self.wills {
            if matches!(w.at, WillAt::Alive | WillAt::Due(_)) {
                w.at = WillAt::Unknown;
            }
        }
        self.compaction = None;
        let records = journal.surviving();
        drop(journal);
        self.stale.clear();
        for slot in 0..self.conns.len() {
            if self.conns[slot].take().is_some() {
                self.forget_link(slot);
            }
            let s = &mut self.sess[slot];
            // Held QoS 2 ids survive in the store; ours are kept to release them later.
            s.unsure = true;
        }
        let clock = self.clock();
        let shards = self.core.shard_count();
        let (core, journal) = recover(&self.cfg, shards, records, &self.streams, clock, self.now);
        self.core = core;
        self.journal = Some(journal);
    }

    /// Compaction in steps, as the runtime does it beside the core.
    fn op_compact(&mut self) {
        if self.journal.is_none() {
            return;
        }
        match self.compaction.take() {
            None => {
                self.note("compaction begins".to_owned());
                self.compaction = self.core.begin_compaction(self.now);
            }
            Some(mut c) => {
                let n = 1 + self.rng.below(3);
                if self.core.copy_retained(&mut c, n) {
                    self.note("compaction written".to_owned());
                    self.stats.compactions += 1;
                    let bytes = c.run();
                    self.core.compaction_done(bytes);
                } else {
                    self.note(format!("compaction copies {n} retained"));
                    self.compaction = Some(c);
                }
            }
        }
    }

    /// The runtime closes a connection the core kicked (slow consumer).
    fn kicks(&mut self) {
        for slot in self.alive() {
            let k = self.conns[slot].as_ref().unwrap().c.kick.get();
            if k != 0 {
                self.note(format!("{} kicked with {k:#x}", self.ids[slot]));
                self.end_link(slot, End::Abnormal);
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // Raw frames
    // -----------------------------------------------------------------------------------

    /// Bytes a client sends: as many as the source gives, or a template frame with a
    /// few bytes changed.
    fn raw_or_mutated(&mut self, template: impl FnOnce(&mut World) -> Vec<u8>) -> Vec<u8> {
        if self.rng.pct(20) {
            let n = self.rng.below(256);
            return self.rng.bytes(n);
        }
        let mut b = template(self);
        for _ in 0..self.rng.below(4) {
            if b.is_empty() {
                break;
            }
            let at = self.rng.below(b.len());
            match self.rng.below(6) {
                0 | 1 => b[at] = self.rng.below(256) as u8,
                2 => b[at] ^= 1 << self.rng.below(8),
                3 => b.insert(at, self.rng.below(256) as u8),
                4 => {
                    b.remove(at);
                }
                _ => b.truncate(at),
            }
        }
        b
    }

    /// A CONNECT from raw bytes on a new connection of `slot`, read as the connection
    /// task reads the first packet (a CONNECT within the pre-CONNECT limit, decoded as
    /// any version). Its client id is the slot's (a takeover when it is connected), or
    /// empty, for the broker to name one.
    fn op_raw_connect(&mut self, slot: usize) {
        let bytes = self.raw_or_mutated(|w| w.connect_template(slot));
        self.note(format!("raw CONNECT {} {bytes:02x?}", self.ids[slot]));
        let limit = self
            .cfg
            .max_connect_packet_size
            .min(self.cfg.max_packet_size);
        if bytes.first().is_some_and(|b| b >> 4 != 1) {
            return;
        }
        let h = match check(&bytes, limit) {
            Ok(Some(h)) if bytes.len() >= h.frame_len() => h,
            _ => return,
        };
        let body = &bytes[h.header_len..h.frame_len()];
        let Ok(Packet::Connect(mut c)) = decode_body(&h, body, Protocol::V5) else {
            return;
        };
        let id = self.ids[slot].clone();
        if !c.client_id.is_empty() {
            c.client_id = &id;
        }
        self.note(format!("raw CONNECT {}: {c:?}", self.ids[slot]));
        self.exact = false;
        self.stats.raw_handled += 1;
        self.leave_other_session(slot, c.client_id);
        let (client, out) = connect_with(&mut self.core, &c, self.now);
        let Some(client) = client else {
            // Refused: a CONNACK saying why, and nothing else.
            let (p, n) = mote_codec::decode(&out, c.protocol, u32::MAX)
                .unwrap()
                .unwrap();
            assert_eq!(n, out.len(), "{id}: a refused CONNECT gets only a CONNACK");
            assert!(
                matches!(p, Packet::ConnAck(a) if a.code != 0 && !a.session_present),
                "{id}: a refused CONNECT answered with {p:?}"
            );
            return;
        };
        let props = c.properties;
        let asked = Asked {
            v5: c.protocol.is_v5(),
            clean: c.clean_start,
            expiry: props.session_expiry_interval(),
            recv_max: props.receive_maximum(),
            alias_max: props.topic_alias_maximum().unwrap_or(0),
            max_packet: props.maximum_packet_size(),
            keep_alive: c.keep_alive,
            will: None,
        };
        self.connected(slot, client, &out, &asked, None);
    }

    /// Raw bytes from `slot`'s client on its connection.
    fn op_raw(&mut self, slot: usize) {
        let protocol = self.conns[slot].as_ref().unwrap().c.protocol;
        let mut bytes = Vec::new();
        for _ in 0..1 + self.rng.below(2) {
            let b = self.raw_or_mutated(|w| w.template(slot, protocol));
            bytes.extend_from_slice(&b);
        }
        self.note(format!("raw {} {bytes:02x?}", self.ids[slot]));
        self.feed(slot, &bytes);
    }

    /// `bytes` from `slot`'s client read as the connection task reads them: each
    /// complete frame within the Maximum Packet Size decoded and handed to the core,
    /// until one is refused (the link ends) or the bytes end inside a frame (the link
    /// is lost there).
    fn feed(&mut self, slot: usize, bytes: &[u8]) {
        let max = self.cfg.max_packet_size;
        let mut at = 0;
        while at < bytes.len() {
            let Some(conn) = self.conns[slot].as_ref() else {
                return;
            };
            let protocol = conn.c.protocol;
            let rest = &bytes[at..];
            let h = match check(rest, max) {
                Ok(Some(h)) if rest.len() >= h.frame_len() => h,
                Ok(_) => {
                    self.note(format!("{}: a partial frame; link lost", self.ids[slot]));
                    self.end_link(slot, End::Abnormal);
                    return;
                }
                Err(e) => {
                    self.note(format!("{}: refused frame: {e}", self.ids[slot]));
                    self.stats.closed_by_error += 1;
                    self.end_link(slot, End::Abnormal);
                    return;
                }
            };
            let p = match decode_body(&h, &rest[h.header_len..h.frame_len()], protocol) {
                Ok(p) => p,
                Err(e) => {
                    self.note(format!("{}: malformed frame: {e}", self.ids[slot]));
                    self.stats.closed_by_error += 1;
                    self.end_link(slot, End::Abnormal);
                    return;
                }
            };
            at += h.frame_len();
            self.note(format!("raw {}: {p:?}", self.ids[slot]));
            self.stats.raw_handled += 1;
            if !matches!(p, Packet::PingReq) {
                self.exact = false;
            }
            // The model follows what it can: acknowledgements, and a SUBSCRIBE (a
            // stream reader's new start) or UNSUBSCRIBE may take back any delivery.
            match p {
                Packet::Subscribe(_) | Packet::Unsubscribe(_) => self.sess[slot].out.clear(),
                _ => self.follow_ack(slot, &p),
            }
            let now = self.now;
            let conn = self.conns[slot].as_mut().unwrap();
            conn.last_rx = now;
            let c = &mut conn.c;
            let mut fx = Effects::default();
            let r = self
                .core
                .handle(&c.id, c.conn, &p, now, &mut c.out, &mut fx);
            self.absorb(slot, false);
            match r {
                Ok(()) => {}
                Err(Close::Error(_)) => {
                    self.stats.closed_by_error += 1;
                    self.end_link(slot, End::Abnormal);
                    return;
                }
                Err(Close::Disconnected { will }) => {
                    self.end_link(slot, End::Normal { will });
                    return;
                }
                Err(Close::TakenOver) => panic!(
                    "{}: a live connection was told it was taken over",
                    self.ids[slot]
                ),
            }
        }
    }

    /// A CONNECT of the wider alphabet, encoded: any version, the slot's client id or
    /// none, limits, a will, credentials.
    fn connect_template(&mut self, slot: usize) -> Vec<u8> {
        let r = &mut self.rng;
        let protocol = r.pick(&[Protocol::V311, Protocol::V5, Protocol::V5, Protocol::V31]);
        let v5 = protocol.is_v5();
        let id = if r.pct(10) { "" } else { &self.ids[slot] };
        let ups = [("k", "v")];
        let mut props = PropValues::default();
        let mut will_props = PropValues::default();
        if v5 {
            props.session_expiry_interval = r.pick(&[None, Some(0), Some(5), Some(u32::MAX)]);
            props.receive_maximum = r.pick(&[None, Some(1), Some(3)]);
            props.maximum_packet_size = r.pick(&[None, Some(64), Some(128), Some(2048)]);
            props.topic_alias_maximum = r.pick(&[None, Some(1), Some(3)]);
            props.request_problem_information = r.pick(&[None, Some(false)]);
            props.request_response_information = r.pick(&[None, Some(true)]);
            if r.pct(10) {
                props.user_properties = PropList::Slice(&ups);
            }
            if r.pct(3) {
                props.authentication_method = Some("SCRAM-SHA-1");
            }
            will_props.will_delay_interval = r.pick(&[None, Some(0), Some(3)]);
            will_props.message_expiry_interval = r.pick(&[None, Some(2)]);
            if r.pct(10) {
                will_props.payload_format_indicator = Some(1);
            }
        }
        let will = if r.pct(30) {
            Some(Will {
                topic: r.pick(RAW_TOPICS),
                payload: r.pick(RAW_PAYLOADS),
                qos: r.qos(),
                retain: r.pct(30),
                properties: Properties::Values(&will_props),
            })
        } else {
            None
        };
        let username = r.pct(10).then_some("u");
        let c = Connect {
            protocol,
            clean_start: r.pct(50),
            keep_alive: r.pick(&[0, 1, 30, 65535]),
            properties: Properties::Values(&props),
            client_id: id,
            will,
            username,
            password: username.filter(|_| r.pct(50)).map(|_| &b"p"[..]),
        };
        encoded(&Packet::Connect(c), protocol)
    }

    /// A frame of the wider alphabet for a connection of `protocol`, encoded (empty if
    /// the encoder refuses it): PUBLISH to work queues, their control topics,
    /// declarations, streams and delayed topics; SUBSCRIBE with stream starts and
    /// credits; acknowledgements of ids in flight; and the rest.
    fn template(&mut self, slot: usize, protocol: Protocol) -> Vec<u8> {
        let v5 = protocol.is_v5();
        // Sorted: the model's map iterates in a random order.
        let mut known: Vec<u16> = self.sess[slot].out.keys().copied().collect();
        known.sort_unstable();
        let r = &mut self.rng;
        let ids = [1 + r.below(3) as u32];
        let ups = [r.pick(&[
            ("stream-offset", "earliest"),
            ("stream-offset", "latest"),
            ("stream-offset", "0"),
            ("stream-offset", "@1"),
            ("mote-credit", "1"),
            ("mote-credit", "0"),
            ("k", "v"),
        ])];
        let mut props = PropValues::default();
        let p = match r.below(12) {
            0..=3 => {
                let topic = r.pick(RAW_TOPICS);
                let qos = r.qos();
                let mut wire = topic;
                if v5 {
                    if r.pct(20) {
                        props.message_expiry_interval = Some(r.pick(&[0, 1, 30]));
                    }
                    if r.pct(25) {
                        props.topic_alias = Some(1 + r.below(3) as u16);
                        if r.pct(50) {
                            wire = "";
                        }
                    }
                    if r.pct(10) {
                        props.payload_format_indicator = Some(1);
                    }
                    if r.pct(10) {
                        props.response_topic = Some("r");
                        props.correlation_data = Some(b"c");
                    }
                    if r.pct(10) {
                        props.content_type = Some("application/json");
                    }
                    if r.pct(10) {
                        props.user_properties = PropList::Slice(&ups);
                    }
                    if r.pct(3) {
                        props.subscription_identifiers = PropList::Slice(&ids);
                    }
                }
                Packet::Publish(Publish {
                    dup: r.pct(10),
                    qos,
                    retain: r.pct(30),
                    topic: wire,
                    packet_id: if qos == QoS::AtMostOnce {
                        0
                    } else {
                        r.pick(&[1, 2, 3, 7, 65535])
                    },
                    properties: Properties::Values(&props),
                    payload: r.pick(RAW_PAYLOADS),
                })
            }
            4 | 5 => {
                let n = 1 + r.below(3);
                let filters: Vec<SubscribeFilter<'static>> = (0..n)
                    .map(|_| SubscribeFilter {
                        filter: r.pick(RAW_FILTERS),
                        options: SubOptions {
                            qos: r.qos(),
                            no_local: v5 && r.pct(10),
                            retain_as_published: v5 && r.pct(20),
                            retain_handling: r.pick(&[
                                RetainHandling::SendAtSubscribe,
                                RetainHandling::SendIfNew,
                                RetainHandling::DoNotSend,
                            ]),
                        },
                    })
                    .collect();
                if v5 && r.pct(20) {
                    props.subscription_identifiers = PropList::Slice(&ids);
                }
                if v5 && r.pct(40) {
                    props.user_properties = PropList::Slice(&ups);
                }
                let p = Packet::Subscribe(Subscribe {
                    packet_id: 1 + r.below(3) as u16,
                    properties: Properties::Values(&props),
                    filters: List::Slice(&filters),
                });
                return encoded(&p, protocol);
            }
            6 => {
                let n = 1 + r.below(2);
                let filters: Vec<&str> = (0..n).map(|_| r.pick(RAW_FILTERS)).collect();
                let p = Packet::Unsubscribe(Unsubscribe {
                    packet_id: 1 + r.below(3) as u16,
                    properties: Properties::default(),
                    filters: List::Slice(&filters),
                });
                return encoded(&p, protocol);
            }
            7..=9 => {
                let id = if !known.is_empty() && r.pct(60) {
                    r.pick(&known)
                } else {
                    r.pick(&[1, 2, 3, 65535])
                };
                let mut a = Ack::new(id);
                if v5 && r.pct(20) {
                    a.reason = r.pick(&[0x10, 0x80, 0x83, 0x92, 0x99]);
                }
                match r.below(4) {
                    0 => Packet::PubAck(a),
                    1 => Packet::PubRec(a),
                    2 => Packet::PubRel(a),
                    _ => Packet::PubComp(a),
                }
            }
            10 => {
                props.session_expiry_interval = r.pick(&[None, Some(0), Some(10)]);
                match r.below(3) {
                    0 => Packet::PingReq,
                    1 => Packet::Disconnect(Disconnect {
                        reason: r.pick(&[0, reason::DISCONNECT_WITH_WILL, 0x80]),
                        properties: Properties::Values(&props),
                    }),
                    _ => Packet::Auth(Disconnect::new(0x18)),
                }
            }
            _ => {
                return match r.below(3) {
                    0 => self.connect_template(slot),
                    1 => encoded(&Packet::PingResp, protocol),
                    _ => vec![0xf0, 0x00],
                };
            }
        };
        encoded(&p, protocol)
    }

    fn step(&mut self) {
        let slot = self.rng.below(self.conns.len());
        let online = self.conns[slot].is_some();
        // Raw frames take rolls the seeded cases without them never make.
        let roll = self.rng.below(if self.raw { 110 } else { 100 });
        match roll {
            0..=9 => self.op_connect(slot, false),
            10..=11 => self.op_refused_connect(),
            100..=103 => self.op_raw_connect(slot),
            _ if !online => {
                if self.rng.pct(50) {
                    self.op_connect(slot, false);
                } else {
                    self.advance(Duration::from_secs(1));
                }
            }
            12..=14 => self.op_disconnect(slot),
            15..=17 => self.op_link_loss(slot),
            18..=29 => self.op_subscribe(slot),
            30..=33 => self.op_unsubscribe(slot),
            34..=53 => self.op_publish(slot),
            54..=55 => self.op_publish_dup(slot),
            56..=66 => self.op_ack(slot, false),
            67..=68 => self.op_wrong_ack(slot),
            69..=79 => {
                self.note(format!("pump {}", self.ids[slot]));
                self.pump(slot);
            }
            80..=81 => self.op_ping(slot),
            82..=84 => self.op_bad(slot),
            85..=86 => self.op_stale(),
            87..=93 => {
                let secs = self.rng.pick(&[1u64, 5, 30, 120, 600]);
                self.advance(Duration::from_secs(secs));
            }
            94 => self.crash(),
            95..=99 => self.op_compact(),
            _ => self.op_raw(slot),
        }
        self.kicks();
    }

    /// Every client acknowledges everything until the core has nothing more to send; then
    /// the liveness check.
    fn finish(&mut self) {
        self.note("final drain".to_owned());
        if let Some(mut c) = self.compaction.take() {
            while !self.core.copy_retained(&mut c, 100) {}
            let bytes = c.run();
            self.core.compaction_done(bytes);
            self.stats.compactions += 1;
        }
        // Every client without a connection asks for its session back.
        let offline: Vec<usize> = (0..self.conns.len())
            .filter(|&i| self.conns[i].is_none())
            .collect();
        for slot in offline {
            self.op_connect(slot, true);
        }
        for _ in 0..1000 {
            let mut busy = false;
            for slot in self.alive() {
                self.pump(slot);
                let c = self.conns[slot].as_ref().unwrap();
                if c.unacked.is_empty() && c.rels.is_empty() && self.sess[slot].held.is_empty() {
                    continue;
                }
                busy = true;
                self.op_ack(slot, true);
            }
            self.kicks();
            if !busy {
                break;
            }
        }
        if !self.exact {
            // What was published and subscribed is not known: nothing to expect.
            return;
        }
        for slot in self.alive() {
            let c = self.conns[slot].as_ref().unwrap();
            for &m in &c.expect {
                let born = &self.msgs[m];
                if c.unsubscribed_at.is_some_and(|u| u >= born.step) {
                    continue;
                }
                assert!(
                    c.received.contains(&m),
                    "{}: never received message {m} ({}, published at step {}) though \
                     subscribed, online and acknowledging since",
                    self.ids[slot],
                    born.topic,
                    born.step
                );
                self.stats.conn_checks += 1;
            }
            // The session kept what was acknowledged to its publisher for it, across
            // disconnects, takeovers and crashes (MQTT-4.3.2 / 4.3.3, v5 §4.1: the
            // session state holds QoS 1/2 messages pending transmission).
            let s = &self.sess[slot];
            for &m in &s.kept {
                let born = &self.msgs[m];
                // Kept by an earlier incarnation (gen is checked through `got`'s reset),
                // or unsubscribed since (the broker MAY drop queued messages then).
                if s.unsub_at.is_some_and(|u| u >= born.step) {
                    continue;
                }
                assert!(
                    s.got.contains(&m),
                    "{} (session {}): never received message {m} ({}, published at step \
                     {}) queued for its session",
                    self.ids[slot],
                    s.gen,
                    born.topic,
                    born.step
                );
                self.stats.session_checks += 1;
            }
        }
    }
}

/// The seed of case `case` of a seeded run.
pub fn case_seed(case: u64) -> u64 {
    splitmix(case ^ 0x6d6f_7465)
}

/// Runs the seeded case `seed`: `steps` operations (raw frames among them when `raw`),
/// then the final drain and checks. Returns what it exercised.
///
/// # Panics
/// When an invariant breaks, after printing the seed and the last operations;
/// `verbose` prints every operation as it goes.
pub fn run_seeded(seed: u64, steps: usize, raw: bool, verbose: bool) -> Stats {
    let mut w = None;
    let r = catch_unwind(AssertUnwindSafe(|| {
        let world = w.insert(World::new(Rng::new(seed), raw, verbose));
        for _ in 0..steps {
            world.step += 1;
            world.stats.steps += 1;
            world.step();
        }
        world.finish();
    }));
    if let Err(e) = r {
        eprintln!("fuzz case failed: seed {seed:#x}, {steps} steps, raw frames {raw}");
        if let Some(world) = &w {
            eprintln!("last operations:");
            for t in &world.trace {
                eprintln!("  {t}");
            }
        }
        resume_unwind(e);
    }
    w.map_or(Stats::default(), |w| w.stats)
}

/// The input of a case like seeded case `seed` with raw frames, `steps` operations
/// long: the choices it made, written as [`run_input`] reads them. Replayed, it takes
/// the same steps as long as the core answers alike (its hash maps are randomly keyed,
/// so the order of some deliveries may differ): seeds for the fuzzer that reach deep.
pub fn record_input(seed: u64, steps: usize) -> Vec<u8> {
    let rng = Rng::Recording {
        x: splitmix(seed) | 1,
        out: Vec::new(),
    };
    let mut world = World::new(rng, true, false);
    for _ in 0..steps {
        world.step += 1;
        world.step();
    }
    match world.rng {
        Rng::Recording { out, .. } => out,
        _ => unreachable!("a recording"),
    }
}

/// Runs the case `input` describes (the cargo-fuzz target `core`): its bytes are the
/// choices, a byte or two each, the first ones the broker's settings and how many
/// clients; operations, raw frames among them, until the bytes run out (at most
/// [`INPUT_STEPS`]), then the final drain and checks. Returns what it exercised.
///
/// # Panics
/// When an invariant breaks; `verbose` prints every operation as it goes.
pub fn run_input(input: &[u8], verbose: bool) -> Stats {
    let rng = Rng::Input {
        data: input.to_vec(),
        at: 0,
    };
    let mut world = World::new(rng, true, verbose);
    while !world.rng.exhausted() && world.step < INPUT_STEPS {
        world.step += 1;
        world.stats.steps += 1;
        world.step();
    }
    world.finish();
    world.stats
}
