//! Snapshots of the durable state (compaction) and recovery from the store.

use super::*;
use durable::FrozenTail;
use retained::Cursor;

impl Core {
    /// Recovery, step 1 of 3: the sessions of pass 1 with their subscriptions, expiry
    /// and inbound QoS 2 state; their deliveries follow through
    /// [`Core::restore_delivery`], retained messages and wills through
    /// [`Core::restore_finish`].
    pub(crate) fn restore_sessions(&mut self, index: &Index, now: Instant) {
        let now_ms = self.clock.unix_ms(now);
        self.next_mid = self.next_mid.max(index.max_mid + 1);
        self.next_dseq = self.next_dseq.max(index.max_dseq + 1);
        let mut consumers = Vec::new();
        // Stream readers' positions first; their members come with the sessions.
        self.restore_stream_readers(index);
        let mut readers = Vec::new();
        for (client, si) in &index.sessions {
            let id: Arc<str> = Arc::from(client.as_str());
            let mut s = Session::new(id.clone(), self.mem.clone());
            s.set_expiry_interval(si.expiry);
            s.set_user(si.user.as_deref().map(Arc::from));
            s.set_persisted(true);
            let offline = si.offline_at_ms.map_or(now, |ms| {
                crate::proto::message::unix_ms_to_instant(ms, now, now_ms)
            });
            s.set_offline_since(offline);
            for (filter, &(opts, sub_id)) in &si.subs {
                let options = SubOptions::from_byte(opts, Protocol::V5).unwrap_or_default();
                let sub_id = (sub_id != 0).then_some(sub_id);
                let (key, inner) = subscribe::trie_key(&id, filter);
                s.subscribe(
                    Arc::from(filter.as_str()),
                    Subscription {
                        options,
                        id: sub_id,
                    },
                );
                if let Some(name) = queues::queue_of(filter) {
                    consumers.push((name.to_owned(), id.clone(), options.qos));
                    continue;
                }
                if streams::parse_reader(inner).is_some() {
                    readers.push((id.clone(), filter.clone(), options.qos, sub_id));
                    continue;
                }
                let entry = SubEntry {
                    qos: options.qos,
                    no_local: options.no_local,
                    retain_as_published: options.retain_as_published,
                    id: sub_id,
                    // Decided by the access rules the runtime sets after recovery.
                    checked: false,
                };
                self.subs.insert(inner, key, entry);
            }
            s.restore_inbound_qos2(si.inbound2.clone());
            if si.expiry != u32::MAX {
                let at = offline + Duration::from_secs(u64::from(si.expiry));
                self.timers.set(Timer::Expiry(id.clone()), at);
            }
            if si.offline_at_ms.is_none() {
                self.log(
                    Record::SessionOffline {
                        client: id.to_string(),
                        at_ms: now_ms,
                    },
                    Why::NoPromise,
                );
            }
            self.shards.insert(id, Box::new(s));
        }
        // Work queues (their own sessions came back above) and their consumers.
        for (name, client, qos) in consumers {
            self.add_consumer(&name, &client, (qos, None), now);
        }
        for (client, full, qos, sub_id) in readers {
            let (group, inner) = subscribe::held_filter(&full);
            if let Some(Ok(rf)) = streams::parse_reader(inner) {
                // No start: a reader that had a position keeps it.
                let rf = streams::ReaderFilter { start: None, ..rf };
                self.add_reader(&client, group, &rf, (qos, sub_id), None, now);
            }
        }
        let queue_ids: Vec<String> = index
            .sessions
            .keys()
            .filter_map(|id| queues::queue_of(id).map(str::to_owned))
            .collect();
        for name in queue_ids {
            self.add_queue(&name);
        }
    }

    /// Recovery, step 2: one live delivery of pass 2, in log order (the order its
    /// session queued them). A sent one goes back in flight; the others are queued in
    /// memory until the queue budget is used, then straight into the spill file.
    pub(crate) fn restore_delivery(
        &mut self,
        client: &str,
        dseq: u64,
        d: DeliveryImage,
        msg: Arc<Message>,
        now: Instant,
    ) {
        let clock = self.clock(now);
        let Some(s) = self.shards.get_mut(client) else {
            return;
        };
        let delivery = Delivery {
            msg,
            qos: QoS::from_u8(d.qos).unwrap_or(QoS::AtLeastOnce),
            retain: d.retain,
            sub_ids: d.sub_ids,
            shared: d.shared.map(|(g, f)| (Arc::from(g), Arc::from(f))),
            dseq,
            lsn: 0,
            queue: None,
            stream: None,
            attempts: d.attempts,
        };
        match d.packet_id {
            Some(packet_id) => s.restore_inflight(Inflight {
                packet_id,
                stale: false,
                delivery,
                phase: if d.released {
                    Phase::Released
                } else {
                    Phase::Published
                },
            }),
            None => {
                let spill = spill_to(&self.tails, &self.mem, self.budget);
                s.restore_queued(delivery, spill, clock);
            }
        }
    }

    /// Recovery, step 3: retained messages and wills, from the messages pass 2 kept.
    pub(crate) fn restore_finish(
        &mut self,
        index: &Index,
        messages: &HashMap<u64, (Arc<Message>, Option<u32>)>,
    ) {
        for (topic, mid) in &index.retained {
            if let Some((m, _)) = messages.get(mid) {
                let topic = Arc::from(topic.as_str());
                self.retained_bytes += m.cost();
                if let Some(old) = self.retained.insert(topic, m.clone(), m.expires_at) {
                    self.retained_bytes -= old.cost();
                }
            }
        }
        for (client, si) in &index.sessions {
            let (Some((mid, delay)), Some(s)) = (si.will, self.shards.get_mut(client.as_str()))
            else {
                continue;
            };
            let (Some((msg, will_expiry)), Some(offline)) = (messages.get(&mid), s.offline_since())
            else {
                continue;
            };
            s.set_will(Some(WillState {
                msg: msg.clone(),
                delay,
                expiry: *will_expiry,
            }));
            let wait = Duration::from_secs(u64::from(delay.min(si.expiry)));
            let id: Arc<str> = Arc::from(client.as_str());
            self.timers.set(Timer::Will(id), offline + wait);
        }
        // Recovery runs at the core's creation: its clock's moment is now.
        self.restore_delayed(self.clock.at);
    }

    /// A copy of the durable state now, to be written as a snapshot without the core
    /// (messages are shared, not copied; a spill file is read through a frozen view of
    /// the entries it holds now).
    fn image(&mut self, now: Instant) -> Image {
        // Retained messages are copied later, in steps (`copy_retained`).
        let retained = Vec::new();
        let now_ms = self.clock.unix_ms(now);
        let mut sessions = Vec::new();
        // Work-queue jobs a consumer holds are still the queue's: they are written back
        // into their queue, whatever the consumer's session (a clean one included).
        let mut queue_held = Vec::new();
        for s in self.shards.values() {
            // A stale entry's copy is back in its queue (or waiting out a retry delay),
            // written from there.
            let inflight = s.inflight().filter(|i| !i.stale).map(|i| &i.delivery);
            for d in inflight.chain(s.queued()) {
                if let (Some(q), true) = (&d.queue, d.dseq != 0) {
                    let mut d = d.clone();
                    d.qos = QoS::AtLeastOnce;
                    queue_held.push((q.clone(), d));
                }
            }
        }
        // Jobs waiting out a retry delay are still their queue's.
        for (q, d) in self.retrying_jobs() {
            let mut d = d.clone();
            d.qos = QoS::AtLeastOnce;
            queue_held.push((q.clone(), d));
        }
        // Delayed publishes wait outside their store session's queue: written back into it.
        let delayed_id: Arc<str> = Arc::from(delayed::STORE_ID);
        for d in self.delayed.stored() {
            queue_held.push((delayed_id.clone(), d.clone()));
        }
        for (id, s) in self.shards.iter_mut() {
            if !s.persisted() {
                continue;
            }
            let offline_at_ms = match (s.offline_since(), s.online()) {
                (Some(at), false) => {
                    Some(crate::proto::message::instant_to_unix_ms(at, now, now_ms))
                }
                _ => None,
            };
            let subs = s
                .subscriptions()
                .map(|(f, sub)| (f.clone(), sub.options.to_byte(Protocol::V5), sub.id))
                .collect();
            let inflight = s
                .inflight()
                .map(|i| (i.delivery.clone(), Some((i.packet_id, i.phase))));
            let queued = s.queued().map(|d| (d.clone(), None));
            let deliveries = inflight
                .chain(queued)
                .filter(|(d, _)| d.dseq != 0 && d.queue.is_none())
                .collect();
            let spill = match s.spill_mut().map(|t| t.frozen()) {
                Some(Ok(view)) => Some(view),
                Some(Err(e)) => {
                    tracing::error!(client = %id, error = %e, "spill unreadable while compacting");
                    None
                }
                None => None,
            };
            sessions.push(SessionImage {
                client: id.clone(),
                expiry: s.expiry_interval(),
                user: s.user().cloned(),
                offline_at_ms,
                subs,
                deliveries,
                spill,
                inbound2: s.inbound_qos2().collect(),
                will: s.will().cloned(),
            });
        }
        Image {
            now,
            now_ms,
            retained,
            sessions,
            queue_held,
            streams: self.stream_records(),
        }
    }

    /// Starts a compaction when the journal has grown to several times the live state:
    /// the journal starts its snapshot and the state is copied, here, under the core's
    /// lock; the snapshot is then encoded and written by [`Compaction::run`], away from
    /// it. Records appended meanwhile go to the log after the snapshot. `None` when no
    /// compaction is due or one is still running.
    pub(crate) fn begin_compaction(&mut self, now: Instant) -> Option<Compaction> {
        let j = self.journal.clone()?;
        if self.compacting {
            return None;
        }
        let since = j.since_snapshot();
        if since < self.compact_min.max(self.last_snapshot.saturating_mul(2)) {
            return None;
        }
        // Rewriting a log that is mostly live state reclaims little: wait until at least
        // half of the log can go. The live state is estimated by the queue cost of the
        // queued deliveries (in memory and spilled), of the order of their records' size.
        let (_, spilled) = self.spilled();
        let live = (self.queued_memory() + spilled) as u64;
        if self.last_snapshot + since < live.saturating_mul(2) {
            return None;
        }
        self.compacting = true;
        Some(self.start_snapshot(j, now))
    }

    /// Starts the journal's snapshot and copies the sessions' durable state now. A new
    /// compaction epoch starts: a message referred to from here on has its record
    /// written again (`hold_msg`), because the snapshot may not hold it (retained
    /// messages are copied in steps, and one may be gone before its step).
    fn start_snapshot(&mut self, j: Arc<dyn Journal>, now: Instant) -> Compaction {
        self.epoch += 1;
        j.snapshot_begin();
        Compaction {
            image: self.image(now),
            journal: j,
            retained_cursor: None,
            retained_done: false,
        }
    }

    /// Copies up to `limit` more retained messages into a compaction's image; true once
    /// all are copied. Called under the core's lock in steps, so a million retained
    /// messages never hold it long. Changes between steps are safe: every retained
    /// change since the snapshot began is in the log after it and replays on top, and the
    /// epoch makes messages referred to since then carry their own record.
    pub(crate) fn copy_retained(&mut self, c: &mut Compaction, limit: usize) -> bool {
        if c.retained_done {
            return true;
        }
        let retained = &mut c.image.retained;
        let cursor = self
            .retained
            .walk_all(c.retained_cursor.as_ref(), limit, |topic, msg| {
                if !is_sys(topic) {
                    retained.push((topic.clone(), msg.clone()));
                }
            });
        c.retained_done = cursor.is_none();
        c.retained_cursor = cursor;
        c.retained_done
    }

    /// A compaction from [`Core::begin_compaction`] wrote `bytes`.
    pub(crate) fn compaction_done(&mut self, bytes: u64) {
        self.compacting = false;
        self.last_snapshot = bytes;
        tracing::info!(bytes, "compacted the store");
    }

    /// Deliveries waiting in spill files across all sessions, and their queue cost.
    pub(super) fn spilled(&self) -> (usize, usize) {
        let spills = self.shards.values().map(|s| s.spilled());
        spills.fold((0, 0), |(n, b), (sn, sb)| (n + sn, b + sb))
    }

    /// Writes a snapshot of the live state that replaces the journal's history, now and
    /// in full (at start-up); returns its size.
    pub(crate) fn compact(&mut self, now: Instant) -> u64 {
        let Some(j) = self.journal.clone() else {
            return 0;
        };
        let mut c = self.start_snapshot(j, now);
        while !self.copy_retained(&mut c, usize::MAX) {}
        let bytes = c.run();
        self.last_snapshot = bytes;
        bytes
    }
}

/// A snapshot being made: the state as it was when the journal started the snapshot,
/// and the journal to write it to. It is `Send`: the runtime writes it on another thread
/// while the core goes on.
#[derive(Debug)]
pub(crate) struct Compaction {
    image: Image,
    journal: Arc<dyn Journal>,
    /// Where copying the retained messages resumes.
    retained_cursor: Option<Cursor>,
    /// All retained messages are copied.
    retained_done: bool,
}

impl Compaction {
    /// Encodes the snapshot's records, hands them to the journal in chunks of about
    /// 1 MiB (waiting when the journal's writer falls behind) and ends the snapshot;
    /// returns its size.
    pub(crate) fn run(self) -> u64 {
        let j = self.journal;
        let bytes = self.image.write(&mut |chunk| j.snapshot_chunk(chunk));
        j.snapshot_end();
        bytes
    }
}

/// The durable state at one point, shared or copied out of the core.
#[derive(Debug)]
struct Image {
    now: Instant,
    now_ms: u64,
    retained: Vec<(Arc<str>, Arc<Message>)>,
    sessions: Vec<SessionImage>,
    /// Work-queue jobs held by consumers, by queue (store id).
    queue_held: Vec<(Arc<str>, Delivery)>,
    /// Stream readers' committed offsets.
    streams: Vec<Record>,
}

/// One persistent session in an [`Image`].
#[derive(Debug)]
struct SessionImage {
    client: Arc<str>,
    expiry: u32,
    user: Option<Arc<str>>,
    offline_at_ms: Option<u64>,
    /// Full filter, options byte (v5 form), subscription identifier.
    subs: Vec<(Arc<str>, u8, Option<u32>)>,
    /// Stored deliveries in flight (with packet id and phase), then queued in memory.
    deliveries: Vec<(Delivery, Option<(u16, Phase)>)>,
    /// The queue's tail on disk.
    spill: Option<Box<dyn FrozenTail>>,
    inbound2: Vec<u16>,
    will: Option<WillState>,
}

impl Image {
    /// Framed journal records describing this state, handed to `sink` in chunks of
    /// about 1 MiB; returns the total size.
    fn write(mut self, sink: &mut dyn FnMut(Vec<u8>)) -> u64 {
        let mut snap = Snapshot {
            sink,
            out: Vec::new(),
            emitted: HashSet::new(),
            now: self.now,
            now_ms: self.now_ms,
            total: 0,
        };
        for (topic, m) in &self.retained {
            snap.msg(m, None);
            snap.put(Record::RetainSet {
                topic: topic.to_string(),
                mid: m.mid,
            });
        }
        let clock = Clock::new(self.now, self.now_ms);
        for s in &mut self.sessions {
            let client = s.client.to_string();
            snap.put(Record::SessionOpen {
                client: client.clone(),
                expiry: s.expiry,
                user: s.user.as_deref().map(str::to_owned),
            });
            if let Some(at_ms) = s.offline_at_ms {
                snap.put(Record::SessionOffline {
                    client: client.clone(),
                    at_ms,
                });
            }
            for (filter, options, id) in &s.subs {
                snap.put(Record::SubAdd {
                    client: client.clone(),
                    filter: filter.to_string(),
                    options: *options,
                    id: id.unwrap_or(0),
                });
            }
            for (d, sent) in &s.deliveries {
                snap.delivery(&client, d);
                if let Some((packet_id, phase)) = *sent {
                    snap.put(Record::Sent {
                        client: client.clone(),
                        dseq: d.dseq,
                        packet_id,
                    });
                    if phase == Phase::Released {
                        snap.put(Record::Released {
                            client: client.clone(),
                            dseq: d.dseq,
                        });
                    }
                }
            }
            if let Some(spill) = s.spill.as_mut() {
                let r = spill.for_each(&mut |e| {
                    snap.spilled_delivery(&client, &session::decode_spilled(e, clock)?);
                    Ok(())
                });
                if let Err(e) = r {
                    tracing::error!(client = %client, error = %e, "spill unreadable while compacting");
                }
            }
            for &packet_id in &s.inbound2 {
                snap.put(Record::Inbound2 {
                    client: client.clone(),
                    packet_id,
                });
            }
            if let Some(w) = &s.will {
                snap.msg(&w.msg, w.expiry);
                snap.put(Record::Will {
                    client: client.clone(),
                    mid: w.msg.mid,
                    delay: w.delay,
                });
            }
        }
        for (queue, d) in &self.queue_held {
            snap.delivery(queue, d);
        }
        for rec in self.streams.drain(..) {
            snap.put(rec);
        }
        snap.flush();
        snap.total
    }
}

/// Builds a snapshot: framed records, each in-memory message written once, streamed to
/// a sink in chunks.
struct Snapshot<'s> {
    sink: &'s mut dyn FnMut(Vec<u8>),
    out: Vec<u8>,
    emitted: HashSet<u64>,
    now: Instant,
    now_ms: u64,
    total: u64,
}

/// Size of the chunks a snapshot is handed over in.
const SNAPSHOT_CHUNK: usize = 1024 * 1024;

impl Snapshot<'_> {
    fn put(&mut self, rec: Record) {
        self.put_with(&mut |b| rec.encode(b));
    }

    fn put_with(&mut self, encode: &mut dyn FnMut(&mut Vec<u8>)) {
        crate::store::log::frame_with(&mut self.out, encode);
        if self.out.len() >= SNAPSHOT_CHUNK {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if !self.out.is_empty() {
            self.total += self.out.len() as u64;
            (self.sink)(std::mem::take(&mut self.out));
        }
    }

    /// The message of `d` (once) and its `Enqueue` record.
    fn delivery(&mut self, client: &str, d: &Delivery) {
        self.msg(&d.msg, None);
        self.enqueue(client, d);
        if d.attempts > 0 {
            self.put(Record::Attempts {
                client: client.to_owned(),
                dseq: d.dseq,
                attempts: d.attempts,
            });
        }
    }

    /// A delivery read back from a spill file: its message is written without
    /// remembering the id (spilled messages are copies; a duplicate record is harmless,
    /// a set of every id is not).
    fn spilled_delivery(&mut self, client: &str, d: &Delivery) {
        if !self.emitted.contains(&d.msg.mid) {
            self.put_msg(&d.msg, None);
        }
        self.enqueue(client, d);
    }

    fn enqueue(&mut self, client: &str, d: &Delivery) {
        let rec = d.enqueue_record(client);
        self.put_with(&mut |b| rec.encode(b));
    }

    fn msg(&mut self, m: &Message, will_expiry: Option<u32>) {
        if self.emitted.insert(m.mid) {
            self.put_msg(m, will_expiry);
        }
    }

    fn put_msg(&mut self, m: &Message, will_expiry: Option<u32>) {
        let stored = m.as_stored(will_expiry, self.now, self.now_ms);
        self.put_with(&mut |b| stored.encode_msg(m.mid, b));
    }
}
