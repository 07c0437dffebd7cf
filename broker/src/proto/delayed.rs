//! Delayed publish: a PUBLISH to `$delayed/SECONDS/TOPIC` is published to `TOPIC` once
//! SECONDS have passed (a SECONDS of 42,949,670 or more is an absolute Unix time, as in
//! EMQX). Work queues included: `$delayed/60/$queue/jobs` enqueues a minute later.
//!
//! Durable like everything acknowledged: the message is kept as a delivery of a store
//! session `$delayed` that is never online (client ids starting with `$delayed` are
//! refused), journaled before the publisher's PUBACK, with its due time in its stored
//! topic (`$delayed/DUE_UNIX_SECONDS/TOPIC`), and written into every snapshot. In memory
//! the messages wait in due order; one timer, at the earliest, releases them: the
//! message is published to TOPIC as a new message, then the delivery is done.
//!
//! Bounded: at most `max_queued_messages` messages wait (more get PUBACK 0x97), and
//! their bytes count in the queue memory budget. The access rules check the write of
//! TOPIC, at publish time.

use std::collections::BTreeMap;

use super::*;

/// Topics of delayed publishes start with this.
pub(crate) const DELAYED_PREFIX: &str = "$delayed/";

/// The store session holding the waiting messages.
pub(crate) const STORE_ID: &str = "$delayed";

/// A delay at least this large is an absolute Unix time in seconds.
const ABSOLUTE_FROM: u64 = 42_949_670;

/// A parsed `$delayed/SECONDS/TOPIC`: when (Unix seconds) and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Due<'a> {
    pub(crate) at_secs: u64,
    pub(crate) topic: &'a str,
}

/// `None` when `topic` is not a delayed publish; `Err` when it is one but malformed (no
/// number, no target, a target that is itself delayed or `$SYS`, or wildcards).
pub(crate) fn parse(topic: &str, now_secs: u64) -> Option<Result<Due<'_>, ()>> {
    let rest = topic.strip_prefix(DELAYED_PREFIX)?;
    let Some((n, target)) = rest.split_once('/') else {
        return Some(Err(()));
    };
    let Ok(n) = n.parse::<u64>() else {
        return Some(Err(()));
    };
    let bad_target = target.is_empty()
        || target.starts_with(DELAYED_PREFIX)
        || is_sys(target)
        || target.contains(['+', '#']);
    if bad_target {
        return Some(Err(()));
    }
    let at_secs = if n >= ABSOLUTE_FROM {
        n
    } else {
        now_secs.saturating_add(n)
    };
    Some(Ok(Due {
        at_secs,
        topic: target,
    }))
}

/// The messages waiting, by (due Unix seconds, message id).
#[derive(Debug, Default)]
pub(crate) struct Delayed {
    waiting: BTreeMap<(u64, u64), Delivery>,
}

impl Delayed {
    /// Number of messages waiting.
    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Every waiting delivery.
    pub(crate) fn waiting(&self) -> impl Iterator<Item = &Delivery> {
        self.waiting.values()
    }

    /// The waiting deliveries that are stored (for a snapshot).
    pub(crate) fn stored(&self) -> impl Iterator<Item = &Delivery> {
        self.waiting.values().filter(|d| d.dseq != 0)
    }
}

impl Core {
    /// Keeps `msg` (topic `$delayed/SECONDS/TOPIC`) until `due`. False when the limit of
    /// waiting messages or the memory budget is reached.
    pub(super) fn delay(&mut self, msg: Arc<Message>, due: Due<'_>, now: Instant) -> bool {
        if self.delayed.len() >= self.cfg.max_queued_messages
            || self.queued_memory() + msg.cost() > self.queue_budget
        {
            return false;
        }
        // The stored topic carries the absolute due time, for recovery.
        let mut stored = (*msg).clone();
        stored.topic = Arc::from(format!("{DELAYED_PREFIX}{}/{}", due.at_secs, due.topic));
        let msg = Arc::new(stored);
        let mut d = Delivery::kept(msg, 0);
        if self.journal.is_some() {
            self.open_delayed_store(now);
            self.hold_msg(&d.msg, None, now);
            d.dseq = self.next_dseq;
            self.next_dseq += 1;
            let rec = d.enqueue_record(STORE_ID);
            d.lsn = self.log_with(Why::Accept, &mut |b| rec.encode(b));
        }
        self.mem.fetch_add(d.msg.cost(), Ordering::Relaxed);
        self.delayed.waiting.insert((due.at_secs, d.msg.mid), d);
        self.arm_delayed(now);
        true
    }

    /// The store session of delayed messages exists (journaled once).
    fn open_delayed_store(&mut self, now: Instant) {
        if self.shards.contains(STORE_ID) {
            return;
        }
        let id: Arc<str> = Arc::from(STORE_ID);
        let mut s = Session::new(id.clone(), self.mem.clone());
        s.set_expiry_interval(u32::MAX);
        s.set_offline_since(now);
        s.set_persisted(true);
        let rec = Record::SessionOpen {
            client: STORE_ID.to_owned(),
            expiry: u32::MAX,
            user: None,
        };
        self.log(rec, Why::Accept);
        self.shards.insert(id, Box::new(s));
    }

    /// Sets the timer to the earliest due time.
    fn arm_delayed(&mut self, now: Instant) {
        match self.delayed.waiting.keys().next() {
            Some(&(at_secs, _)) => {
                let now_ms = self.clock.unix_ms(now);
                let at = message::unix_ms_to_instant(at_secs.saturating_mul(1000), now, now_ms);
                self.timers.set(Timer::Delayed, at);
            }
            None => {
                self.timers.cancel(&Timer::Delayed);
            }
        }
    }

    /// Publishes every delayed message that is due.
    pub(super) fn release_delayed(&mut self, now: Instant, fx: &mut Effects) {
        let now_secs = self.clock.unix_ms(now) / 1000;
        while let Some(entry) = self.delayed.waiting.first_entry() {
            if entry.key().0 > now_secs {
                break;
            }
            let d = entry.remove();
            let _ = self
                .mem
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                    Some(m.saturating_sub(d.msg.cost()))
                });
            // The stored topic is `$delayed/DUE/TOPIC`, as `delay` wrote it.
            let target = match parse(&d.msg.topic, 0) {
                Some(Ok(due)) => Some(due.topic.to_owned()),
                _ => None,
            };
            if let Some(target) = target {
                let mut m = (*d.msg).clone();
                m.topic = Arc::from(target.as_str());
                m.mid = self.mid();
                if self.route(Arc::new(m), true, now, fx).is_err() {
                    tracing::warn!(topic = %target, "delayed message not enqueued: queue full");
                }
            }
            if d.dseq != 0 {
                let rec = Record::Done {
                    client: STORE_ID.to_owned(),
                    dseq: d.dseq,
                };
                self.log(rec, Why::NoPromise);
            }
        }
        self.arm_delayed(now);
    }

    /// Recovery: the delayed messages the store session holds move to the waiting set.
    pub(crate) fn restore_delayed(&mut self, now: Instant) {
        let clock = self.clock(now);
        let Some(s) = self.shards.get_mut(STORE_ID) else {
            return;
        };
        let mut found = Vec::new();
        while let Some(d) = s.take_ready(clock) {
            found.push(d);
        }
        for d in found {
            let Some(Ok(due)) = parse(&d.msg.topic, 0) else {
                continue;
            };
            self.mem.fetch_add(d.msg.cost(), Ordering::Relaxed);
            self.delayed.waiting.insert((due.at_secs, d.msg.mid), d);
        }
        self.arm_delayed(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_parsed_relative_or_absolute() {
        let now = 1_700_000_000;
        let due = |t| parse(t, now);
        assert_eq!(due("a/b"), None);
        assert_eq!(
            due("$delayed/10/a/b"),
            Some(Ok(Due {
                at_secs: now + 10,
                topic: "a/b"
            }))
        );
        assert_eq!(
            due("$delayed/1800000000/$queue/jobs"),
            Some(Ok(Due {
                at_secs: 1_800_000_000,
                topic: "$queue/jobs"
            }))
        );
        for bad in [
            "$delayed/x/a",
            "$delayed/10",
            "$delayed/10/",
            "$delayed/-1/a",
            "$delayed/10/$delayed/5/a",
            "$delayed/10/$SYS/x",
            "$delayed/10/a/+",
        ] {
            assert_eq!(due(bad), Some(Err(())), "{bad}");
        }
    }
}
