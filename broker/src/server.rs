//! Listener, accept loop, connection table (limits and eviction), housekeeping and
//! graceful shutdown.
//!
//! The connection table ([`Table`]) holds every open client socket. Its policy against
//! idle sockets that would lock live clients out (issue #10):
//! - at most `max_connections` entries; when full, a new connection evicts the oldest
//!   socket that has not completed CONNECT, else the connected client that has sent
//!   nothing for longest, if that is at least `idle_evict_after_secs`; else it is refused;
//! - per IP address at most `max_pending_per_ip` sockets without CONNECT and at most
//!   `max_connections_per_ip` in all (0 = no limit); a socket over either is refused.
//!
//! Invariant: an entry leaves the table exactly once, by eviction or when its
//! [`Slot`] is dropped, and the per-IP counts change with it.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

use crate::broker::{Core, Effects};
use crate::config::Config;
use crate::message::Message;
use crate::store::journal::{Journal, WriterHandle};
use crate::store::recover::Index;

/// State shared by every connection task.
#[derive(Debug)]
pub struct Shared {
    /// The merged configuration.
    pub config: Arc<Config>,
    /// The on-disk journal; `None` with `--memory`.
    pub journal: Option<Arc<Journal>>,
    // One std Mutex around the whole core: every critical section is a few map operations
    // and an encode into a buffer, never an `.await`, so a sync lock is cheaper than an
    // async one and contention stays low on the small machines we target.
    core: Mutex<Core>,
}

impl Shared {
    /// A broker with an empty core and the in-memory store.
    pub fn new(config: Config) -> Shared {
        let config = Arc::new(config);
        Shared {
            core: Mutex::new(Core::new(Arc::new(config.mqtt.clone()))),
            config,
            journal: None,
        }
    }

    /// A broker whose state was recovered from (and is journaled to) the on-disk store.
    pub fn with_core(config: Arc<Config>, core: Core, journal: Arc<Journal>) -> Shared {
        Shared {
            core: Mutex::new(core),
            config,
            journal: Some(journal),
        }
    }

    /// Runs `f` on the core under its lock; once everything `f` journaled is durable, wakes
    /// the connections it named and returns its result. A caller sends the replies `f`
    /// produced only after this returns, so nothing is acknowledged before it is kept.
    ///
    /// # Cancel safety
    /// Cancel-safe: the core call is done before the first `.await`; cancelling only
    /// skips the wake-ups.
    pub async fn apply<R>(&self, f: impl FnOnce(&mut Core, &mut Effects) -> R) -> R {
        let mut fx = Effects::default();
        let (r, lsn) = {
            let mut core = self.lock();
            let r = f(&mut core, &mut fx);
            (r, core.take_wait_lsn())
        };
        self.durable(lsn).await;
        fx.run();
        r
    }

    /// Waits until the journal holds everything up to `lsn` durably (no-op for 0).
    ///
    /// # Cancel safety
    /// Cancel-safe.
    pub async fn durable(&self, lsn: u64) {
        if let (Some(j), true) = (&self.journal, lsn > 0) {
            j.wait_durable(lsn).await;
        }
    }

    /// Locks the core. A panic while holding the lock is a bug; the state is still
    /// consistent enough to keep serving other clients, so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why the table refused a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_connections` reached and nothing could be evicted.
    Full,
    /// The address holds `max_pending_per_ip` sockets without CONNECT.
    PendingPerIp,
    /// The address holds `max_connections_per_ip` connections.
    PerIp,
}

/// What the table and a connection task share about one connection.
#[derive(Debug)]
struct SlotCtl {
    /// Cancelled when the table evicts the connection.
    evict: CancellationToken,
    /// When the connection last received a packet, in ms since the table's epoch.
    last_rx_ms: AtomicU64,
}

/// One table entry.
#[derive(Debug, Clone)]
struct Entry {
    ip: IpAddr,
    ctl: Arc<SlotCtl>,
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
pub struct Table {
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
    pub fn new(cfg: &crate::config::MqttConfig) -> Table {
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
    pub fn counts(&self) -> (usize, usize) {
        let t = self.lock();
        (t.pending.len(), t.connected.len())
    }

    /// Admits a new connection from `ip`, evicting another one if the table is full.
    ///
    /// # Errors
    /// [`Refused`] when a per-IP limit is reached, or the table is full and nothing in it
    /// may be evicted.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        self.admit_at(ip, self.now_ms())
    }

    /// [`Table::admit`] at `now` (ms since the table's epoch).
    fn admit_at(self: &Arc<Self>, ip: IpAddr, now: u64) -> Result<Slot, Refused> {
        let mut t = self.lock();
        let count = t.per_ip.get(&ip).copied().unwrap_or_default();
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
        let ctl = Arc::new(SlotCtl {
            evict: CancellationToken::new(),
            last_rx_ms: AtomicU64::new(now),
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
            e.ctl.evict.cancel();
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
    pub fn stats(&self) -> (u64, u64) {
        let t = self.lock();
        (t.refused, t.evicted)
    }
}

/// A connection's place in the [`Table`]; leaves the table when dropped (unless it was
/// evicted, which removed it already).
#[derive(Debug)]
pub struct Slot {
    table: Arc<Table>,
    id: u64,
    ctl: Arc<SlotCtl>,
}

impl Slot {
    /// The connection's CONNECT was accepted: it no longer counts as pending.
    pub fn connected(&self) {
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
    pub fn touch(&self) {
        self.ctl
            .last_rx_ms
            .store(self.table.now_ms(), Ordering::Relaxed);
    }

    /// Resolves once the table evicted this connection.
    ///
    /// # Cancel safety
    /// Cancel-safe.
    pub fn evicted(&self) -> WaitForCancellationFuture<'_> {
        self.ctl.evict.cancelled()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.lock().remove(self.id);
    }
}

/// How often wills, session expiry and message expiry are checked.
const TICK: Duration = Duration::from_millis(100);

/// How long shutdown waits for connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Binds the listener and serves until `shutdown` is cancelled.
///
/// # Errors
/// When the listener cannot be bound.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (shared, writer) = if config.storage.memory {
        (Shared::new(config), None)
    } else {
        let (shared, writer) = open_store(config)?;
        (shared, Some(writer))
    };
    let listener = TcpListener::bind(shared.config.mqtt.listen).await?;
    let addr = listener.local_addr()?;
    tracing::info!("listening mqtt={addr}");
    let result = serve(listener, Arc::new(shared), shutdown).await;
    if let Some(w) = writer {
        // Writes and syncs whatever the last connections appended.
        tokio::task::spawn_blocking(move || w.shutdown()).await?;
        tracing::info!("store flushed");
    }
    result
}

/// Opens the on-disk store in `data_dir` and rebuilds the broker's state from it.
///
/// # Errors
/// When the directory or its files cannot be read or created.
pub fn open_store(config: Config) -> anyhow::Result<(Shared, WriterHandle)> {
    let started = std::time::Instant::now();
    let dir = config.storage.data_dir.clone();
    // Pass 1: the state's skeleton (sessions, subscriptions, what finished).
    let mut index = Index::default();
    let (journal, writer, recovery) = Journal::open(
        &dir,
        config.storage.fsync,
        config.storage.segment_bytes,
        &mut |b| index.apply_bytes(b),
    )
    .map_err(|e| anyhow::anyhow!("cannot open the store in {}: {e}", dir.display()))?;
    if recovery.truncated_bytes > 0 {
        tracing::warn!(
            bytes = recovery.truncated_bytes,
            "store: truncated a torn write at the end of the log"
        );
    }
    if recovery.corrupt_regions > 0 || index.unreadable > 0 {
        tracing::warn!(
            regions = recovery.corrupt_regions,
            unreadable = index.unreadable,
            "store: skipped damaged records"
        );
    }
    let config = Arc::new(config);
    let mut core = Core::with_journal(
        Arc::new(config.mqtt.clone()),
        journal.clone(),
        dir.join("spill"),
        config.storage.queue_memory_bytes,
    );
    core.set_memory_budget(config.storage.memory_budget_bytes);
    let now = std::time::Instant::now();
    let now_ms = crate::message::unix_ms();
    core.restore_sessions(&index, now);
    let mut restored = 0u32;
    // Pass 2: the queued deliveries, streamed into the sessions (and their spill files
    // once the queue budget is used) with only the messages still to be named held.
    let mut replay = index.replay();
    crate::store::log::replay(&dir, recovery.active_segment, &mut |b| {
        replay.apply_bytes(
            b,
            &mut |mid, m| {
                let (msg, will_expiry) = Message::from_stored(mid, m, now, now_ms);
                (Arc::new(msg), will_expiry)
            },
            &mut |client, dseq, d, (msg, _)| {
                if restored % 16384 == 0 {
                    observe_resident(&mut core);
                }
                restored = restored.wrapping_add(1);
                core.restore_delivery(client, dseq, d, msg)
            },
        )
    })
    .map_err(|e| anyhow::anyhow!("cannot read the store in {}: {e}", dir.display()))?;
    let deliveries = replay.delivered;
    let kept = replay.finish();
    core.restore_finish(&index, &kept);
    drop(kept);
    let (sessions, retained) = (index.sessions.len(), index.retained.len());
    drop(index);
    // Start from a compact log: the replayed history is replaced by the live state.
    core.compact(std::time::Instant::now());
    tracing::info!(
        dir = %dir.display(),
        records = recovery.records,
        sessions,
        deliveries,
        retained,
        ms = started.elapsed().as_millis() as u64,
        "store recovered"
    );
    Ok((Shared::with_core(config, core, journal), writer))
}

/// Tells the core the process's resident memory (when a memory budget is set).
fn observe_resident(core: &mut Core) {
    if core.memory_budget() == 0 {
        return;
    }
    if let Some(rss) = resident_bytes() {
        core.observe_resident(rss);
    }
}

/// The process's resident memory (`VmRSS` of `/proc/self/status`); `None` where there
/// is no such file.
fn resident_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Serves connections from `listener` until `shutdown` is cancelled.
///
/// # Errors
/// Never today; kept fallible for listeners to come.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tracker = TaskTracker::new();
    let table = Arc::new(Table::new(&shared.config.mqtt));

    let ticker = {
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let started = std::time::Instant::now();
            let sys_every = Duration::from_secs(shared.config.mqtt.sys_interval_secs);
            let mut next_sys = started;
            loop {
                tokio::select! {
                    _ = interval.tick() => {
                        let now = std::time::Instant::now();
                        // Wills published by the tick wake their subscribers once durable.
                        shared.apply(|core, fx| {
                            observe_resident(core);
                            core.tick(now, fx);
                            core.maybe_compact(now);
                            if !sys_every.is_zero() && now >= next_sys {
                                core.publish_sys(now - started, now, fx);
                                next_sys = now + sys_every;
                            }
                        })
                        .await;
                    }
                    _ = shutdown.cancelled() => break,
                }
            }
        })
    };

    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match table.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                // Under attack this happens per accept: keep it out of the default log
                // level except for a full table, which an operator must hear about.
                if why == Refused::Full {
                    tracing::warn!(%peer, "connection limit reached; refusing");
                } else {
                    tracing::debug!(%peer, ?why, "per-address limit reached; refusing");
                }
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(crate::connection::serve(
            stream, peer, shared, shutdown, slot,
        ));
    }
    tracing::info!("shutting down");
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections did not finish within {SHUTDOWN_GRACE:?}");
    }
    drop(ticker);
    Ok(())
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
        s.ctl.evict.is_cancelled()
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
}
