//! Listener, accept loop, connection limit, housekeeping and graceful shutdown.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{Core, Effects};
use crate::config::Config;
use crate::message::Message;
use crate::store::journal::{Journal, JournalFailed, WriterHandle};
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
        if self.durable(lsn).await.is_err() {
            // The journal failed: what `f` produced must never be sent. This task stays
            // parked until `run` (which sees the same failure) stops the process, and
            // the connection closes unacknowledged.
            std::future::pending::<()>().await;
        }
        fx.run();
        r
    }

    /// Waits until the journal holds everything up to `lsn` durably (no-op for 0).
    ///
    /// # Errors
    /// [`JournalFailed`] when it never will: nothing depending on `lsn` may be sent.
    ///
    /// # Cancel safety
    /// Cancel-safe.
    pub async fn durable(&self, lsn: u64) -> Result<(), JournalFailed> {
        match (&self.journal, lsn > 0) {
            (Some(j), true) => j.wait_durable(lsn).await,
            _ => Ok(()),
        }
    }

    /// Locks the core. A panic while holding the lock is a bug; the state is still
    /// consistent enough to keep serving other clients, so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
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
    let journal = shared.journal.clone();
    let failed = async {
        match &journal {
            Some(j) => j.failed_signal().await,
            None => std::future::pending().await,
        }
    };
    // A failed journal write or sync stops the broker at once: connections waiting on
    // it are never acknowledged, and only recovery from the log at the next start is
    // trustworthy (see `store::journal`).
    let result = tokio::select! {
        r = serve(listener, Arc::new(shared), shutdown) => r,
        () = failed => Err(anyhow::anyhow!("the store failed; exiting so recovery runs at the next start")),
    };
    if let Some(w) = writer {
        // Writes and syncs whatever the last connections appended.
        match tokio::task::spawn_blocking(move || w.shutdown()).await? {
            Ok(()) => tracing::info!("store flushed"),
            Err(e) => {
                tracing::error!(error = %e, "store not flushed");
                return result.and(Err(anyhow::anyhow!("store not flushed: {e}")));
            }
        }
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
    let limit = Arc::new(Semaphore::new(shared.config.mqtt.max_connections));

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
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; refusing");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            crate::connection::serve(stream, peer, shared, shutdown).await;
            drop(permit);
        });
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
