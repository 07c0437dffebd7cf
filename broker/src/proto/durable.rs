//! Journaling: what the core writes to the store and which replies wait for it.
//!
//! Every record is written for a reason ([`Why`]); whether the replies of the current
//! call wait until the record is durable is decided by that reason alone, in
//! [`Why::waits`] — the one table of durability decisions. The rule: a reply waits for a
//! record when losing the record after the reply went out would break what the reply
//! promised.

use super::*;

/// Why a journal record is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// CONNACK reports the session: Session Present and its expiry must survive a crash.
    Connack,
    /// SUBACK / UNSUBACK confirm a subscription change of a persistent session.
    Subscription,
    /// PUBACK / PUBREC confirm that a message is kept: queued for a persistent session,
    /// retained or deleted from the retained set, an inbound QoS 2 id held, a will kept.
    Accept,
    /// An outbound QoS 2 PUBLISH leaves only once its packet id is kept: after a crash it
    /// must be re-sent with the same id, or the receiver would take it for a new message.
    SendQos2,
    /// PUBREL leaves only once PUBREC is kept: re-sending the PUBLISH after the receiver
    /// let the id go would deliver it twice.
    Release,
    /// Nothing is promised: an end (delivery done or dropped, session offline or ended,
    /// will cleared, inbound QoS 2 released), a QoS 0 publish's retained change, an
    /// outbound QoS 1 send. A crash that loses it redoes an idempotent step at most.
    NoPromise,
}

impl Why {
    /// True when the replies of the call that wrote the record wait until it is durable.
    pub(crate) const fn waits(self) -> bool {
        match self {
            Why::Connack | Why::Subscription | Why::Accept | Why::SendQos2 | Why::Release => true,
            Why::NoPromise => false,
        }
    }

    /// [`Why::Accept`] for a QoS 1/2 publish (it is acknowledged), else
    /// [`Why::NoPromise`].
    pub(crate) fn accept(qos: QoS) -> Why {
        if qos == QoS::AtMostOnce {
            Why::NoPromise
        } else {
            Why::Accept
        }
    }
}

impl Core {
    /// Appends `rec`, written because of `why`, to the journal; when `why` waits, the
    /// current call's replies are held until it is durable. Returns its position (0
    /// without a journal).
    pub(super) fn log(&mut self, rec: Record, why: Why) -> u64 {
        let Some(j) = &self.journal else {
            return 0;
        };
        let lsn = j.append(&rec);
        if why.waits() && j.waits() {
            self.wait_lsn = self.wait_lsn.max(lsn);
        }
        lsn
    }

    /// As [`Core::log`], for a record `encode` writes in place.
    pub(super) fn log_with(&mut self, why: Why, encode: &mut dyn FnMut(&mut Vec<u8>)) -> u64 {
        let Some(j) = &self.journal else {
            return 0;
        };
        let lsn = j.append_with(encode);
        if why.waits() && j.waits() {
            self.wait_lsn = self.wait_lsn.max(lsn);
        }
        lsn
    }

    /// The journal position the replies produced since the last call must wait for
    /// (0 = none), resetting it.
    pub(crate) fn take_wait_lsn(&mut self) -> u64 {
        std::mem::take(&mut self.wait_lsn)
    }

    /// Position up to which deliveries may be sent.
    pub(super) fn durable(&self) -> u64 {
        match &self.journal {
            Some(j) if j.waits() => j.durable(),
            _ => u64::MAX,
        }
    }

    /// A fresh message id.
    pub(super) fn mid(&mut self) -> u64 {
        let m = self.next_mid;
        self.next_mid += 1;
        m
    }

    /// Writes `msg`'s record the first time in this compaction epoch that a stored thing
    /// (delivery, retained entry, will) refers to it (a record from an older epoch may go
    /// with the next snapshot, which copies only what it saw).
    /// will) refers to it. Records of messages nothing refers to any more are dropped
    /// by the next compaction.
    pub(super) fn hold_msg(&mut self, msg: &Message, will_expiry: Option<u32>, now: Instant) {
        if self.journal.is_none()
            || msg.stored_epoch.swap(self.epoch, Ordering::Relaxed) == self.epoch
        {
            return;
        }
        let stored = msg.as_stored(will_expiry, now, self.clock.unix_ms(now));
        self.log_with(Why::Accept, &mut |b| stored.encode_msg(msg.mid, b));
    }

    /// Journals what a session's outbound half did.
    pub(super) fn log_events(&mut self, client: &Arc<str>, events: Vec<Event>) {
        for e in events {
            match e {
                Event::Sent {
                    dseq,
                    packet_id,
                    qos,
                } => {
                    let rec = Record::Sent {
                        client: client.to_string(),
                        dseq,
                        packet_id,
                    };
                    let why = if qos == QoS::ExactlyOnce {
                        Why::SendQos2
                    } else {
                        Why::NoPromise
                    };
                    self.log(rec, why);
                }
                Event::Released { dseq } => {
                    let rec = Record::Released {
                        client: client.to_string(),
                        dseq,
                    };
                    self.log(rec, Why::Release);
                }
                Event::QueueFreed { queue } => self.queue_acked(&queue, client),
                Event::StreamDone(tag) => self.stream_done(&tag),
                Event::QueueDone { queue, dseq, mid } => {
                    self.timers.cancel(&Timer::Visible(client.clone(), mid));
                    if dseq != 0 {
                        let rec = Record::Done {
                            client: queue.to_string(),
                            dseq,
                        };
                        self.log(rec, Why::NoPromise);
                    }
                    self.queue_acked(&queue, client);
                }
                Event::Finished { dseq } => {
                    let rec = Record::Done {
                        client: client.to_string(),
                        dseq,
                    };
                    self.log(rec, Why::NoPromise);
                }
            }
        }
    }
}

/// The store's log as the core sees it: records appended in order, each at a position
/// that becomes durable later (the runtime backs it with `store::journal`).
pub(crate) trait Journal: Send + Sync + std::fmt::Debug {
    /// Appends the record `encode` writes; returns its position.
    fn append_with(&self, encode: &mut dyn FnMut(&mut Vec<u8>)) -> u64;
    /// Appends `rec`; returns its position.
    fn append(&self, rec: &Record) -> u64 {
        self.append_with(&mut |b| rec.encode(b))
    }
    /// True when replies must wait for their records' positions to become durable.
    fn waits(&self) -> bool;
    /// The highest position known durable.
    fn durable(&self) -> u64;
    /// Bytes appended since the last snapshot (the compaction trigger).
    fn since_snapshot(&self) -> u64;
    /// Starts a snapshot that replaces everything appended before it.
    fn snapshot_begin(&self);
    /// Framed records of the snapshot.
    fn snapshot_chunk(&self, framed: Vec<u8>);
    /// Ends the snapshot.
    fn snapshot_end(&self);
}

/// A session's queue tail kept outside memory (the runtime backs it with a spill file):
/// opaque entries, each standing for `cost` bytes of queue, oldest first.
pub(crate) trait QueueTail: Send + std::fmt::Debug {
    /// Appends the entry `encode` writes.
    ///
    /// # Errors
    /// When it cannot be kept; the caller keeps the delivery in memory instead.
    fn push(&mut self, cost: usize, encode: &mut dyn FnMut(&mut Vec<u8>)) -> std::io::Result<()>;
    /// Takes entries from the front until their cost reaches `max_bytes` (at least one).
    ///
    /// # Errors
    /// When the tail cannot be read, or `visit` fails.
    fn pop_chunk(
        &mut self,
        max_bytes: usize,
        visit: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()>;
    /// A view of the entries waiting now, readable later from another thread while this
    /// tail goes on (for snapshots).
    ///
    /// # Errors
    /// When the view cannot be made.
    fn frozen(&mut self) -> std::io::Result<Box<dyn FrozenTail>>;
    /// Entries waiting.
    fn count(&self) -> usize;
    /// Summed cost of the entries waiting.
    fn bytes(&self) -> usize;
}

/// The entries a [`QueueTail`] held when the view was taken.
pub(crate) trait FrozenTail: Send + std::fmt::Debug {
    /// Visits every entry, oldest first.
    ///
    /// # Errors
    /// When the entries cannot be read, or `visit` fails.
    fn for_each(
        &mut self,
        visit: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()>;
}

/// Makes queue tails.
pub(crate) trait TailStore: Send + Sync + std::fmt::Debug {
    /// A new, empty tail.
    ///
    /// # Errors
    /// When none can be made (the caller keeps deliveries in memory).
    fn create(&self) -> std::io::Result<Box<dyn QueueTail>>;
}

/// A stream's log as the core sees it (`docs/streams.md`): entries at dense offsets,
/// each with a timestamp and opaque bytes (the runtime backs it with `store::stream`,
/// written by the journal's thread; [`MemStreamLog`] keeps it in memory).
pub(crate) trait StreamLog: Send + std::fmt::Debug {
    /// The first offset kept and one past the last appended.
    fn bounds(&self) -> (u64, u64);
    /// Bytes kept.
    fn bytes(&self) -> u64;
    /// Appends the entry `encode` writes at `offset` (one past the last); returns the
    /// journal position that makes it durable (0: it is already).
    fn append(&mut self, offset: u64, ts: u64, encode: &mut dyn FnMut(&mut Vec<u8>)) -> u64;
    /// Visits entries from `from` (or the first kept after it) in order, until
    /// `max_bytes` of them (at least one); only entries whose position is durable are
    /// asked for.
    ///
    /// # Errors
    /// When the entries cannot be read.
    fn read(
        &self,
        from: u64,
        max_bytes: usize,
        visit: &mut dyn FnMut(u64, u64, &[u8]),
    ) -> std::io::Result<()>;
    /// The first offset with a timestamp at or after `ts`.
    ///
    /// # Errors
    /// When the entries cannot be read.
    fn seek_time(&self, ts: u64) -> std::io::Result<u64>;
    /// Drops the oldest entries (whole segments) older than `older_than` (Unix ms) or
    /// beyond `max_bytes`; returns the first offset kept.
    ///
    /// # Errors
    /// When files cannot be deleted.
    fn trim(&mut self, older_than: Option<u64>, max_bytes: u64) -> std::io::Result<u64>;
}

/// Opens streams' logs.
pub(crate) trait StreamStore: Send + Sync + std::fmt::Debug {
    /// The names of the streams kept.
    fn list(&self) -> Vec<String>;
    /// Opens (creating) the log of stream `name`.
    ///
    /// # Errors
    /// When its files cannot be read or created.
    fn open(&self, name: &str, segment_bytes: u64) -> std::io::Result<Box<dyn StreamLog>>;
}

/// A stream kept in memory (the in-memory store, and the core's tests).
#[derive(Debug, Default)]
pub(crate) struct MemStreamLog {
    /// (offset, timestamp, bytes), oldest first.
    entries: std::collections::VecDeque<(u64, u64, Vec<u8>)>,
    next: u64,
    bytes: u64,
}

impl StreamLog for MemStreamLog {
    fn bounds(&self) -> (u64, u64) {
        (self.entries.front().map_or(self.next, |e| e.0), self.next)
    }
    fn bytes(&self) -> u64 {
        self.bytes
    }
    fn append(&mut self, offset: u64, ts: u64, encode: &mut dyn FnMut(&mut Vec<u8>)) -> u64 {
        let mut b = Vec::new();
        encode(&mut b);
        self.bytes += b.len() as u64;
        self.entries.push_back((offset, ts, b));
        self.next = offset + 1;
        0
    }
    fn read(
        &self,
        from: u64,
        max_bytes: usize,
        visit: &mut dyn FnMut(u64, u64, &[u8]),
    ) -> std::io::Result<()> {
        let first = self.bounds().0;
        let skip = usize::try_from(from.saturating_sub(first)).unwrap_or(usize::MAX);
        let mut seen = 0;
        for (o, t, b) in self.entries.iter().skip(skip) {
            visit(*o, *t, b);
            seen += b.len();
            if seen >= max_bytes {
                break;
            }
        }
        Ok(())
    }
    fn seek_time(&self, ts: u64) -> std::io::Result<u64> {
        let i = self.entries.partition_point(|e| e.1 < ts);
        Ok(self.entries.get(i).map_or(self.next, |e| e.0))
    }
    fn trim(&mut self, older_than: Option<u64>, max_bytes: u64) -> std::io::Result<u64> {
        while let Some((_, t, b)) = self.entries.front() {
            if older_than.is_some_and(|o| *t < o) || self.bytes > max_bytes {
                self.bytes -= b.len() as u64;
                self.entries.pop_front();
            } else {
                break;
            }
        }
        Ok(self.bounds().0)
    }
}
