//! The state every connection task shares: the core behind its lock, the configuration,
//! and the durability gate (a reply leaves only once what it depends on is durable).

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::arrival::Arrivals;
use super::auth::Auth;
use crate::config::Config;
use crate::proto::{Core, Effects};
use crate::store::journal::{Journal, JournalFailed};

/// State shared by every connection task.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The merged configuration.
    pub(crate) config: Arc<Config>,
    /// The on-disk journal; `None` with `--memory`.
    pub(crate) journal: Option<Arc<Journal>>,
    /// Passwords and access rules (reloaded on SIGHUP).
    pub(crate) auth: Arc<Auth>,
    // One std Mutex around the whole core: every critical section is a few map operations
    // and an encode into a buffer, never an `.await`, so a sync lock is cheaper than an
    // async one and contention stays low on the small machines we target.
    core: Mutex<Core>,
    /// How long the core's lock is held, each time.
    holds: HoldStats,
    /// Open connections by transport (for metrics and the dashboard).
    pub(crate) transports: Transports,
    /// Keeps input that arrives together on different connections in arrival order on
    /// a multi-threaded runtime; `None` with one worker thread (`runtime/arrival.rs`).
    pub(crate) arrivals: Option<Arc<Arrivals>>,
}

/// The arrival order keeper, for a runtime of more than one worker thread.
fn arrivals(config: &Config) -> Option<Arc<Arrivals>> {
    (config.mqtt.threads() > 1).then(Arrivals::new)
}

/// Puts the `[queues]` and `[queue.NAME]` sections in force (before anything is served;
/// after recovery, the declarations made over MQTT follow them).
pub(crate) fn declare_queues(core: &mut Core, config: &Config) {
    core.set_auto_create_queues(config.queues.auto_create, config.queues.max_queues);
    let now = Instant::now();
    for (name, decl) in &config.queue {
        if let Err(why) = core.declare_queue(name, decl.clone(), now) {
            // Validated with the configuration: not expected.
            tracing::error!(queue = %name, "queue not declared: {why}");
        }
    }
    core.restore_declarations(now);
    core.set_auto_create_streams(config.streams.auto_create, config.streams.max_streams);
    for (name, decl) in &config.stream {
        if let Err(why) = core.declare_stream(name, decl.clone(), now) {
            tracing::error!(stream = %name, "stream not declared: {why}");
        }
    }
    core.restore_stream_declarations(now);
}

/// How a connection reached the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// MQTT over plain TCP.
    Tcp,
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSocket (on the HTTP listener).
    Ws,
    /// An HTTP socket (requests, SSE streams).
    Http,
    /// The HTTP listener's own MQTT links into the core (HTTP publish, SSE sessions).
    Internal,
}

impl Transport {
    /// Every transport, in the order of [`Transports::counts`].
    pub(crate) const ALL: [Transport; 5] = [
        Transport::Tcp,
        Transport::Tls,
        Transport::Ws,
        Transport::Http,
        Transport::Internal,
    ];

    /// Its name in metrics and the stats endpoint.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Http => "http",
            Transport::Internal => "internal",
        }
    }
}

/// Open connections and bytes after CONNECT per transport, lock-free.
#[derive(Debug, Default)]
pub(crate) struct Transports {
    open: [AtomicU64; 5],
    received: [AtomicU64; 5],
    sent: [AtomicU64; 5],
}

impl Transports {
    /// Counts one connection of `t` until the guard is dropped.
    pub(crate) fn open(&self, t: Transport) -> TransportGuard<'_> {
        self.open[t as usize].fetch_add(1, Ordering::Relaxed);
        TransportGuard(self, t)
    }

    /// `n` bytes read from a connected client of `t`.
    pub(crate) fn received(&self, t: Transport, n: usize) {
        self.received[t as usize].fetch_add(n as u64, Ordering::Relaxed);
    }

    /// `n` bytes written to a connected client of `t`.
    pub(crate) fn sent(&self, t: Transport, n: usize) {
        self.sent[t as usize].fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Open connections of each transport, in the order of [`Transport::ALL`].
    pub(crate) fn counts(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.open[i].load(Ordering::Relaxed))
    }

    /// Bytes received and sent by each transport since start, in the order of
    /// [`Transport::ALL`].
    pub(crate) fn bytes(&self) -> ([u64; 5], [u64; 5]) {
        (
            std::array::from_fn(|i| self.received[i].load(Ordering::Relaxed)),
            std::array::from_fn(|i| self.sent[i].load(Ordering::Relaxed)),
        )
    }
}

/// One open connection of a transport; uncounted when dropped.
#[derive(Debug)]
pub(crate) struct TransportGuard<'a>(&'a Transports, Transport);

impl TransportGuard<'_> {
    /// The connection goes on without this task (it dozes, `runtime/doze.rs`): it stays
    /// counted, and the task that serves it next takes the count over
    /// ([`Transports::adopt`]).
    pub(crate) fn hand_over(self) {
        std::mem::forget(self);
    }
}

impl Transports {
    /// The guard of a connection whose count was handed over
    /// ([`TransportGuard::hand_over`]): counted once, uncounted when dropped.
    pub(crate) fn adopt(&self, t: Transport) -> TransportGuard<'_> {
        TransportGuard(self, t)
    }
}

impl Drop for TransportGuard<'_> {
    fn drop(&mut self) {
        self.0.open[self.1 as usize].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shared {
    /// A broker with an empty core and the in-memory store.
    pub(crate) fn new(config: Config, auth: Arc<Auth>) -> Shared {
        let config = Arc::new(config);
        let mut core = Core::new(Arc::new(config.mqtt.clone()), super::ports::now());
        core.set_queue_budget(config.storage.queue_memory_bytes);
        declare_queues(&mut core, &config);
        Shared {
            core: Mutex::new(core),
            arrivals: arrivals(&config),
            config,
            journal: None,
            auth,
            holds: HoldStats::default(),
            transports: Transports::default(),
        }
    }

    /// A broker whose state was recovered from (and is journaled to) the on-disk store.
    pub(crate) fn with_core(
        config: Arc<Config>,
        core: Core,
        journal: Arc<Journal>,
        auth: Arc<Auth>,
    ) -> Shared {
        Shared {
            core: Mutex::new(core),
            arrivals: arrivals(&config),
            config,
            journal: Some(journal),
            auth,
            holds: HoldStats::default(),
            transports: Transports::default(),
        }
    }

    /// Runs `f` on the core under its lock; once everything `f` journaled is durable, wakes
    /// the connections it named and returns its result. A caller sends the replies `f`
    /// produced only after this returns, so nothing is acknowledged before it is kept.
    ///
    /// # Cancel safety
    /// Cancel-safe: the core call is done before the first `.await`; cancelling only
    /// skips the wake-ups.
    pub(crate) async fn apply<R>(&self, f: impl FnOnce(&mut Core, &mut Effects) -> R) -> R {
        let mut fx = Effects::default();
        let (r, lsn) = {
            let mut core = self.lock();
            let r = f(&mut core, &mut fx);
            (r, core.take_wait_lsn())
        };
        if self.durable(lsn).await.is_err() {
            // The journal failed: what `f` produced must never be sent. This task stays
            // parked until `run` (which sees the same failure) stops the process, and
            // the connection closes unacknowledged.
            std::future::pending::<()>().await;
        }
        fx.run();
        r
    }

    /// Runs `f` on the core under its lock, without waiting: returns its result, the
    /// journal position its replies and wake-ups wait for (0: none) and the wake-ups.
    /// The caller holds what `f` produced until [`Shared::durable_now`] reaches that
    /// position (see `runtime/connection.rs`, `Held`), reading on meanwhile.
    pub(crate) fn apply_held<R>(
        &self,
        f: impl FnOnce(&mut Core, &mut Effects) -> R,
    ) -> (R, u64, Effects) {
        let mut fx = Effects::default();
        let mut core = self.lock();
        let r = f(&mut core, &mut fx);
        let lsn = core.take_wait_lsn();
        // Freed after the lock is released, not while other connections wait for it.
        let spent = core.take_spent();
        drop(core);
        drop(spent);
        (r, lsn, fx)
    }

    /// The journal position known durable now (everything, without a journal).
    pub(crate) fn durable_now(&self) -> u64 {
        self.journal.as_ref().map_or(u64::MAX, |j| j.durable())
    }

    /// Waits until the journal holds everything up to `lsn` durably (no-op for 0).
    ///
    /// # Errors
    /// [`JournalFailed`] when it never will: nothing depending on `lsn` may be sent.
    ///
    /// # Cancel safety
    /// Cancel-safe.
    pub(crate) async fn durable(&self, lsn: u64) -> Result<(), JournalFailed> {
        match (&self.journal, lsn > 0) {
            (Some(j), true) => j.wait_durable(lsn).await,
            _ => Ok(()),
        }
    }

    /// Locks the core. A panic while holding the lock is a bug; the state is still
    /// consistent enough to keep serving other clients, so poisoning is ignored.
    pub(crate) fn lock(&self) -> CoreGuard<'_> {
        CoreGuard {
            core: self.core.lock().unwrap_or_else(|p| p.into_inner()),
            since: Instant::now(),
            holds: &self.holds,
        }
    }

    /// The longest the core's lock was held, and the 99.9th percentile of the hold
    /// times (the upper bound of its power-of-two bucket), in microseconds, since start.
    pub(crate) fn hold_times(&self) -> (u64, u64) {
        (
            self.holds.max_us.load(Ordering::Relaxed),
            self.holds.quantile_us(0.999),
        )
    }

    /// Microseconds the core's lock was held in all since start: its growth over a
    /// second is the share of that second the core was busy, which is the broker's
    /// ceiling while every connection goes through the one lock (issue #15).
    pub(crate) fn held_us(&self) -> u64 {
        self.holds.total_ns.load(Ordering::Relaxed) / 1000
    }
}

/// The core, locked; the hold time is counted when it is released.
#[derive(Debug)]
pub(crate) struct CoreGuard<'a> {
    core: MutexGuard<'a, Core>,
    since: Instant,
    holds: &'a HoldStats,
}

impl Deref for CoreGuard<'_> {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl DerefMut for CoreGuard<'_> {
    fn deref_mut(&mut self) -> &mut Core {
        &mut self.core
    }
}

impl Drop for CoreGuard<'_> {
    fn drop(&mut self) {
        // What this holder set aside and did not take is freed before letting go: a
        // message never outlives the hold that ended its delivery.
        self.core.free_spent();
        self.holds.record(self.since.elapsed());
    }
}

/// Bucket count of [`HoldStats`]: bucket `i` counts holds below 2^i microseconds (the
/// last one everything longer).
const HOLD_BUCKETS: usize = 24;

/// A histogram of lock hold times in power-of-two buckets of microseconds, lock-free.
#[derive(Debug, Default)]
struct HoldStats {
    buckets: [AtomicU64; HOLD_BUCKETS],
    max_us: AtomicU64,
    /// Summed hold time, nanoseconds.
    total_ns: AtomicU64,
}

impl HoldStats {
    fn record(&self, held: std::time::Duration) {
        let us = held.as_micros() as u64;
        self.total_ns
            .fetch_add(held.as_nanos() as u64, Ordering::Relaxed);
        let i = (64 - us.leading_zeros() as usize).min(HOLD_BUCKETS - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// The upper bound (in microseconds) of the bucket holding quantile `q`.
    fn quantile_us(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let rank = (total as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank.max(1) {
                return 1u64 << i;
            }
        }
        0
    }
}
