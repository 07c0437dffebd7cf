//! Journaling: what the core writes to the store and which replies wait for it.

use super::*;

impl Core {
    /// Appends `rec` to the journal; with `wait`, the current call's replies are held
    /// until it is durable. Returns its position (0 without a journal).
    pub(super) fn log(&mut self, rec: Record, wait: bool) -> u64 {
        let Some(j) = &self.journal else {
            return 0;
        };
        let lsn = j.append(&rec);
        if wait && j.waits() {
            self.wait_lsn = self.wait_lsn.max(lsn);
        }
        lsn
    }

    /// As [`Core::log`], for a record `encode` writes in place.
    pub(super) fn log_with(&mut self, wait: bool, encode: &mut dyn FnMut(&mut Vec<u8>)) -> u64 {
        let Some(j) = &self.journal else {
            return 0;
        };
        let lsn = j.append_with(encode);
        if wait && j.waits() {
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

    /// Writes `msg`'s record the first time a stored thing (delivery, retained entry,
    /// will) refers to it. Records of messages nothing refers to any more are dropped
    /// by the next compaction.
    pub(super) fn hold_msg(&mut self, msg: &Message, will_expiry: Option<u32>, now: Instant) {
        if self.journal.is_none() || msg.stored.swap(true, Ordering::Relaxed) {
            return;
        }
        let stored = msg.as_stored(will_expiry, now, self.clock.unix_ms(now));
        self.log_with(true, &mut |b| stored.encode_msg(msg.mid, b));
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
                    // A QoS 2 PUBLISH may go out only once its packet id is durable: after
                    // a crash it must be re-sent with the same id, or the receiver would
                    // take it for a new message.
                    let rec = Record::Sent {
                        client: client.to_string(),
                        dseq,
                        packet_id,
                    };
                    self.log(rec, qos == QoS::ExactlyOnce);
                }
                Event::Released { dseq } => {
                    // PUBREL only after PUBREC is durable: re-sending the PUBLISH after
                    // the receiver let the id go would deliver it twice.
                    self.log(
                        Record::Released {
                            client: client.to_string(),
                            dseq,
                        },
                        true,
                    );
                }
                Event::Finished { dseq } => {
                    self.log(
                        Record::Done {
                            client: client.to_string(),
                            dseq,
                        },
                        false,
                    );
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
