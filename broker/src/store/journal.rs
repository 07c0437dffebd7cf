//! Group commit: the core appends records under its lock; one writer thread writes them
//! to the [`Log`] and, under `--fsync always`, syncs once for everything appended since
//! the last sync, then publishes the new durable position. Connections wait for that
//! position before sending the acknowledgements that depend on it.
//!
//! Positions ("LSNs") count records appended since start-up; only their order matters.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::watch;

use super::log::{frame_with, Log, Recovery};
use super::record::Record;
use crate::config::FsyncPolicy;

/// Snapshot bytes that may wait for the writer before `snapshot_chunk` blocks.
const SNAPSHOT_QUEUE: usize = 8 * 1024 * 1024;

/// Default size at which a segment is closed and a new one started.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Work for the writer thread, in order.
#[derive(Debug)]
enum Job {
    /// Framed records.
    Records(Vec<u8>),
    /// Start of a snapshot of the whole live state.
    SnapshotBegin,
    /// Framed records of the snapshot.
    SnapshotChunk(Vec<u8>),
    /// End of the snapshot: it replaces every older segment.
    SnapshotEnd,
}

/// What the core has appended and the writer has not taken yet.
#[derive(Debug, Default)]
struct Pending {
    jobs: VecDeque<Job>,
    /// Position of the last record appended.
    appended: u64,
    /// Bytes appended since the last snapshot (for the compaction trigger).
    since_snapshot: u64,
    /// Snapshot bytes queued and not yet written (backpressure).
    snapshot_queued: usize,
    /// The writer sleeps on `wake`: an append must signal it. While the writer works
    /// (writes, syncs) appends skip the signal, a system call each, and the writer
    /// finds their records when it comes back for more.
    writer_waiting: bool,
    shutdown: bool,
}

/// The journal shared by the core and its writer thread.
#[derive(Debug)]
pub struct Journal {
    // A std Mutex: appends hold it for a memcpy, the writer only to swap the job queue.
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Signalled when the writer took jobs (snapshot backpressure).
    progress: Condvar,
    durable: AtomicU64,
    durable_tx: watch::Sender<u64>,
    policy: FsyncPolicy,
    failed: AtomicBool,
}

/// Handle that stops the writer thread and waits for the last sync.
#[derive(Debug)]
pub struct WriterHandle {
    journal: Arc<Journal>,
    thread: Option<JoinHandle<()>>,
}

impl WriterHandle {
    /// Writes and syncs everything appended, then stops the writer.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.journal.lock().shutdown = true;
        self.journal.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Journal {
    /// Opens the log in `dir`, replaying every intact record into `replay`, and starts
    /// the writer thread.
    ///
    /// # Errors
    /// I/O errors opening the log.
    pub fn open(
        dir: &Path,
        policy: FsyncPolicy,
        segment_bytes: u64,
        replay: &mut dyn FnMut(&[u8]),
    ) -> std::io::Result<(Arc<Journal>, WriterHandle, Recovery)> {
        let (log, recovery) = Log::open(dir, segment_bytes, replay)?;
        let (journal, writer) = Journal::start(log, policy)?;
        Ok((journal, writer, recovery))
    }

    /// Test seam: opens the log in `dir` with `faults` injected into its file operations.
    #[cfg(test)]
    fn open_with_faults(
        dir: &Path,
        policy: FsyncPolicy,
        faults: Arc<super::log::FailPoints>,
    ) -> std::io::Result<(Arc<Journal>, WriterHandle)> {
        let (mut log, _) = Log::open(dir, DEFAULT_SEGMENT_BYTES, &mut |_| {})?;
        log.faults = faults;
        Journal::start(log, policy)
    }

    /// Starts the writer thread on `log`.
    fn start(log: Log, policy: FsyncPolicy) -> std::io::Result<(Arc<Journal>, WriterHandle)> {
        let (durable_tx, _) = watch::channel(0);
        let journal = Arc::new(Journal {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            progress: Condvar::new(),
            durable: AtomicU64::new(0),
            durable_tx,
            policy,
            failed: AtomicBool::new(false),
        });
        let thread = {
            let journal = journal.clone();
            std::thread::Builder::new()
                .name("mote-journal".into())
                .spawn(move || journal.writer(log))?
        };
        Ok((
            journal.clone(),
            WriterHandle {
                journal,
                thread: Some(thread),
            },
        ))
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `rec`; returns its position.
    pub fn append(&self, rec: &Record) -> u64 {
        self.append_with(&mut |b| rec.encode(b))
    }

    /// Appends the record that `encode` writes (straight into the queued bytes);
    /// returns its position.
    pub fn append_with(&self, encode: &mut dyn FnMut(&mut Vec<u8>)) -> u64 {
        let mut p = self.lock();
        let jobs = &mut p.jobs;
        if !matches!(jobs.back(), Some(Job::Records(_))) {
            jobs.push_back(Job::Records(Vec::with_capacity(4096)));
        }
        if let Some(Job::Records(buf)) = jobs.back_mut() {
            let before = buf.len();
            frame_with(buf, encode);
            p.since_snapshot += (buf.len() - before) as u64;
        }
        p.appended += 1;
        let lsn = p.appended;
        let wake = p.writer_waiting;
        drop(p);
        if wake {
            self.wake.notify_one();
        }
        lsn
    }

    /// Starts a snapshot of the whole state, taken after every record appended so far.
    /// Feed it with [`Journal::snapshot_chunk`] and close it with
    /// [`Journal::snapshot_end`]; once written, older segments are deleted.
    pub fn snapshot_begin(&self) {
        let mut p = self.lock();
        p.since_snapshot = 0;
        p.jobs.push_back(Job::SnapshotBegin);
        drop(p);
        self.wake.notify_one();
    }

    /// Queues framed snapshot records; blocks while too much snapshot data waits for the
    /// writer, so a large snapshot is streamed rather than held in memory.
    pub fn snapshot_chunk(&self, framed: Vec<u8>) {
        let mut p = self.lock();
        while p.snapshot_queued > SNAPSHOT_QUEUE && !self.failed() {
            p = self.progress.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        p.snapshot_queued += framed.len();
        p.since_snapshot += framed.len() as u64;
        p.jobs.push_back(Job::SnapshotChunk(framed));
        drop(p);
        self.wake.notify_one();
    }

    /// Ends the snapshot started with [`Journal::snapshot_begin`].
    pub fn snapshot_end(&self) {
        self.lock().jobs.push_back(Job::SnapshotEnd);
        self.wake.notify_one();
    }

    /// Writes a whole snapshot held in memory.
    pub fn snapshot(&self, framed: Vec<u8>) {
        self.snapshot_begin();
        self.snapshot_chunk(framed);
        self.snapshot_end();
    }

    /// Bytes appended since the last snapshot.
    pub fn since_snapshot(&self) -> u64 {
        self.lock().since_snapshot
    }

    /// True when acknowledgements must wait for the writer (`--fsync always`).
    pub fn waits(&self) -> bool {
        self.policy == FsyncPolicy::Always
    }

    /// The last position known durable.
    pub fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// True once a write or sync failed: nothing more is acknowledged.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Waits until position `lsn` is durable.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only watches a counter.
    pub async fn wait_durable(&self, lsn: u64) {
        let mut rx = self.durable_tx.subscribe();
        let _ = rx.wait_for(|d| *d >= lsn).await;
    }

    /// The writer thread: take jobs, write, sync per policy, publish the durable position.
    fn writer(&self, mut log: Log) {
        let mut last_sync = Instant::now();
        // Written but not yet synced (only under `every=` and `never`).
        let mut dirty = false;
        loop {
            let (jobs, upto, shutdown, snapshot_waited) = {
                let mut p = self.lock();
                if p.jobs.is_empty() && !p.shutdown {
                    p.writer_waiting = true;
                    p = match self.policy {
                        // Wake at the interval to sync what was written meanwhile.
                        FsyncPolicy::Every(d) if dirty => {
                            let left = d.saturating_sub(last_sync.elapsed());
                            self.wake
                                .wait_timeout(p, left)
                                .map(|(g, _)| g)
                                .unwrap_or_else(|e| e.into_inner().0)
                        }
                        _ => self.wake.wait(p).unwrap_or_else(|e| e.into_inner()),
                    };
                    p.writer_waiting = false;
                }
                let snapshot_waited = std::mem::take(&mut p.snapshot_queued) > 0;
                (
                    std::mem::take(&mut p.jobs),
                    p.appended,
                    p.shutdown,
                    snapshot_waited,
                )
            };
            if snapshot_waited {
                self.progress.notify_all();
            }
            let mut result = Ok(());
            for job in jobs {
                dirty = true;
                result = match job {
                    Job::Records(buf) => {
                        log.append_framed(&buf);
                        Ok(())
                    }
                    Job::SnapshotBegin => log.begin_snapshot(),
                    Job::SnapshotChunk(buf) => log.snapshot_chunk(&buf),
                    Job::SnapshotEnd => log.end_snapshot(),
                };
                if result.is_err() {
                    break;
                }
            }
            let sync = dirty
                && match self.policy {
                    FsyncPolicy::Always => true,
                    FsyncPolicy::Never => shutdown,
                    FsyncPolicy::Every(d) => shutdown || last_sync.elapsed() >= d,
                };
            if result.is_ok() {
                result = log.write(sync);
            }
            match result {
                Ok(()) => {
                    if sync {
                        last_sync = Instant::now();
                        dirty = false;
                    }
                    self.durable.store(upto, Ordering::Release);
                    self.durable_tx.send_replace(upto);
                }
                Err(e) => {
                    // Nothing after this point is acknowledged: the waiters never wake.
                    tracing::error!(error = %e, "store write failed; acknowledgements stop");
                    self.failed.store(true, Ordering::Release);
                }
            }
            if shutdown {
                let _ = log.write(true);
                return;
            }
        }
    }
}

/// Shares one journal as an optional handle in the core (`None` = in-memory store).
pub type JournalRef = Option<Arc<Journal>>;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::log::{frame, FailPoints};
    use std::time::Duration;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("mote-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appended_records_become_durable_and_replay() {
        let dir = tmp("durable");
        let (j, writer, _) = Journal::open(
            &dir,
            FsyncPolicy::Always,
            DEFAULT_SEGMENT_BYTES,
            &mut |_| {},
        )
        .unwrap();
        let mut last = 0;
        for i in 0..50u16 {
            last = j.append(&Record::Inbound2 {
                client: "c".into(),
                packet_id: i + 1,
            });
        }
        tokio::time::timeout(Duration::from_secs(5), j.wait_durable(last))
            .await
            .unwrap();
        assert!(j.durable() >= last);
        writer.shutdown();
        let mut n = 0;
        let (_, w2, rep) =
            Journal::open(&dir, FsyncPolicy::Always, DEFAULT_SEGMENT_BYTES, &mut |b| {
                assert!(Record::decode(b).is_some());
                n += 1;
            })
            .unwrap();
        w2.shutdown();
        assert_eq!((n, rep.records), (50, 50));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn always_releases_a_waiter_only_after_the_sync() {
        let dir = tmp("always-sync");
        let faults = Arc::new(FailPoints::default());
        faults.hold_syncs.store(true, Ordering::Release);
        let (j, writer) =
            Journal::open_with_faults(&dir, FsyncPolicy::Always, faults.clone()).unwrap();
        let lsn = j.append(&Record::SessionEnd { client: "c".into() });
        // Written, but its sync is held: the waiter must not be released.
        while faults.writes.load(Ordering::Acquire) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let early = tokio::time::timeout(Duration::from_millis(200), j.wait_durable(lsn)).await;
        assert!(early.is_err(), "released before its sync");
        assert_eq!(j.durable(), 0);
        faults.hold_syncs.store(false, Ordering::Release);
        tokio::time::timeout(Duration::from_secs(5), j.wait_durable(lsn))
            .await
            .unwrap();
        assert!(j.durable() >= lsn);
        assert!(faults.syncs.load(Ordering::Acquire) >= 1);
        writer.shutdown();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn snapshot_supersedes_earlier_records() {
        let dir = tmp("snap");
        let (j, writer, _) =
            Journal::open(&dir, FsyncPolicy::Never, DEFAULT_SEGMENT_BYTES, &mut |_| {}).unwrap();
        for _ in 0..10 {
            j.append(&Record::SessionEnd {
                client: "old".into(),
            });
        }
        let mut snap = Vec::new();
        let mut rec = Vec::new();
        Record::SessionOpen {
            client: "kept".into(),
            expiry: 5,
        }
        .encode(&mut rec);
        frame(&mut snap, &rec);
        j.snapshot(snap);
        j.append(&Record::SessionEnd {
            client: "after".into(),
        });
        writer.shutdown();
        let mut got = Vec::new();
        let (_, w2, _) = Journal::open(&dir, FsyncPolicy::Never, DEFAULT_SEGMENT_BYTES, &mut |b| {
            got.push(Record::decode(b).unwrap())
        })
        .unwrap();
        w2.shutdown();
        assert_eq!(
            got,
            [
                Record::SessionOpen {
                    client: "kept".into(),
                    expiry: 5
                },
                Record::SessionEnd {
                    client: "after".into()
                }
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
