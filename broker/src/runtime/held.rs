//! Replies held back until the journal has their records, while the connection reads on.
//!
//! Why: a connection used to handle a batch of packets, wait until the batch's records
//! were durable (an fsync under `--fsync always`), write the replies, and only then read
//! again. A producer's next publishes sat in the socket for that fsync: with 8 workers
//! and a producer at 5,000 jobs/s, a job's p99 from send to worker was 12 ms where
//! `--fsync never` made it 0.8 ms. Now the connection goes on reading and handling
//! while earlier replies wait; the replies still leave strictly in the order they were
//! made, each batch once its own position is durable, and the connections a batch
//! woke (its subscribers) are woken then too. The durability rule is unchanged: nothing
//! is acknowledged before it is kept.

use std::collections::VecDeque;

use crate::proto::Effects;

/// Batches of replies a connection holds at most; past it, it stops reading until the
/// first is released (so a client cannot make it buffer without bound).
pub(crate) const MAX_HELD: usize = 64;

/// What of a connection's outbound buffer may be sent, and what waits.
///
/// The buffer's first `ready` bytes may be sent now. Each waiting batch ends at its
/// offset in the buffer and waits for its journal position; batches are released in
/// order.
#[derive(Debug, Default)]
pub(crate) struct Held {
    ready: usize,
    waiting: VecDeque<Waiting>,
}

/// One batch of replies that waits.
#[derive(Debug)]
struct Waiting {
    /// Where the batch ends in the outbound buffer.
    end: usize,
    /// The journal position it waits for.
    lsn: u64,
    /// The connections it woke, woken once it is released.
    fx: Effects,
}

impl Held {
    /// A batch of replies now ends the outbound buffer at `end`; it waits for journal
    /// position `lsn` (0: nothing), and `durable` is the position durable now. It is
    /// released at once when nothing waits before it and `lsn` is durable; it joins the
    /// batch before it when that one waits for as much.
    pub(crate) fn push(&mut self, end: usize, lsn: u64, mut fx: Effects, durable: u64) {
        match self.waiting.back_mut() {
            None if lsn <= durable => {
                self.ready = end;
                fx.run();
            }
            // Due no later than the batch before it: they go together.
            Some(back) if lsn <= back.lsn => {
                back.end = end;
                back.fx.wake.append(&mut fx.wake);
            }
            _ => self.waiting.push_back(Waiting { end, lsn, fx }),
        }
    }

    /// Releases, in order, the batches whose positions are at most `durable`.
    pub(crate) fn release(&mut self, durable: u64) {
        while self.waiting.front().is_some_and(|w| w.lsn <= durable) {
            if let Some(mut w) = self.waiting.pop_front() {
                self.ready = w.end;
                w.fx.run();
            }
        }
    }

    /// The position the first waiting batch waits for.
    pub(crate) fn head(&self) -> Option<u64> {
        self.waiting.front().map(|w| w.lsn)
    }

    /// The highest position a waiting batch waits for.
    pub(crate) fn last(&self) -> Option<u64> {
        self.waiting.iter().map(|w| w.lsn).max()
    }

    /// True when the connection must not read more until a batch is released.
    pub(crate) fn full(&self) -> bool {
        self.waiting.len() >= MAX_HELD
    }

    /// Bytes at the front of a buffer of `len` bytes that may be sent now.
    pub(crate) fn sendable(&self, len: usize) -> usize {
        if self.waiting.is_empty() {
            len
        } else {
            self.ready
        }
    }

    /// `n` bytes from the front of the buffer were sent (at most [`Held::sendable`]).
    pub(crate) fn sent(&mut self, n: usize) {
        self.ready = self.ready.saturating_sub(n);
        for w in &mut self.waiting {
            w.end -= n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[derive(Debug, Default)]
    struct Count(AtomicUsize, crate::proto::session::Kick);

    impl crate::proto::session::Wake for Count {
        fn wake(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        fn kick(&self) -> &crate::proto::session::Kick {
            &self.1
        }
    }

    fn fx(c: &Arc<Count>) -> Effects {
        Effects {
            wake: vec![c.clone()],
        }
    }

    /// Batches leave in order, each once its position is durable, and wake what they
    /// named only then; a batch that waits for nothing still waits behind the others.
    #[test]
    fn batches_are_released_in_order_once_durable() {
        let woken = Arc::new(Count::default());
        let mut h = Held::default();
        h.push(4, 0, fx(&woken), 10);
        assert_eq!((h.sendable(4), woken.0.load(Ordering::Relaxed)), (4, 1));
        h.push(8, 12, fx(&woken), 10);
        h.push(12, 0, fx(&woken), 10);
        h.push(16, 11, fx(&woken), 10);
        h.push(20, 14, fx(&woken), 10);
        assert_eq!(h.sendable(20), 4, "the batch waiting for 12 holds the rest");
        assert_eq!((h.head(), h.last()), (Some(12), Some(14)));
        h.sent(4);
        assert_eq!(h.sendable(16), 0);
        h.release(11);
        assert_eq!(h.sendable(16), 0, "11 is durable but comes after 12");
        assert_eq!(woken.0.load(Ordering::Relaxed), 1);
        h.release(13);
        assert_eq!((h.sendable(16), h.head()), (12, Some(14)));
        assert_eq!(woken.0.load(Ordering::Relaxed), 4);
        h.release(14);
        assert_eq!((h.sendable(16), h.head()), (16, None));
        assert_eq!(woken.0.load(Ordering::Relaxed), 5);
    }

    /// At most `MAX_HELD` batches wait.
    #[test]
    fn full_after_max_held_batches() {
        let mut h = Held::default();
        for i in 0..MAX_HELD {
            assert!(!h.full());
            h.push(i + 1, i as u64 + 5, Effects::default(), 0);
        }
        assert!(h.full());
        h.release(5);
        assert!(!h.full());
    }
}
