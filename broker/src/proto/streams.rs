//! Streams (`$stream/NAME`, `docs/streams.md`): append-only logs with dense offsets
//! that readers replay without deleting.
//!
//! A stream's entries live in its [`StreamLog`] (the store's files, or memory); the
//! newest few are also kept decoded in `recent`, so readers that keep up never touch
//! the disk. Every reader is a [`Reader`]: a plain subscription (one member, its
//! session) or a consumer group (`$share/GROUP/$stream/NAME`, many members). A reader
//! has a cursor (`next`), the offsets in flight at its members, offsets to send again,
//! and a committed offset (everything before it acknowledged), journaled for groups and
//! persistent sessions.
//!
//! Deliveries go into the member's session like a work queue's (no journal record of
//! their own, outside the session's queue limits): at most the member's window
//! (min(Receive Maximum, `max_inflight`)) per member, so a reader far behind costs one
//! read-ahead buffer, not its backlog. A delivery carries its [`StreamTag`]; its end
//! (PUBACK, or sent at QoS 0) comes back as `Event::StreamDone`.
//!
//! Per-key order in a group: a key's member is chosen by rendezvous hashing of the key
//! over the online members (a member joining or leaving moves few keys); a key whose
//! member changed while the old one still has messages of it in flight waits for them.
//! A reader dispatches in offset order; a message whose member has no room is parked
//! (bounded) so the other keys go on, and a key with a message parked parks its later
//! ones (no message overtakes an earlier one of its key).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{Hash, Hasher};

use super::*;
use crate::config::{DefaultOffset, StreamDecl};
use crate::proto::durable::{MemStreamLog, StreamLog, StreamStore};
use crate::proto::message::push_user_property;

/// Topics and filters of streams start with this.
pub(crate) const STREAM_PREFIX: &str = "$stream/";
/// A PUBLISH here declares a stream (a JSON body); kept as the topic's retained message.
pub(crate) const ADMIN_PREFIX: &str = "$admin/stream/";
/// The v5 SUBSCRIBE user property naming a reader's start.
pub(crate) const OFFSET_PROPERTY: &str = "stream-offset";

/// Entries of a stream kept decoded in memory at most (and bytes).
const RECENT_ENTRIES: usize = 4096;
const RECENT_BYTES: usize = 4 * 1024 * 1024;
/// Bytes a reader behind `recent` reads from the log at a time.
const READ_AHEAD: usize = 256 * 1024;
/// Messages a reader keeps parked at most (their member had no room; other keys go on),
/// and their bytes.
const PARK_MAX: usize = 1024;
const PARK_BYTES: usize = 1024 * 1024;
/// Defaults of a stream's declaration.
const DEFAULT_RETENTION_SECS: u64 = 7 * 24 * 3600;
const DEFAULT_MAX_BYTES: u64 = 1024 * 1024 * 1024;
const DEFAULT_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// How often retention runs.
const TRIM_EVERY: Duration = Duration::from_secs(10);
/// A reader that met a message not yet durable tries again this much later.
const RETRY_DURABLE: Duration = Duration::from_millis(2);

/// The stream name in a topic `$stream/NAME` or `$stream/NAME/...`, if well formed.
pub(crate) fn stream_of(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix(STREAM_PREFIX)?;
    let name = rest.split('/').next()?;
    crate::config::is_queue_name(name).then_some(name)
}

/// Where a reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    Earliest,
    Latest,
    Offset(u64),
    /// The first message at or after this Unix ms.
    Time(u64),
}

impl Start {
    /// `earliest`, `latest`, digits, or `@` and digits.
    pub(crate) fn parse(s: &str) -> Option<Start> {
        match s {
            "earliest" => Some(Start::Earliest),
            "latest" => Some(Start::Latest),
            _ => match s.strip_prefix('@') {
                Some(ms) => ms.parse().ok().map(Start::Time),
                None => s.parse().ok().map(Start::Offset),
            },
        }
    }
}

/// A reader's subscription filter taken apart: `$stream/NAME[/@START][/FILTER]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReaderFilter<'a> {
    pub(crate) name: &'a str,
    pub(crate) start: Option<Start>,
    /// Only messages whose topic matches it.
    pub(crate) filter: Option<&'a str>,
}

/// `None` when `inner` is not a stream filter; `Err` when it is a malformed one.
pub(crate) fn parse_reader(inner: &str) -> Option<Result<ReaderFilter<'_>, ()>> {
    let rest = inner.strip_prefix(STREAM_PREFIX)?;
    let (name, mut rest) = match rest.split_once('/') {
        Some((n, r)) => (n, Some(r)),
        None => (rest, None),
    };
    if !crate::config::is_queue_name(name) {
        return Some(Err(()));
    }
    let mut start = None;
    if let Some(r) = rest.filter(|r| r.starts_with('@')) {
        let (level, after) = match r.split_once('/') {
            Some((l, a)) => (l, Some(a)),
            None => (r, None),
        };
        match Start::parse(&level[1..]) {
            Some(s) => start = Some(s),
            None => return Some(Err(())),
        }
        rest = after;
    }
    let filter = match rest {
        Some("") => return Some(Err(())),
        other => other,
    };
    Some(Ok(ReaderFilter {
        name,
        start,
        filter,
    }))
}

/// The id of a reader: a group's (`g`, group, filter) or a plain subscription's (`c`,
/// client, filter), joined by NUL (which MQTT strings cannot hold).
fn reader_id(group: Option<&str>, client: &str, filter: Option<&str>) -> Arc<str> {
    match group {
        Some(g) => Arc::from(format!("g\0{g}\0{}", filter.unwrap_or(""))),
        None => Arc::from(format!("c\0{client}\0{}", filter.unwrap_or(""))),
    }
}

/// A reader id taken apart: (is a group, group or client, filter).
fn reader_parts(id: &str) -> Option<(bool, &str, Option<&str>)> {
    let mut it = id.splitn(3, '\0');
    let kind = it.next()?;
    let who = it.next()?;
    let filter = it.next()?;
    Some((kind == "g", who, (!filter.is_empty()).then_some(filter)))
}

/// What a delivery of a stream is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct StreamTag {
    pub(crate) stream: Arc<str>,
    pub(crate) reader: Arc<str>,
    pub(crate) offset: u64,
}

/// A stream's settings: its declaration over the defaults.
#[derive(Debug, Clone)]
struct Settings {
    retention_ms: Option<u64>,
    max_bytes: u64,
    segment_bytes: u64,
    default_offset: DefaultOffset,
    /// The user property that is the key (`None`: the topic).
    key: Option<Arc<str>>,
}

impl Settings {
    fn of(decl: Option<&StreamDecl>) -> Settings {
        let d = decl.cloned().unwrap_or_default();
        let retention = d.retention.unwrap_or(DEFAULT_RETENTION_SECS);
        Settings {
            retention_ms: (retention > 0).then_some(retention.saturating_mul(1000)),
            max_bytes: d.max_bytes.unwrap_or(DEFAULT_MAX_BYTES),
            segment_bytes: d.segment_bytes.unwrap_or(DEFAULT_SEGMENT_BYTES),
            default_offset: d.default_offset.unwrap_or_default(),
            key: d
                .key
                .as_deref()
                .and_then(|k| k.strip_prefix("user:"))
                .map(Arc::from),
        }
    }
}

/// One entry, decoded.
#[derive(Debug, Clone)]
struct Entry {
    offset: u64,
    ts: u64,
    /// Journal position that makes it durable (0: it is).
    lsn: u64,
    msg: Arc<Message>,
}

/// A member of a reader.
#[derive(Debug)]
struct Member {
    client: Arc<str>,
    qos: QoS,
    sub_id: Option<u32>,
    /// Deliveries of this reader in its session, not yet acknowledged.
    outstanding: usize,
}

/// A plain subscription or a consumer group reading one stream.
#[derive(Debug)]
struct Reader {
    /// Only messages whose topic matches it.
    filter: Option<Arc<str>>,
    /// Commits are journaled (groups, and readers of persistent sessions).
    durable: bool,
    /// The next offset never sent.
    next: u64,
    /// Everything before it is acknowledged (as last journaled).
    committed: u64,
    /// The journal position of `committed`'s record (0: durable, or not journaled).
    commit_lsn: u64,
    /// The last committed offset known durable (what is shown while `committed`'s
    /// record is not yet): no one is shown a commit a crash could take back.
    shown: u64,
    /// Offsets in flight: member and key hash.
    inflight: BTreeMap<u64, (Arc<str>, u64)>,
    /// Offsets given back by members that left, to send again first.
    redeliver: BTreeSet<u64>,
    /// Messages read whose member had no room, kept so other keys go on: the entry,
    /// its key, and whether it was sent before (at most [`PARK_MAX`]).
    parked: BTreeMap<u64, (Entry, u64, bool)>,
    members: Vec<Member>,
    /// Keys with messages in flight: the member, how many.
    keys: HashMap<u64, (Arc<str>, u32)>,
    /// Entries read from the log, in offset order (for a reader behind `recent`).
    ahead: VecDeque<Entry>,
    /// Offsets skipped because retention removed them, to tell the next delivery.
    skipped: u64,
}

impl Reader {
    fn new(next: u64, filter: Option<Arc<str>>, durable: bool) -> Reader {
        Reader {
            filter,
            durable,
            next,
            committed: next,
            commit_lsn: 0,
            shown: next,
            inflight: BTreeMap::new(),
            redeliver: BTreeSet::new(),
            parked: BTreeMap::new(),
            members: Vec::new(),
            keys: HashMap::new(),
            ahead: VecDeque::new(),
            skipped: 0,
        }
    }

    /// The committed offset as it stands: the first offset not acknowledged.
    fn floor(&self) -> u64 {
        let inflight = self.inflight.keys().next().copied();
        let redeliver = self.redeliver.iter().next().copied();
        let parked = self.parked.keys().next().copied();
        [inflight, redeliver, parked]
            .into_iter()
            .flatten()
            .fold(self.next, u64::min)
    }

    /// Whether the message at `offset` (given back or parked) was sent before.
    fn sent_before(&self, offset: u64) -> bool {
        self.redeliver.contains(&offset) || self.parked.get(&offset).is_some_and(|p| p.2)
    }

    /// Offset `o` is no longer in flight (acknowledged or given back).
    fn settle(&mut self, o: u64) -> Option<Arc<str>> {
        let (client, h) = self.inflight.remove(&o)?;
        if let Some(k) = self.keys.get_mut(&h) {
            k.1 -= 1;
            if k.1 == 0 {
                self.keys.remove(&h);
            }
        }
        if let Some(m) = self.members.iter_mut().find(|m| m.client == client) {
            m.outstanding = m.outstanding.saturating_sub(1);
        }
        Some(client)
    }
}

/// One stream.
#[derive(Debug)]
struct Stream {
    log: Box<dyn StreamLog>,
    settings: Settings,
    /// The offset the next append gets.
    next: u64,
    /// Timestamp of the last append (timestamps never go backwards).
    last_ts: u64,
    /// The newest entries, decoded, in offset order, ending at `next`.
    recent: VecDeque<Entry>,
    recent_bytes: usize,
    readers: BTreeMap<Arc<str>, Reader>,
    /// The filter it collects, as inserted in the trie.
    filter: Option<String>,
}

/// Every stream.
#[derive(Debug, Default)]
pub(crate) struct Streams {
    map: BTreeMap<Arc<str>, Stream>,
    declared: HashMap<Arc<str>, StreamDecl>,
    no_auto_create: bool,
    /// Where streams are kept (`None`: memory).
    store: Option<Arc<dyn StreamStore>>,
    /// Readers that may have something to send: (stream, reader).
    due: Vec<(Arc<str>, Arc<str>)>,
    /// Retention is scheduled.
    trimming: bool,
    /// Streams kept at most (`None`: no limit).
    max: Option<usize>,
}

impl Streams {
    /// Whether stream `name` exists or may be created by its use (declared, or
    /// created on first use), the limit on streams aside.
    pub(super) fn known(&self, name: &str) -> bool {
        self.map.contains_key(name) || !self.no_auto_create || self.declared.contains_key(name)
    }

    /// Whether stream `name` exists or may be created now.
    pub(super) fn usable(&self, name: &str) -> bool {
        let room = self.max.map_or(true, |m| self.map.len() < m);
        self.map.contains_key(name) || (room && self.known(name))
    }
}

/// Counters of one stream, for `$SYS` and the HTTP stats.
#[derive(Debug, Clone, Default)]
pub(crate) struct StreamStats {
    pub(crate) first_offset: u64,
    /// The newest message's offset (`None`: empty).
    pub(crate) last_offset: Option<u64>,
    pub(crate) messages: u64,
    pub(crate) bytes: u64,
    /// Per consumer group (by name and filter): committed offset and lag.
    pub(crate) groups: Vec<(String, u64, u64)>,
}

/// The stable hash of a key (the same on every run: groups rebalance the same way).
fn key_hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Rendezvous score of a member for a key.
fn score(key: u64, client: &str) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    client.hash(&mut h);
    h.finish()
}

impl Core {
    /// Where streams are kept (the on-disk store); opens every stream found there.
    pub(crate) fn set_stream_store(&mut self, store: Arc<dyn StreamStore>, now: Instant) {
        let names = store.list();
        self.streams.store = Some(store);
        for name in names {
            if let Err(e) = self.open_stream(&name, now) {
                tracing::error!(stream = %name, error = %e, "stream cannot be opened");
            }
        }
    }

    /// Whether streams used before they are declared are created, and how many
    /// streams there may be.
    pub(crate) fn set_auto_create_streams(&mut self, on: bool, max: usize) {
        self.streams.no_auto_create = !on;
        self.streams.max = Some(max);
    }

    /// Whether stream `name` exists or may be created by its use.
    pub(super) fn stream_usable(&self, name: &str) -> bool {
        self.streams.usable(name)
    }

    /// Makes stream `name` exist.
    fn open_stream(&mut self, name: &str, now: Instant) -> std::io::Result<()> {
        if self.streams.map.contains_key(name) {
            return Ok(());
        }
        if self
            .streams
            .max
            .is_some_and(|m| self.streams.map.len() >= m)
        {
            return Err(std::io::Error::other(
                "too many streams (streams.max_streams)",
            ));
        }
        let settings = Settings::of(self.streams.declared.get(name));
        let log: Box<dyn StreamLog> = match &self.streams.store {
            Some(store) => store.open(name, settings.segment_bytes)?,
            None => Box::new(MemStreamLog::default()),
        };
        let next = log.bounds().1;
        let stream = Stream {
            log,
            settings,
            next,
            last_ts: 0,
            recent: VecDeque::new(),
            recent_bytes: 0,
            readers: BTreeMap::new(),
            filter: None,
        };
        self.streams.map.insert(Arc::from(name), stream);
        if !self.streams.trimming {
            self.streams.trimming = true;
            self.timers.set(Timer::StreamTrim, now + TRIM_EVERY);
        }
        tracing::debug!(stream = name, next, "stream opened");
        Ok(())
    }

    /// Declares stream `name` with `decl`: creates it, or changes its settings.
    pub(crate) fn declare_stream(
        &mut self,
        name: &str,
        decl: StreamDecl,
        now: Instant,
    ) -> Result<(), String> {
        if !crate::config::is_queue_name(name) {
            return Err(format!(
                "{name:?} is not a stream name (1 to 64 of A-Z a-z 0-9 _ . -)"
            ));
        }
        decl.validate()?;
        let id: Arc<str> = Arc::from(name);
        self.streams.declared.insert(id, decl.clone());
        self.open_stream(name, now).map_err(|e| e.to_string())?;
        let key = SubKey {
            client: Arc::from(format!("{STREAM_PREFIX}{name}")),
            group: None,
            json: false,
        };
        let Some(stream) = self.streams.map.get_mut(name) else {
            return Err("stream not opened".to_owned());
        };
        stream.settings = Settings::of(Some(&decl));
        let old = std::mem::replace(&mut stream.filter, decl.filter.clone());
        if old != decl.filter {
            if let Some(f) = &old {
                self.subs.remove(f, &key);
            }
            if let Some(f) = &decl.filter {
                // The router hands every matching publish to the stream (`append`).
                let entry = SubEntry {
                    qos: QoS::AtLeastOnce,
                    no_local: false,
                    retain_as_published: false,
                    id: None,
                    checked: false,
                };
                self.subs.insert(f, key, entry);
            }
        }
        tracing::info!(stream = name, "stream declared");
        Ok(())
    }

    /// A PUBLISH to `$admin/stream/NAME`: declares the stream from the JSON body.
    pub(super) fn admin_declare_stream(
        &mut self,
        name: &str,
        body: &[u8],
        now: Instant,
    ) -> (u8, Option<String>) {
        queues::admin_json(body, |decl: StreamDecl| {
            self.declare_stream(name, decl, now)
        })
    }

    /// Recovery: the declarations kept as retained `$admin/stream/NAME` messages.
    pub(crate) fn restore_stream_declarations(&mut self, now: Instant) {
        let mut found = Vec::new();
        self.retained
            .for_each_match("$admin/stream/+", None, usize::MAX, |t, m| {
                found.push((t[ADMIN_PREFIX.len()..].to_string(), m.payload.clone()));
            });
        for (name, body) in found {
            let (code, why) = self.admin_declare_stream(&name, &body, now);
            if code >= 0x80 {
                tracing::warn!(
                    stream = name,
                    reason = why.unwrap_or_default(),
                    "stored stream declaration not applied"
                );
            }
        }
    }

    /// Appends `msg` to stream `name` (a PUBLISH to `$stream/NAME`, or one matching its
    /// filter) and hands it to readers. False when the stream cannot take it.
    pub(super) fn append(
        &mut self,
        name: &str,
        msg: &Arc<Message>,
        now: Instant,
        fx: &mut Effects,
    ) -> bool {
        if let Err(e) = self.open_stream(name, now) {
            tracing::error!(stream = name, error = %e, "stream cannot be opened");
            return false;
        }
        let now_ms = self.clock.unix_ms(now);
        let durable = self.durable();
        let waits = self.journal.as_ref().is_some_and(|j| j.waits());
        let Some(stream) = self.streams.map.get_mut(name) else {
            return false;
        };
        let offset = stream.next;
        let ts = now_ms.max(stream.last_ts);
        // The stream keeps the message as published, without retain or expiry (its
        // retention is the stream's).
        let mut m = (**msg).clone();
        m.retain = false;
        m.expires_at = None;
        m.mid = offset;
        let mut stored = m.as_stored(None, now, now_ms);
        stored.expires_at_ms = 0;
        let lsn = stream
            .log
            .append(offset, ts, &mut |b| stored.encode_msg(offset, b));
        stream.next = offset + 1;
        stream.last_ts = ts;
        let m = Arc::new(m);
        stream.recent_bytes += m.cost();
        stream.recent.push_back(Entry {
            offset,
            ts,
            lsn,
            msg: m,
        });
        // Entries not yet durable stay: a reader behind could not read them from the
        // log yet.
        while stream.recent.len() > RECENT_ENTRIES || stream.recent_bytes > RECENT_BYTES {
            match stream.recent.front() {
                Some(e) if e.lsn <= durable => {
                    stream.recent_bytes -= e.msg.cost();
                    stream.recent.pop_front();
                }
                _ => break,
            }
        }
        // A QoS 1/2 append is acknowledged once durable; the readers it is handed to
        // are woken after that too (so their sessions find it sendable).
        if waits {
            self.wait_lsn = self.wait_lsn.max(lsn);
        }
        let sname: Arc<str> = Arc::from(name);
        let readers: Vec<Arc<str>> = stream.readers.keys().cloned().collect();
        for r in readers {
            self.dispatch_reader(&sname, &r, now, u64::MAX, fx);
        }
        true
    }

    /// `client` reads stream `rf.name` (a SUBSCRIBE): joins a group, or (re)starts a
    /// plain reader. False when the stream cannot be used.
    pub(super) fn add_reader(
        &mut self,
        client: &Arc<str>,
        group: Option<&str>,
        rf: &ReaderFilter<'_>,
        (qos, sub_id): (QoS, Option<u32>),
        start: Option<Start>,
        now: Instant,
    ) -> bool {
        if !self.stream_usable(rf.name) {
            return false;
        }
        if let Err(e) = self.open_stream(rf.name, now) {
            tracing::error!(stream = rf.name, error = %e, "stream cannot be opened");
            return false;
        }
        let persisted = self.journal.is_some()
            && (group.is_some() || self.shards.get(client).is_some_and(|s| s.persisted()));
        let id = reader_id(group, client, rf.filter);
        let name: Arc<str> = Arc::from(rf.name);
        let start = start.or(rf.start);
        let restart = group.is_none() && start.is_some();
        if restart {
            // An explicit start moves a plain reader: what it holds is forgotten.
            self.take_back(client, Some((&name, &id)));
        }
        let Some(stream) = self.streams.map.get_mut(rf.name) else {
            return false;
        };
        let exists = stream.readers.contains_key(&id);
        if !exists || restart {
            let at = resolve(stream, start);
            let members = stream
                .readers
                .remove(&id)
                .map(|r| r.members)
                .unwrap_or_default();
            let mut r = Reader::new(at, rf.filter.map(Arc::from), persisted);
            r.members = members;
            stream.readers.insert(id.clone(), r);
            if persisted {
                let rec = Record::StreamCommit {
                    stream: rf.name.to_owned(),
                    reader: id.to_string(),
                    next: at,
                };
                self.log(rec, Why::Subscription);
            }
        }
        let Some(r) = self
            .streams
            .map
            .get_mut(rf.name)
            .and_then(|s| s.readers.get_mut(&id))
        else {
            return false;
        };
        // A stream is read at least once: QoS 2 is granted as 1.
        let qos = qos.min(QoS::AtLeastOnce);
        match r.members.iter_mut().find(|m| &m.client == client) {
            Some(m) => {
                m.qos = qos;
                m.sub_id = sub_id;
            }
            None => {
                r.members.push(Member {
                    client: client.clone(),
                    qos,
                    sub_id,
                    outstanding: 0,
                });
                r.members.sort_by(|a, b| a.client.cmp(&b.client));
            }
        }
        self.streams.due.push((name, id));
        true
    }

    /// `client` unsubscribed `full` (a stream filter): it leaves that reader, and a
    /// plain reader ends.
    pub(super) fn remove_reader(&mut self, client: &Arc<str>, full: &str, now: Instant) {
        let (group, inner) = subscribe::held_filter(full);
        let Some(Ok(rf)) = parse_reader(inner) else {
            return;
        };
        let id = reader_id(group, client, rf.filter);
        let name: Arc<str> = Arc::from(rf.name);
        self.take_back(client, Some((&name, &id)));
        self.drop_member(&name, &id, client);
        // What it held goes to the others now.
        self.dispatch_due_streams(now);
    }

    /// `client` is no longer a member of reader `id`; a plain reader goes with it.
    fn drop_member(&mut self, name: &Arc<str>, id: &Arc<str>, client: &Arc<str>) {
        let Some(stream) = self.streams.map.get_mut(name) else {
            return;
        };
        let Some(r) = stream.readers.get_mut(id) else {
            return;
        };
        r.members.retain(|m| &m.client != client);
        let plain = reader_parts(id).is_some_and(|(g, _, _)| !g);
        if plain {
            if let Some(r) = stream.readers.remove(id) {
                if r.durable {
                    let rec = Record::StreamReaderDel {
                        stream: name.to_string(),
                        reader: id.to_string(),
                    };
                    self.log(rec, Why::NoPromise);
                }
            }
        } else {
            self.streams.due.push((name.clone(), id.clone()));
        }
    }

    /// Takes the stream deliveries `client`'s session holds (of reader `only`, or of
    /// every reader) back to their readers, to be sent again.
    fn take_back(&mut self, client: &Arc<str>, only: Option<(&Arc<str>, &Arc<str>)>) {
        let Some(s) = self.shards.get_mut(client) else {
            return;
        };
        let held = s.take_stream_deliveries(only.map(|(n, r)| (&**n, &**r)));
        for tag in held {
            let Some(r) = self
                .streams
                .map
                .get_mut(&tag.stream)
                .and_then(|st| st.readers.get_mut(&tag.reader))
            else {
                continue;
            };
            if r.settle(tag.offset).is_some() {
                r.redeliver.insert(tag.offset);
            }
            self.streams
                .due
                .push((tag.stream.clone(), tag.reader.clone()));
        }
    }

    /// `client`'s connection ended: what it held goes back to its readers, and to
    /// their other members now.
    pub(super) fn stream_member_offline(&mut self, client: &Arc<str>, now: Instant) {
        self.take_back(client, None);
        for stream in self.streams.map.values_mut() {
            for r in stream.readers.values_mut() {
                if let Some(m) = r.members.iter_mut().find(|m| &m.client == client) {
                    m.outstanding = 0;
                }
            }
        }
        self.dispatch_due_streams(now);
    }

    /// `client` connected: its readers may send to it.
    pub(super) fn stream_member_online(&mut self, client: &Arc<str>) {
        for (name, stream) in &self.streams.map {
            for (id, r) in &stream.readers {
                if r.members.iter().any(|m| &m.client == client) {
                    self.streams.due.push((name.clone(), id.clone()));
                }
            }
        }
    }

    /// `client`'s session ended: it leaves every reader.
    pub(super) fn stream_member_gone(&mut self, client: &Arc<str>, now: Instant) {
        self.take_back(client, None);
        let mut left = Vec::new();
        for (name, stream) in &self.streams.map {
            for (id, r) in &stream.readers {
                if r.members.iter().any(|m| &m.client == client) {
                    left.push((name.clone(), id.clone()));
                }
            }
        }
        for (name, id) in left {
            self.drop_member(&name, &id, client);
        }
        self.dispatch_due_streams(now);
    }

    /// A stream delivery was acknowledged (or sent at QoS 0): the reader commits.
    pub(super) fn stream_done(&mut self, tag: &StreamTag) {
        let Some(r) = self
            .streams
            .map
            .get_mut(&tag.stream)
            .and_then(|s| s.readers.get_mut(&tag.reader))
        else {
            return;
        };
        r.settle(tag.offset);
        self.streams
            .due
            .push((tag.stream.clone(), tag.reader.clone()));
        self.commit(&tag.stream.clone(), &tag.reader.clone());
    }

    /// Journals reader `id`'s committed offset when it moved.
    fn commit(&mut self, name: &Arc<str>, id: &Arc<str>) {
        let durable = self.durable();
        let Some(r) = self
            .streams
            .map
            .get_mut(name)
            .and_then(|s| s.readers.get_mut(id))
        else {
            return;
        };
        let floor = r.floor();
        if floor <= r.committed {
            return;
        }
        if r.commit_lsn <= durable {
            r.shown = r.committed;
        }
        r.committed = floor;
        r.commit_lsn = 0;
        if r.durable {
            let rec = Record::StreamCommit {
                stream: name.to_string(),
                reader: id.to_string(),
                next: floor,
            };
            let lsn = self.log(rec, Why::NoPromise);
            if let Some(r) = self
                .streams
                .map
                .get_mut(name)
                .and_then(|s| s.readers.get_mut(id))
            {
                r.commit_lsn = lsn;
            }
        }
    }

    /// Hands messages to the readers that may have room now.
    pub(super) fn dispatch_due_streams(&mut self, now: Instant) {
        if self.streams.due.is_empty() {
            return;
        }
        let mut due = std::mem::take(&mut self.streams.due);
        due.sort();
        due.dedup();
        let durable = self.durable();
        let mut fx = Effects::default();
        for (name, id) in due {
            self.dispatch_reader(&name, &id, now, durable, &mut fx);
        }
        fx.run();
    }

    /// Sends reader `id` of stream `name` what its members have room for: first what
    /// waits (given back by members that left, or parked), then new offsets, in offset
    /// order per key. A message whose member has no room is parked (at most
    /// [`PARK_MAX`] per reader) so other keys go on; a key with a message parked parks
    /// its later ones too. Entries past `durable` are not sent (the caller could not
    /// wake their receivers after they became durable); the reader then tries again
    /// shortly.
    fn dispatch_reader(
        &mut self,
        name: &Arc<str>,
        id: &Arc<str>,
        now: Instant,
        durable: u64,
        fx: &mut Effects,
    ) {
        let clock = self.clock(now);
        let limits = self.limits;
        let max_inflight = usize::from(limits.max_inflight.max(1));
        let Some(stream) = self.streams.map.get_mut(name) else {
            return;
        };
        let Stream {
            log,
            recent,
            readers,
            next: end,
            settings,
            ..
        } = stream;
        let end = *end;
        let Some(r) = readers.get_mut(id) else {
            return;
        };
        let sessions = &mut self.shards;
        // The room of each member, by index (0: offline or full).
        let mut room: Vec<usize> = r
            .members
            .iter()
            .map(|m| {
                sessions
                    .get(&m.client)
                    .and_then(|s| s.link())
                    .map_or(0, |l| {
                        usize::from(l.client_receive_max.max(1))
                            .min(max_inflight)
                            .saturating_sub(m.outstanding)
                    })
            })
            .collect();
        if room.iter().all(|&n| n == 0) {
            return;
        }
        let online: Vec<bool> = r
            .members
            .iter()
            .map(|m| sessions.get(&m.client).is_some_and(|s| s.online()))
            .collect();
        let first = log.bounds().0;
        let mut sent = 0u64;
        let mut retry = false;
        // 1. What waits, in offset order; a key blocked here keeps its later ones.
        let mut blocked: HashSet<u64> = HashSet::new();
        let waiting: BTreeSet<u64> = r.redeliver.iter().chain(r.parked.keys()).copied().collect();
        for offset in waiting {
            let entry = match r.parked.get(&offset) {
                Some(p) => Some(p.0.clone()),
                None if offset < first => None,
                None => {
                    entry_at(log.as_ref(), recent, r, offset, clock).filter(|e| e.offset == offset)
                }
            };
            let Some(entry) = entry else {
                // Removed by retention (or unreadable) before it was sent again.
                r.redeliver.remove(&offset);
                continue;
            };
            if entry.lsn > durable {
                retry = true;
                break;
            }
            if !wanted(r, &entry) {
                r.redeliver.remove(&offset);
                r.parked.remove(&offset);
                continue;
            }
            let key = key_of(settings, &entry);
            match pick(r, key, &online, &room).filter(|_| !blocked.contains(&key)) {
                Some(i) => {
                    let attempts = u32::from(r.sent_before(offset));
                    r.redeliver.remove(&offset);
                    r.parked.remove(&offset);
                    room[i] -= 1;
                    send(
                        r,
                        i,
                        key,
                        &entry,
                        attempts,
                        (name, id),
                        (sessions, &limits, clock, fx),
                    );
                    sent += 1;
                }
                None => {
                    blocked.insert(key);
                    if r.redeliver.remove(&offset) {
                        r.parked.insert(offset, (entry, key, true));
                    }
                }
            }
        }
        // 2. New offsets.
        while !retry && r.next < end && room.iter().any(|&n| n > 0) {
            let offset = r.next;
            if offset < first {
                // Retention removed it before it was read.
                r.skipped += first - offset;
                r.next = first;
                continue;
            }
            let Some(entry) = entry_at(log.as_ref(), recent, r, offset, clock) else {
                // A gap the log cannot read past; go on after it.
                r.next += 1;
                continue;
            };
            if entry.offset != offset {
                // A damaged stretch of the log: skip to what is there.
                r.skipped += entry.offset - offset;
                r.next = entry.offset;
            }
            if entry.lsn > durable {
                retry = true;
                break;
            }
            let offset = entry.offset;
            if !wanted(r, &entry) {
                // Not for this reader: passed over (it commits with the rest).
                r.next = offset + 1;
                continue;
            }
            let key = key_of(settings, &entry);
            let parked_key = r.parked.values().any(|p| p.1 == key);
            match pick(r, key, &online, &room).filter(|_| !parked_key) {
                Some(i) => {
                    r.next = offset + 1;
                    room[i] -= 1;
                    send(
                        r,
                        i,
                        key,
                        &entry,
                        0,
                        (name, id),
                        (sessions, &limits, clock, fx),
                    );
                    sent += 1;
                }
                // Parked only while another member has room (a reader of one member
                // would only hold messages in memory), within the bounds.
                None if r.parked.len() < PARK_MAX
                    && r.parked.values().map(|p| p.0.msg.cost()).sum::<usize>() < PARK_BYTES
                    && room.iter().any(|&n| n > 0)
                    && pick_blocked_other(r, key, &online, &room) =>
                {
                    r.next = offset + 1;
                    r.parked.insert(offset, (entry, key, false));
                }
                None => break,
            }
        }
        self.stats.deliveries += sent;
        if retry {
            self.timers
                .set(Timer::StreamRetry(name.clone()), now + RETRY_DURABLE);
        }
    }

    /// Retention: drops the segments of every stream that are too old or too many.
    pub(super) fn trim_streams(&mut self, now: Instant) {
        let now_ms = self.clock.unix_ms(now);
        for (name, s) in &mut self.streams.map {
            let older = s.settings.retention_ms.map(|r| now_ms.saturating_sub(r));
            if let Err(e) = s.log.trim(older, s.settings.max_bytes) {
                tracing::error!(stream = %name, error = %e, "stream retention failed");
            }
        }
        if !self.streams.map.is_empty() {
            self.timers.set(Timer::StreamTrim, now + TRIM_EVERY);
        } else {
            self.streams.trimming = false;
        }
    }

    /// A reader that met a message not yet durable tries again.
    pub(super) fn stream_retry(&mut self, name: &Arc<str>, now: Instant, fx: &mut Effects) {
        let durable = self.durable();
        let ids: Vec<Arc<str>> = self
            .streams
            .map
            .get(name)
            .map(|s| s.readers.keys().cloned().collect())
            .unwrap_or_default();
        for id in ids {
            self.dispatch_reader(name, &id, now, durable, fx);
        }
    }

    /// Recovery: the readers' committed offsets (their streams were opened from the
    /// store first).
    pub(crate) fn restore_stream_readers(&mut self, index: &Index) {
        for ((name, id), &next) in &index.stream_readers {
            let Some(parts) = reader_parts(id) else {
                continue;
            };
            let Some(stream) = self.streams.map.get_mut(name.as_str()) else {
                continue;
            };
            let at = next.max(stream.log.bounds().0).min(stream.next);
            let r = Reader::new(at, parts.2.map(Arc::from), true);
            stream.readers.insert(Arc::from(id.as_str()), r);
        }
    }

    /// Stream readers' committed offsets and declarations for a snapshot.
    pub(super) fn stream_records(&self) -> Vec<Record> {
        let mut out = Vec::new();
        for (name, s) in &self.streams.map {
            for (id, r) in &s.readers {
                if r.durable {
                    out.push(Record::StreamCommit {
                        stream: name.to_string(),
                        reader: id.to_string(),
                        next: r.committed,
                    });
                }
            }
        }
        out
    }

    /// Counters of every stream, by name. A group's committed offset is the last one
    /// durable.
    pub(crate) fn stream_stats(&self) -> Vec<(String, StreamStats)> {
        let durable = self.durable();
        self.streams
            .map
            .iter()
            .map(|(name, s)| {
                let (first, _) = s.log.bounds();
                let first = first.min(s.next);
                let groups = s
                    .readers
                    .iter()
                    .filter_map(|(id, r)| {
                        let (group, who, filter) = reader_parts(id)?;
                        group.then(|| {
                            // One topic level: a filter's `/`, `+` and `#` are escaped.
                            let label = match filter {
                                Some(f) => format!(
                                    "{who}%2F{}",
                                    f.replace('/', "%2F")
                                        .replace('+', "%2B")
                                        .replace('#', "%23")
                                ),
                                None => who.to_owned(),
                            };
                            let committed = if r.commit_lsn <= durable {
                                r.committed
                            } else {
                                r.shown
                            };
                            (label, committed, s.next.saturating_sub(committed))
                        })
                    })
                    .collect();
                let stats = StreamStats {
                    first_offset: first,
                    last_offset: s.next.checked_sub(1).filter(|&l| l >= first),
                    messages: s.next - first,
                    bytes: s.log.bytes(),
                    groups,
                };
                (name.to_string(), stats)
            })
            .collect()
    }
}

/// Whether reader `r` reads `entry` (its filter).
fn wanted(r: &Reader, entry: &Entry) -> bool {
    r.filter
        .as_deref()
        .map_or(true, |f| topic::matches(f, &entry.msg.topic))
}

/// The hash of `entry`'s key: the user property the stream names, else the topic.
fn key_of(settings: &Settings, entry: &Entry) -> u64 {
    settings
        .key
        .as_ref()
        .and_then(|prop| {
            entry
                .msg
                .user_property_pairs()
                .into_iter()
                .find(|(k, _)| **k == **prop)
        })
        .map_or_else(
            || key_hash(entry.msg.topic.as_bytes()),
            |(_, v)| key_hash(v.as_bytes()),
        )
}

/// The member (by index) that `key`'s next message goes to now: the best rendezvous
/// score among those online, if it has room and the key is not still in flight at
/// another member (a key moving waits for what it has in flight).
fn pick(r: &Reader, key: u64, online: &[bool], room: &[usize]) -> Option<usize> {
    let i = r
        .members
        .iter()
        .enumerate()
        .filter(|(i, _)| online.get(*i).copied().unwrap_or(false))
        .max_by_key(|(_, m)| score(key, &m.client))
        .map(|(i, _)| i)?;
    let moving = r.keys.get(&key).is_some_and(|k| k.0 != r.members[i].client);
    (!moving && room.get(i).copied().unwrap_or(0) > 0).then_some(i)
}

/// True when `key`'s member is full (or its key is moving) while some other member
/// has room: parking its message lets that member go on.
fn pick_blocked_other(r: &Reader, key: u64, online: &[bool], room: &[usize]) -> bool {
    let target = r
        .members
        .iter()
        .enumerate()
        .filter(|(i, _)| online.get(*i).copied().unwrap_or(false))
        .max_by_key(|(_, m)| score(key, &m.client))
        .map(|(i, _)| i);
    room.iter()
        .enumerate()
        .any(|(j, &n)| n > 0 && Some(j) != target)
}

/// Hands `entry` to member `i` of reader `r`: in flight, into the member's session.
fn send(
    r: &mut Reader,
    i: usize,
    key: u64,
    entry: &Entry,
    attempts: u32,
    (name, id): (&Arc<str>, &Arc<str>),
    (sessions, limits, clock, fx): (&mut shard::Shards, &QueueLimits, Clock, &mut Effects),
) {
    let m = &mut r.members[i];
    m.outstanding += 1;
    let (client, qos, sub_id) = (m.client.clone(), m.qos, m.sub_id);
    r.inflight.insert(entry.offset, (client.clone(), key));
    r.keys.entry(key).or_insert((client.clone(), 0)).1 += 1;
    let skipped = std::mem::take(&mut r.skipped);
    let d = Delivery {
        msg: stamped(entry, skipped),
        qos,
        retain: false,
        sub_ids: sub_id.into_iter().collect(),
        shared: None,
        dseq: 0,
        lsn: entry.lsn,
        queue: None,
        stream: Some(Arc::new(StreamTag {
            stream: name.clone(),
            reader: id.clone(),
            offset: entry.offset,
        })),
        attempts,
    };
    if let Some(s) = sessions.get_mut(&client) {
        // Bounded by the member's window, not by the session's queue limits.
        s.enqueue(d, limits, None, clock);
        if let Some(link) = s.link() {
            fx.wake(&link.notify);
        }
    }
}

/// Where a new reader starts.
fn resolve(stream: &Stream, start: Option<Start>) -> u64 {
    let (first, _) = stream.log.bounds();
    let end = stream.next;
    let start = start.unwrap_or(match stream.settings.default_offset {
        DefaultOffset::Earliest => Start::Earliest,
        DefaultOffset::Latest => Start::Latest,
    });
    match start {
        Start::Earliest => first.min(end),
        Start::Latest => end,
        Start::Offset(o) => o.clamp(first.min(end), end),
        Start::Time(ms) => {
            // The newest entries are in memory; older ones are sought in the log.
            match stream.recent.front() {
                Some(f) if f.ts <= ms || stream.recent.len() as u64 == end - first => stream
                    .recent
                    .iter()
                    .find(|e| e.ts >= ms)
                    .map_or(end, |e| e.offset),
                _ => stream.log.seek_time(ms).unwrap_or(end).min(end),
            }
        }
    }
}

/// The entry at `offset` (or, past a damaged stretch, the next one there is): from
/// `recent`, else from the reader's read-ahead, read from the log when needed.
fn entry_at(
    log: &dyn StreamLog,
    recent: &VecDeque<Entry>,
    r: &mut Reader,
    offset: u64,
    clock: Clock,
) -> Option<Entry> {
    if let Some(front) = recent.front() {
        if offset >= front.offset {
            return recent.get((offset - front.offset) as usize).cloned();
        }
    }
    while r.ahead.front().is_some_and(|e| e.offset < offset) {
        r.ahead.pop_front();
    }
    if r.ahead.front().map(|e| e.offset) != Some(offset) {
        r.ahead.clear();
        let now = clock.at;
        let now_ms = clock.unix_ms(now);
        let read = log.read(offset, READ_AHEAD, &mut |o, ts, b| {
            if let Some(Record::Msg { msg, .. }) = Record::decode(b) {
                let (m, _) = Message::from_stored(o, msg, now, now_ms);
                r.ahead.push_back(Entry {
                    offset: o,
                    ts,
                    lsn: 0,
                    msg: Arc::new(m),
                });
            }
        });
        if let Err(e) = read {
            tracing::error!(error = %e, offset, "stream unreadable");
            return None;
        }
    }
    r.ahead.front().cloned()
}

/// The message of `entry` as a reader gets it: with `mote-offset`, `mote-timestamp`
/// and, after a jump over removed messages, `mote-skipped`.
fn stamped(entry: &Entry, skipped: u64) -> Arc<Message> {
    let mut m = (*entry.msg).clone();
    let mut users = m.user_properties.to_vec();
    push_user_property(&mut users, "mote-offset", &entry.offset.to_string());
    push_user_property(&mut users, "mote-timestamp", &entry.ts.to_string());
    if skipped > 0 {
        push_user_property(&mut users, "mote-skipped", &skipped.to_string());
    }
    m.user_properties = Bytes::from(users);
    Arc::new(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_filters_parse() {
        let p = |s| parse_reader(s);
        assert_eq!(p("a/b"), None);
        assert_eq!(
            p("$stream/s"),
            Some(Ok(ReaderFilter {
                name: "s",
                start: None,
                filter: None
            }))
        );
        assert_eq!(
            p("$stream/s/@earliest/dev/+"),
            Some(Ok(ReaderFilter {
                name: "s",
                start: Some(Start::Earliest),
                filter: Some("dev/+")
            }))
        );
        assert_eq!(
            p("$stream/s/@@1700"),
            Some(Ok(ReaderFilter {
                name: "s",
                start: Some(Start::Time(1700)),
                filter: None
            }))
        );
        assert_eq!(
            p("$stream/s/@42").map(|r| r.map(|r| r.start)),
            Some(Ok(Some(Start::Offset(42))))
        );
        assert_eq!(p("$stream/s/@soon"), Some(Err(())));
        assert_eq!(p("$stream/+"), Some(Err(())));
        assert_eq!(p("$stream/s/"), Some(Err(())));
        let id = reader_id(Some("g"), "c", Some("a/#"));
        assert_eq!(reader_parts(&id), Some((true, "g", Some("a/#"))));
        let id = reader_id(None, "c/x", None);
        assert_eq!(reader_parts(&id), Some((false, "c/x", None)));
    }
}
