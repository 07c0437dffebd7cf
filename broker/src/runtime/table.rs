//! The connection table ([`Table`]): every open client socket, for the connection
//! limits and eviction. Its policy against
//! idle sockets that would lock live clients out (issue #10):
//! - at most `max_connections` entries; when full, a new connection evicts the oldest
//!   socket that has not completed CONNECT, else the connected client that has sent
//!   nothing for longest, if that is at least `idle_evict_after_secs`; else it is refused;
//! - per IP address at most `max_pending_per_ip` sockets without CONNECT and at most
//!   `max_connections_per_ip` in all (0 = no limit); a socket over either is refused.
//!
//! Invariant: an entry leaves the table exactly once, by eviction or when its
//! [`Slot`] is dropped, and the per-IP counts change with it.
//!
//! Each entry carries the connection's [`Signal`]: the one way anything outside its task
//! (the table evicting it, the core with deliveries or a kick) reaches it, whether it
//! runs in a task or dozes in the [`Dozer`](super::doze::Dozer).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use super::doze::Ready;
use crate::proto::session::{Kick, Wake};

/// Why the table refused a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `max_connections` reached and nothing could be evicted.
    Full,
    /// The address holds `max_pending_per_ip` sockets without CONNECT.
    PendingPerIp,
    /// The address holds `max_connections_per_ip` connections.
    PerIp,
}

/// [`Signal`] flag: the core has something for the connection (deliveries, a kick).
/// Taken by the wait that sees it.
const NOTIFIED: u8 = 1;
/// [`Signal`] flag: the table evicted the connection. It stays set.
const EVICTED: u8 = 2;

/// What the table, the core and the connection's task share about one connection: when
/// it last received a packet (for idle eviction), its kick, and one signal that wakes it
/// wherever it waits. Replaces a `Notify`, a `Kick` and an eviction token (three
/// allocations, 216 bytes; issue #15: what an idle connection costs).
///
/// Protocol: whoever raises a flag that was not set takes the waiter and wakes it; a
/// waiter registers, then looks at the flags again. A wake-up is therefore never lost
/// between a look at the flags and the registration.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    /// When the connection last received a packet, in ms since the table's epoch.
    last_rx_ms: AtomicU64,
    /// [`NOTIFIED`] | [`EVICTED`].
    flags: AtomicU8,
    /// Why the core wants the connection closed (it then raises [`NOTIFIED`]).
    kick: Kick,
    /// Who to wake.
    waiter: Mutex<Waiter>,
}

/// Who waits for a [`Signal`].
#[derive(Debug, Default)]
enum Waiter {
    #[default]
    Nobody,
    /// The connection's task.
    Task(Waker),
    /// The connection dozes in a [`Dozer`](super::doze::Dozer) under this token.
    Dozing(Arc<Ready>, u64),
}

impl Signal {
    fn waiter(&self) -> MutexGuard<'_, Waiter> {
        // Nothing under this lock can panic halfway.
        self.waiter.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Raises `flag` and wakes the waiter, unless the flag was up already (whoever
    /// raised it woke the waiter then).
    fn raise(&self, flag: u8) {
        if self.flags.fetch_or(flag, Ordering::AcqRel) & flag != 0 {
            return;
        }
        let waiter = std::mem::take(&mut *self.waiter());
        match waiter {
            Waiter::Nobody => {}
            Waiter::Task(w) => w.wake(),
            Waiter::Dozing(ready, token) => ready.push(token),
        }
    }

    /// Registers the current task as the waiter.
    fn register(&self, waker: &Waker) {
        let mut w = self.waiter();
        match &mut *w {
            Waiter::Task(old) if old.will_wake(waker) => {}
            other => *other = Waiter::Task(waker.clone()),
        }
    }

    /// Waits until the core notified the connection or the table evicted it; returns
    /// the flags seen ([`Signal::evicted_in`] tells eviction). A notification is taken;
    /// eviction stays.
    ///
    /// # Cancel safety
    /// Cancel-safe: nothing is taken until it resolves.
    pub(crate) fn wait(&self) -> impl std::future::Future<Output = u8> + Send + '_ {
        std::future::poll_fn(move |cx| {
            let take = || self.flags.fetch_and(!NOTIFIED, Ordering::AcqRel);
            let f = take();
            if f != 0 {
                return Poll::Ready(f);
            }
            self.register(cx.waker());
            match take() {
                0 => Poll::Pending,
                f => Poll::Ready(f),
            }
        })
    }

    /// Whether `flags` (from [`Signal::wait`]) say the connection was evicted.
    pub(crate) fn evicted_in(flags: u8) -> bool {
        flags & EVICTED != 0
    }

    /// Resolves once the table evicted the connection (notifications are left alone).
    ///
    /// # Cancel safety
    /// Cancel-safe.
    pub(crate) fn evicted(&self) -> impl std::future::Future<Output = ()> + Send + '_ {
        std::future::poll_fn(move |cx| {
            if self.flags.load(Ordering::Acquire) & EVICTED != 0 {
                return Poll::Ready(());
            }
            self.register(cx.waker());
            if self.flags.load(Ordering::Acquire) & EVICTED != 0 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    /// The connection dozes in a dozer under `token`: what raises a flag from now on
    /// hands `token` to `ready`, and so does this if a flag is up already (a wake-up
    /// that came while the task was going to sleep).
    pub(crate) fn doze(&self, ready: &Arc<Ready>, token: u64) {
        *self.waiter() = Waiter::Dozing(ready.clone(), token);
        if self.flags.load(Ordering::Acquire) != 0 {
            ready.push(token);
        }
    }
}

/// The core wakes the connection through its signal.
impl Wake for Signal {
    fn wake(&self) {
        self.raise(NOTIFIED);
    }
    fn kick(&self) -> &Kick {
        &self.kick
    }
}

/// One table entry.
#[derive(Debug, Clone)]
struct Entry {
    ip: IpAddr,
    ctl: Arc<Signal>,
}

/// Entries per IP address.
#[derive(Debug, Default, Clone, Copy)]
struct IpCount {
    pending: usize,
    total: usize,
}

/// The table's state, under one lock.
#[derive(Debug, Default)]
struct TableInner {
    next_id: u64,
    /// Sockets without an accepted CONNECT, by id; ids grow with accept order, so the
    /// first entry is the oldest.
    pending: BTreeMap<u64, Entry>,
    /// Connections with an accepted CONNECT.
    connected: HashMap<u64, Entry>,
    per_ip: HashMap<IpAddr, IpCount>,
    /// No connected entry can have been idle for `idle_evict_after` before this time (ms
    /// since the epoch): a lower bound from the last scan (`last_rx_ms` only grows and
    /// new entries start at "now"), so a full table under a connection flood is not
    /// scanned on every accept.
    no_idle_victim_before: u64,
    evicted: u64,
    refused: u64,
}

impl TableInner {
    /// Removes entry `id` (pending or connected) and its per-IP counts; `None` when it is
    /// not (or no longer) in the table.
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let (entry, was_pending) = match self.pending.remove(&id) {
            Some(e) => (e, true),
            None => (self.connected.remove(&id)?, false),
        };
        if let Some(c) = self.per_ip.get_mut(&entry.ip) {
            c.total = c.total.saturating_sub(1);
            if was_pending {
                c.pending = c.pending.saturating_sub(1);
            }
            if c.total == 0 {
                self.per_ip.remove(&entry.ip);
            }
        }
        Some(entry)
    }

    fn len(&self) -> usize {
        self.pending.len() + self.connected.len()
    }
}

/// The connection table: every open client socket, for the connection limits and
/// eviction (policy in the module docs).
#[derive(Debug)]
pub(crate) struct Table {
    // A std Mutex: each critical section is a few map operations (a scan of the
    // connected entries only when no pending socket is left to evict, at most once per
    // `no_idle_victim_before`), never an `.await`.
    inner: Mutex<TableInner>,
    max: usize,
    max_pending_per_ip: usize,
    max_per_ip: usize,
    /// `None`: connected clients are never evicted.
    idle_evict_after_ms: Option<u64>,
    epoch: std::time::Instant,
}

impl Table {
    /// An empty table with the limits of `cfg`.
    pub(crate) fn new(cfg: &crate::config::MqttConfig) -> Table {
        Table {
            inner: Mutex::new(TableInner::default()),
            max: cfg.max_connections,
            max_pending_per_ip: cfg.max_pending_per_ip,
            max_per_ip: cfg.max_connections_per_ip,
            idle_evict_after_ms: (cfg.idle_evict_after_secs > 0)
                .then(|| cfg.idle_evict_after_secs.saturating_mul(1000)),
            epoch: std::time::Instant::now(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, TableInner> {
        // No code under this lock can leave the maps half-updated by a panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Entries in the table: (without CONNECT, connected).
    pub(crate) fn counts(&self) -> (usize, usize) {
        let t = self.lock();
        (t.pending.len(), t.connected.len())
    }

    /// Admits a new connection from `ip`, evicting another one if the table is full. The
    /// unspecified address (`0.0.0.0`, `::`) stands for the broker's own links and is
    /// under no per-IP limit.
    ///
    /// # Errors
    /// [`Refused`] when a per-IP limit is reached, or the table is full and nothing in it
    /// may be evicted.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        self.admit_at(ip, self.now_ms())
    }

    /// [`Table::admit`] at `now` (ms since the table's epoch).
    fn admit_at(self: &Arc<Self>, ip: IpAddr, now: u64) -> Result<Slot, Refused> {
        let mut t = self.lock();
        // The HTTP listener's own links into the core come from no address: only the
        // table's size limits them.
        let count = if ip.is_unspecified() {
            IpCount::default()
        } else {
            t.per_ip.get(&ip).copied().unwrap_or_default()
        };
        let refused = if self.max_pending_per_ip > 0 && count.pending >= self.max_pending_per_ip {
            Some(Refused::PendingPerIp)
        } else if self.max_per_ip > 0 && count.total >= self.max_per_ip {
            Some(Refused::PerIp)
        } else if t.len() >= self.max && !self.evict_one(&mut t, now) {
            Some(Refused::Full)
        } else {
            None
        };
        if let Some(why) = refused {
            t.refused += 1;
            return Err(why);
        }
        let id = t.next_id;
        t.next_id += 1;
        let ctl = Arc::new(Signal {
            last_rx_ms: AtomicU64::new(now),
            ..Signal::default()
        });
        t.pending.insert(
            id,
            Entry {
                ip,
                ctl: ctl.clone(),
            },
        );
        let c = t.per_ip.entry(ip).or_default();
        c.pending += 1;
        c.total += 1;
        Ok(Slot {
            table: self.clone(),
            id,
            ctl,
        })
    }

    /// Evicts the oldest pending socket, else the connected client idle longest if idle
    /// long enough; false when there is none.
    fn evict_one(&self, t: &mut TableInner, now: u64) -> bool {
        let victim = match t.pending.keys().next() {
            Some(&id) => Some((id, "no CONNECT")),
            None => self.idle_victim(t, now).map(|id| (id, "idle")),
        };
        let Some((id, why)) = victim else {
            return false;
        };
        if let Some(e) = t.remove(id) {
            e.ctl.raise(EVICTED);
            t.evicted += 1;
            tracing::debug!(ip = %e.ip, why, evicted = t.evicted, "connection table full; evicting");
        }
        true
    }

    /// The connected entry idle longest, if idle for at least `idle_evict_after`.
    fn idle_victim(&self, t: &mut TableInner, now: u64) -> Option<u64> {
        let idle = self.idle_evict_after_ms?;
        if now < t.no_idle_victim_before {
            return None;
        }
        let (id, last) = t
            .connected
            .iter()
            .map(|(id, e)| (*id, e.ctl.last_rx_ms.load(Ordering::Relaxed)))
            .min_by_key(|&(_, last)| last)?;
        if now.saturating_sub(last) >= idle {
            Some(id)
        } else {
            t.no_idle_victim_before = last.saturating_add(idle);
            None
        }
    }

    /// Refusals and evictions so far.
    pub(crate) fn stats(&self) -> (u64, u64) {
        let t = self.lock();
        (t.refused, t.evicted)
    }
}

/// A connection's place in the [`Table`]; leaves the table when dropped (unless it was
/// evicted, which removed it already).
#[derive(Debug)]
pub(crate) struct Slot {
    table: Arc<Table>,
    id: u64,
    ctl: Arc<Signal>,
}

impl Slot {
    /// The connection's CONNECT was accepted: it no longer counts as pending.
    pub(crate) fn connected(&self) {
        let now = self.table.now_ms();
        self.ctl.last_rx_ms.store(now, Ordering::Relaxed);
        let mut t = self.table.lock();
        if let Some(e) = t.pending.remove(&self.id) {
            if let Some(c) = t.per_ip.get_mut(&e.ip) {
                c.pending = c.pending.saturating_sub(1);
            }
            t.connected.insert(self.id, e);
        }
    }

    /// A packet arrived: the connection is not idle.
    pub(crate) fn touch(&self) {
        self.ctl
            .last_rx_ms
            .store(self.table.now_ms(), Ordering::Relaxed);
    }

    /// Resolves once the table evicted this connection.
    ///
    /// # Cancel safety
    /// Cancel-safe.
    pub(crate) fn evicted(&self) -> impl std::future::Future<Output = ()> + Send + '_ {
        self.ctl.evicted()
    }

    /// The connection's signal (the core wakes and kicks it through this).
    pub(crate) fn signal(&self) -> &Arc<Signal> {
        &self.ctl
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.lock().remove(self.id);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::MqttConfig;

    fn table(max: usize, pending_per_ip: usize, per_ip: usize, idle_secs: u64) -> Arc<Table> {
        let cfg = MqttConfig {
            max_connections: max,
            max_pending_per_ip: pending_per_ip,
            max_connections_per_ip: per_ip,
            idle_evict_after_secs: idle_secs,
            ..MqttConfig::default()
        };
        Arc::new(Table::new(&cfg))
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn evicted(s: &Slot) -> bool {
        s.ctl.flags.load(Ordering::Relaxed) & EVICTED != 0
    }

    #[test]
    fn full_table_evicts_the_oldest_pending_socket_first() {
        let t = table(3, 0, 0, 60);
        let a = t.admit_at(ip(1), 0).unwrap();
        let b = t.admit_at(ip(2), 1).unwrap();
        let c = t.admit_at(ip(3), 2).unwrap();
        a.connected();
        let d = t.admit_at(ip(4), 3).unwrap();
        // `a` is connected and not idle: the oldest pending one, `b`, makes room.
        assert!(!evicted(&a) && evicted(&b) && !evicted(&c) && !evicted(&d));
        assert_eq!(t.counts(), (2, 1));
        let e = t.admit_at(ip(5), 4).unwrap();
        assert!(evicted(&c) && !evicted(&e));
        assert_eq!(t.stats(), (0, 2));
    }

    #[test]
    fn connected_clients_are_evicted_only_when_idle_long_enough() {
        let t = table(2, 0, 0, 60);
        let a = t.admit_at(ip(1), 0).unwrap();
        let b = t.admit_at(ip(2), 0).unwrap();
        a.connected();
        b.connected();
        a.ctl.last_rx_ms.store(1_000, Ordering::Relaxed);
        b.ctl.last_rx_ms.store(2_000, Ordering::Relaxed);
        // Idle 59 s at most: refused (and no scan again before a could be idle 60 s).
        assert_eq!(t.admit_at(ip(3), 60_000).err(), Some(Refused::Full));
        assert_eq!(t.lock().no_idle_victim_before, 61_000);
        assert_eq!(t.admit_at(ip(3), 60_999).err(), Some(Refused::Full));
        // a has now been idle 60 s and is the longest idle.
        let c = t.admit_at(ip(3), 61_000).unwrap();
        assert!(evicted(&a) && !evicted(&b) && !evicted(&c));
        assert_eq!(t.stats(), (2, 1));
    }

    #[test]
    fn without_idle_eviction_a_full_table_of_clients_refuses() {
        let t = table(1, 0, 0, 0);
        let a = t.admit_at(ip(1), 0).unwrap();
        a.connected();
        assert_eq!(t.admit_at(ip(2), u64::MAX / 2).err(), Some(Refused::Full));
        assert!(!evicted(&a));
    }

    #[test]
    fn per_address_limits() {
        let t = table(100, 2, 3, 60);
        let a = t.admit_at(ip(1), 0).unwrap();
        let b = t.admit_at(ip(1), 0).unwrap();
        assert_eq!(t.admit_at(ip(1), 0).err(), Some(Refused::PendingPerIp));
        let _other = t.admit_at(ip(2), 0).unwrap();
        // A CONNECT frees a pending place, not a connection place.
        a.connected();
        let c = t.admit_at(ip(1), 0).unwrap();
        c.connected();
        assert_eq!(t.admit_at(ip(1), 0).err(), Some(Refused::PerIp));
        drop(b);
        let _d = t.admit_at(ip(1), 0).unwrap();
        assert_eq!(t.stats().0, 2);
    }

    #[test]
    fn an_entry_leaves_once_whether_evicted_or_dropped() {
        let t = table(1, 1, 1, 60);
        let a = t.admit_at(ip(1), 0).unwrap();
        let b = t.admit_at(ip(1), 0);
        // Per-address limits come before eviction: a does not make room for b.
        assert_eq!(b.err(), Some(Refused::PendingPerIp));
        let c = t.admit_at(ip(2), 0).unwrap();
        assert!(evicted(&a));
        // Dropping the evicted slot must not free c's place or count twice.
        drop(a);
        assert_eq!(t.counts(), (1, 0));
        assert_eq!(t.lock().per_ip.get(&ip(1)).map(|c| c.total), None);
        drop(c);
        assert_eq!(t.counts(), (0, 0));
        assert!(t.lock().per_ip.is_empty());
    }

    /// Wakes a polled signal's task; `std::task::Wake` for a counter.
    struct Count(std::sync::atomic::AtomicUsize);
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn poll_wait(s: &Signal, waker: &Waker) -> Poll<u8> {
        let mut cx = std::task::Context::from_waker(waker);
        let mut wait = std::pin::pin!(s.wait());
        wait.as_mut().poll(&mut cx)
    }

    use std::future::Future;

    /// A notification is kept until a wait takes it, wakes a waiting task once, and
    /// eviction stays; a dozing connection's token reaches its dozer whether the signal
    /// was raised before or after it dozed.
    #[test]
    fn the_signal_loses_no_wake_up_wherever_the_connection_waits() {
        let s = Signal::default();
        let count = Arc::new(Count(Default::default()));
        let waker = Waker::from(count.clone());
        // Raised before anyone waits: the next wait takes it, the one after waits.
        s.wake();
        assert_eq!(poll_wait(&s, &waker), Poll::Ready(NOTIFIED));
        assert_eq!(poll_wait(&s, &waker), Poll::Pending);
        // Raised while waiting: the task is woken once, however often it is raised.
        s.wake();
        s.wake();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert_eq!(poll_wait(&s, &waker), Poll::Ready(NOTIFIED));
        // Dozing: a raise hands the token to the dozer, once.
        let ready = Arc::new(Ready::default());
        s.doze(&ready, 7);
        assert!(ready.is_empty());
        s.wake();
        s.wake();
        assert_eq!(ready.tokens(), [7]);
        // Raised before it dozed (a wake-up that came as its task was ending).
        let ready = Arc::new(Ready::default());
        s.doze(&ready, 8);
        assert_eq!(ready.tokens(), [8]);
        // Eviction stays up, and is seen by both waits.
        let s = Signal::default();
        s.raise(EVICTED);
        let f = match poll_wait(&s, &waker) {
            Poll::Ready(f) => f,
            Poll::Pending => panic!("eviction not seen"),
        };
        assert!(Signal::evicted_in(f));
        assert!(matches!(poll_wait(&s, &waker), Poll::Ready(f) if Signal::evicted_in(f)));
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(std::pin::pin!(s.evicted()).poll(&mut cx).is_ready());
    }
}
