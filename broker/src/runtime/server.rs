//! Listeners (plain TCP, and TLS from `[[listener]]`), accept loops (admission through
//! one connection table for all of them), housekeeping, reloads and graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::arrival::Sequenced;
use super::auth::{Auth, Policy};
use super::connection::Dozing;
use super::doze::Dozer;
use super::shared::Shared;
use super::table::{Refused, Table};
use super::tls::Certs;
use crate::config::Config;
use crate::proto::message::Message;
use crate::proto::{Compaction, Core, RuntimeStats};
use crate::store::journal::{Journal, WriterHandle};
use crate::store::recover::Index;
use crate::store::spill::SpillDir;

/// How often wills, session expiry and message expiry are checked.
const TICK: Duration = Duration::from_millis(100);

/// How long shutdown waits for connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How often the TLS listeners' files are checked for changes (a change is reloaded
/// once it looked the same at two checks in a row).
const CERT_CHECK: Duration = Duration::from_secs(2);

/// Binds the listeners and serves until `shutdown` is cancelled.
///
/// # Errors
/// When a listener cannot be bound, or a password, rules, certificate or key file
/// cannot be read.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    // A bad password or rules file stops the start, before anything is opened; so does
    // a bad certificate, key or CA file.
    let auth = Arc::new(Auth::load(&config.auth, &config.mqtt.deny_subscribe)?);
    let certs = config
        .listener
        .iter()
        .enumerate()
        .map(|(i, l)| {
            Certs::load(l)
                .map(Arc::new)
                .map_err(|e| e.context(format!("listener[{i}] ({})", l.address)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (shared, writer) = if config.storage.memory {
        (Shared::new(config, auth), None)
    } else {
        let (shared, writer) = open_store(config, auth)?;
        (shared, Some(writer))
    };
    let shared = Arc::new(shared);
    apply_policy(&shared, &shared.auth.policy()).await;
    // SIGHUP reloads the password and rules files and the TLS certificates; a bad file
    // keeps the old ones.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let reloader = {
        let shared = shared.clone();
        let certs = certs.clone();
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                match shared.auth.reload() {
                    Ok(policy) => apply_policy(&shared, &policy).await,
                    Err(e) => tracing::error!("reload refused, the files in force stay: {e:#}"),
                }
                for c in &certs {
                    c.reload_logged("SIGHUP");
                }
            }
        })
    };
    // Certificates are also reloaded when their files change (a renewal tool that
    // signals nobody).
    let watcher = {
        let certs = certs.clone();
        tokio::spawn(async move {
            let mut seen = vec![Vec::new(); certs.len()];
            let mut interval = tokio::time::interval(CERT_CHECK);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                for (c, seen) in certs.iter().zip(&mut seen) {
                    if c.settled_change(seen) {
                        c.reload_logged("files changed");
                    }
                }
            }
        })
    };
    let listener = TcpListener::bind(shared.config.mqtt.listen).await?;
    let addr = listener.local_addr()?;
    let mut tls = Vec::with_capacity(certs.len());
    for c in &certs {
        let address = c.config().address;
        let l = TcpListener::bind(address)
            .await
            .map_err(|e| anyhow::anyhow!("cannot bind the TLS listener {address}: {e}"))?;
        tls.push((l, c.clone()));
    }
    let http = match shared.config.http.listen {
        Some(a) => Some(super::http::bind(a).await?),
        None => None,
    };
    // The TLS and HTTP listeners' ready lines come first: once `listening mqtt=` is out,
    // every listener is.
    for (l, _) in &tls {
        tracing::info!("{}", super::tls::ready_line(l.local_addr()?));
    }
    if let Some(h) = &http {
        tracing::info!("listening http={}", h.local_addr()?);
    }
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
        r = serve(listener, tls, http, shared, shutdown) => r,
        () = failed => Err(anyhow::anyhow!("the store failed; exiting so recovery runs at the next start")),
    };
    reloader.abort();
    watcher.abort();
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

/// Puts the password and rules files' policy in force on the live state: subscriptions
/// decided again, clients of removed users disconnected.
async fn apply_policy(shared: &Shared, policy: &Policy) {
    let users = policy.users.as_ref();
    let gone = |u: &str| shared.auth.user_gone(policy, u);
    let applied = shared
        .apply(|core, fx| core.set_acl(policy.acl.clone(), &gone, std::time::Instant::now(), fx))
        .await;
    tracing::info!(
        users = users.map_or(0, |u| u.len()),
        rules = policy.acl.rule_count(),
        subscriptions_removed = applied.removed,
        subscriptions_checked = applied.checked,
        disconnected = applied.disconnected,
        "access policy in force"
    );
}

/// Opens the on-disk store in `data_dir` and rebuilds the broker's state from it.
///
/// # Errors
/// When the directory or its files cannot be read or created.
pub(crate) fn open_store(
    config: Config,
    auth: Arc<Auth>,
) -> anyhow::Result<(Shared, WriterHandle)> {
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
    let clock = super::ports::now();
    let mut core = Core::with_journal(
        Arc::new(config.mqtt.clone()),
        journal.clone(),
        Arc::new(SpillDir::new(dir.join("spill"))),
        config.storage.queue_memory_bytes,
        clock,
    );
    core.set_memory_budget(config.storage.memory_budget_bytes);
    core.set_compact_min(config.storage.compact_min_bytes);
    let now = std::time::Instant::now();
    let now_ms = clock.unix_ms(now);
    // Streams are opened before the sessions, whose readers refer to them.
    let streams = super::ports::StreamPorts {
        dir: crate::store::stream::StreamDir::new(dir.join("streams")),
        journal: journal.clone(),
    };
    core.set_stream_store(Arc::new(streams), now);
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
                core.restore_delivery(client, dseq, d, msg, now)
            },
        )
    })
    .map_err(|e| anyhow::anyhow!("cannot read the store in {}: {e}", dir.display()))?;
    let deliveries = replay.delivered;
    let kept = replay.finish();
    core.restore_finish(&index, &kept);
    drop(kept);
    super::shared::declare_queues(&mut core, &config);
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
    Ok((Shared::with_core(config, core, journal, auth), writer))
}

/// Retained messages copied into a snapshot per hold of the core's lock.
const RETAINED_COPY_STEP: usize = 20_000;

/// Finishes a snapshot begun by the core: copies the retained messages in steps under
/// the core's lock (others run between steps), writes the snapshot away from the lock,
/// then tells the core it is done.
async fn compact(shared: Arc<Shared>, mut c: Compaction) {
    while !shared.lock().copy_retained(&mut c, RETAINED_COPY_STEP) {
        tokio::task::yield_now().await;
    }
    match tokio::task::spawn_blocking(move || c.run()).await {
        Ok(bytes) => shared.lock().compaction_done(bytes),
        Err(e) => tracing::error!(error = %e, "compaction failed"),
    }
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

/// Serves connections from `listener`, the TLS listeners `tls` and the HTTP listener
/// `http` until `shutdown` is cancelled. Every listener admits through one connection
/// table.
///
/// # Errors
/// Never today; kept fallible for listeners to come.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Vec<(TcpListener, Arc<Certs>)>,
    http: Option<TcpListener>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tracker = TaskTracker::new();
    let table = Arc::new(Table::new(&shared.config.mqtt));
    // Quiet TCP connections wait here without a task each (`runtime/doze.rs`).
    let (dozer, poll) = Dozer::new(shutdown.clone()).map_err(|e| {
        anyhow::anyhow!("cannot create the epoll instance for idle connections: {e}")
    })?;
    // On more than one thread the dozer's task takes an arrival ticket when woken, like
    // a connection's: the input it serves itself (`serve_first`) goes in that place.
    let turn = shared.arrivals.as_ref().map(|a| a.turn());
    tracker.spawn(Sequenced::new(
        dozer.clone().run(poll, tracker.clone()),
        turn,
    ));

    let ticker = {
        let shared = shared.clone();
        let table = table.clone();
        let shutdown = shutdown.clone();
        let tasks = tracker.clone();
        tracker.spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let started = std::time::Instant::now();
            let sys_every = Duration::from_secs(shared.config.mqtt.sys_interval_secs);
            let mut next_sys = started;
            loop {
                tokio::select! {
                    _ = interval.tick() => {
                        let clock = super::ports::now();
                        let now = clock.at;
                        // Wills published by the tick wake their subscribers once durable.
                        // Read outside the core's lock (a file read).
                        let rss = (shared.config.storage.memory_budget_bytes > 0)
                            .then(resident_bytes)
                            .flatten();
                        let compaction = shared.apply(|core, fx| {
                            core.set_clock(clock);
                            if let Some(rss) = rss {
                                core.observe_resident(rss);
                            }
                            if core.poll_timeout().is_some_and(|t| t <= now) {
                                core.handle_timeout(now, fx);
                            }
                            if !sys_every.is_zero() && now >= next_sys {
                                let (pending, _) = table.counts();
                                let (refused, evicted) = table.stats();
                                let (hold_max_us, hold_p999_us) = shared.hold_times();
                                let stats = RuntimeStats {
                                    pending,
                                    refused,
                                    evicted,
                                    logins_refused: shared.auth.logins_refused(),
                                    hold_max_us,
                                    hold_p999_us,
                                    held_us: shared.held_us(),
                                };
                                core.publish_sys(now - started, stats, now, fx);
                                next_sys = now + sys_every;
                            }
                            core.begin_compaction(now)
                        })
                        .await;
                        if let Some(c) = compaction {
                            tasks.spawn(compact(shared.clone(), c));
                        }
                    }
                    _ = shutdown.cancelled() => break,
                }
            }
        })
    };

    if let Some(h) = http {
        tracker.spawn(super::http::serve(
            h,
            shared.clone(),
            table.clone(),
            shutdown.clone(),
            tracker.clone(),
        ));
    }
    for (l, certs) in tls {
        tracker.spawn(accept_loop(
            l,
            Listener::Tls(certs),
            table.clone(),
            shared.clone(),
            shutdown.clone(),
            tracker.clone(),
        ));
    }
    accept_loop(
        listener,
        Listener::Tcp(dozer),
        table,
        shared,
        shutdown,
        tracker.clone(),
    )
    .await;
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

/// What a listener serves.
enum Listener {
    /// MQTT over plain TCP; quiet connections doze in this dozer.
    Tcp(Arc<Dozer<Dozing>>),
    /// MQTT over TLS with these certificates.
    Tls(Arc<Certs>),
}

/// Accepts connections from `listener` until `shutdown` is cancelled, admits each
/// through `table` and serves it in a task of `tracker`, as `kind` says.
async fn accept_loop(
    listener: TcpListener,
    kind: Listener,
    table: Arc<Table>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
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
        match &kind {
            Listener::Tcp(dozer) => tracker.spawn(super::connection::serve_tcp(
                stream,
                peer,
                shared,
                shutdown,
                slot,
                dozer.clone(),
                tracker.clone(),
            )),
            Listener::Tls(certs) => tracker.spawn(super::connection::serve_tls(
                stream,
                peer,
                shared,
                shutdown,
                slot,
                certs.clone(),
            )),
        };
    }
}
