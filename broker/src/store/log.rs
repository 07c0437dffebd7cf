//! A segmented append-only log with per-record checksums: the bottom layer of the
//! on-disk store.
//!
//! File layout: `DIR/NNNNNNNNNNNNNNNN.log` segments, numbered in write order. A record is
//!
//! ```text
//! magic "MoTe" (4) | payload length u32 LE (4) | CRC-32 of length+payload u32 LE (4) | payload
//! ```
//!
//! Recovery reads every segment in order and hands each intact payload to the caller.
//! A record whose checksum fails is skipped by scanning for the next magic that starts an
//! intact record, so corruption in the middle loses only the damaged record. Bytes after
//! the last intact record of the newest segment are a torn write from a crash: they are
//! truncated, and the report says how many.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
#[cfg(test)]
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
#[cfg(test)]
use std::sync::Arc;
use std::thread::JoinHandle;

/// Start of every record.
const MAGIC: [u8; 4] = *b"MoTe";
/// Bytes before the payload.
pub(crate) const HEADER: usize = 12;
/// Largest payload accepted when reading (a larger length field is corruption).
const MAX_RECORD: usize = 512 * 1024 * 1024;

/// What recovery found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Recovery {
    /// Segments read.
    pub(crate) segments: usize,
    /// Intact records handed to the caller.
    pub(crate) records: u64,
    /// Damaged regions skipped in the middle of the log (each loses one record, or the
    /// few a damaged region spans).
    pub(crate) corrupt_regions: u64,
    /// Bytes cut from the end of the newest segment (a torn write).
    pub(crate) truncated_bytes: u64,
    /// The segment new records go to: [`replay`] reads the ones before it.
    pub(crate) active_segment: u64,
}

/// The log: closed segments plus one active segment that appends go to.
#[derive(Debug)]
pub(crate) struct Log {
    dir: PathBuf,
    /// Numbers of all segments, oldest first; the last is active.
    segments: Vec<u64>,
    /// The active segment; written at `active_len` (it may be longer: preallocated).
    active: File,
    active_len: u64,
    /// A zero-filled segment being made ready in the background for the next roll.
    spare: Option<JoinHandle<io::Result<File>>>,
    segment_limit: u64,
    /// Bytes appended but not yet written to the file.
    pending: Vec<u8>,
    /// The segment number reserved for the snapshot being written, if any: the segment
    /// that records appended meanwhile go to comes right after it.
    snapshot: Option<u64>,
    /// The sync of the segment closed last, running on a thread of its own (see
    /// [`Log::roll`]).
    closing: Option<JoinHandle<io::Result<()>>>,
    /// Test seam: failures and pauses a test injects into the file operations.
    #[cfg(test)]
    pub(crate) faults: Arc<FailPoints>,
}

/// A file operation of the log that can fail (see [`FailPoints`]).
#[derive(Debug, Clone, Copy)]
enum Op {
    /// Bytes handed to the kernel (`write(2)`).
    Write,
    /// `fsync`/`fdatasync` of a log file.
    Sync,
}

/// Test seam: makes the N-th write or sync of a [`Log`] fail once (the ones after it
/// succeed again, as after a real failed `fsync`), or holds writes or syncs until
/// released, so tests can check what the journal does around them.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct FailPoints {
    /// The write with this number (counting from 1) fails; 0 = none.
    pub(crate) fail_write: AtomicU64,
    /// The sync with this number (counting from 1) fails; 0 = none.
    pub(crate) fail_sync: AtomicU64,
    /// Writes attempted so far.
    pub(crate) writes: AtomicU64,
    /// Syncs attempted so far.
    pub(crate) syncs: AtomicU64,
    /// While set, writes wait before they start.
    pub(crate) hold_writes: AtomicBool,
    /// While set, syncs wait before they start.
    pub(crate) hold_syncs: AtomicBool,
    /// While set, the syncs made apart from the journal's writer (a snapshot's final
    /// sync, a closed segment's) wait before they start.
    pub(crate) hold_background: AtomicBool,
}

#[cfg(test)]
impl FailPoints {
    /// Counts `op`, waits while it is held, and fails it if it is the one asked for.
    fn check(&self, op: Op) -> io::Result<()> {
        let (count, fail, hold) = match op {
            Op::Write => (&self.writes, &self.fail_write, &self.hold_writes),
            Op::Sync => (&self.syncs, &self.fail_sync, &self.hold_syncs),
        };
        while hold.load(Ordering::Acquire) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let n = count.fetch_add(1, Ordering::AcqRel) + 1;
        if fail.load(Ordering::Acquire) == n {
            return Err(io::Error::other(format!("injected failure of {op:?} {n}")));
        }
        Ok(())
    }

    /// Waits while syncs made apart from the writer are held.
    fn hold_background(&self) {
        while self.hold_background.load(Ordering::Acquire) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// Name of a snapshot while it is being written.
const SNAPSHOT_TMP: &str = "snapshot.tmp";
/// Name of the zero-filled file prepared to become the next segment.
const SPARE_TMP: &str = "spare.tmp";

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016}.log"))
}

/// Where a segment a snapshot replaced waits to be deleted (never read again).
fn retired_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:016}.retired"))
}

#[cfg(test)]
/// Appends one framed record holding `payload` to `out`.
pub(crate) fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    frame_with(out, &mut |b| b.extend_from_slice(payload));
}

/// Appends one framed record whose payload `encode` appends, in place (no copy of the
/// payload through a buffer of its own).
pub(crate) fn frame_with(out: &mut Vec<u8>, encode: &mut dyn FnMut(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[0; HEADER - 4]);
    encode(out);
    let len = u32::try_from(out.len() - at - HEADER).unwrap_or(u32::MAX);
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&out[at + HEADER..]);
    out[at + 4..at + 8].copy_from_slice(&len.to_le_bytes());
    out[at + 8..at + HEADER].copy_from_slice(&h.finalize().to_le_bytes());
}

/// What starts at some position of a buffer.
enum At {
    /// An intact record: its payload's range.
    Record(usize, usize),
    /// The start of what may be a record, cut off by the end of the buffer.
    Short,
    /// Not an intact record.
    Bad,
}

/// The record at `pos` of `buf`: `Ok(Some(payload range))` when intact, `Ok(None)` when
/// it may be one cut off by the end of `buf` (its full length, when the header says),
/// `Err(())` when no intact record starts there.
pub(crate) fn framed_at(
    buf: &[u8],
    pos: usize,
) -> Result<Result<(usize, usize), Option<usize>>, ()> {
    match record_at(buf, pos) {
        At::Record(start, end) => Ok(Ok((start, end))),
        At::Short => Ok(Err(buf.get(pos + 4..pos + 8).map(|l| {
            HEADER + u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize
        }))),
        At::Bad => Err(()),
    }
}

/// What is at `pos` in `buf`.
fn record_at(buf: &[u8], pos: usize) -> At {
    let Some(hdr) = buf.get(pos..pos + HEADER) else {
        let rest = buf.get(pos..).unwrap_or_default();
        let magic_prefix = rest.len() < MAGIC.len() && MAGIC.starts_with(rest);
        return if magic_prefix || rest.starts_with(&MAGIC) {
            At::Short
        } else {
            At::Bad
        };
    };
    if hdr[..4] != MAGIC {
        return At::Bad;
    }
    let len = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) as usize;
    let crc = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
    if len > MAX_RECORD {
        return At::Bad;
    }
    let start = pos + HEADER;
    let Some(payload) = buf.get(start..start + len) else {
        return At::Short;
    };
    let mut h = crc32fast::Hasher::new();
    h.update(&hdr[4..8]);
    h.update(payload);
    if h.finalize() == crc {
        At::Record(start, start + len)
    } else {
        At::Bad
    }
}

/// Bytes read from a segment at a time: recovery holds this much of the log (plus one
/// record larger than it) in memory, however large a segment or snapshot is.
const SCAN_CHUNK: usize = 4 * 1024 * 1024;

/// What a scan of one segment found.
#[derive(Debug, Default)]
struct Scan {
    /// Offset just after the last intact record.
    good_end: u64,
    /// Damaged regions skipped before it.
    corrupt: u64,
    /// Intact records.
    records: u64,
    /// Bytes in the segment.
    len: u64,
    /// Some byte after `good_end` is not zero: a torn or damaged tail rather than the
    /// unused, zero-filled end of a preallocated segment.
    dirty_tail: bool,
}

/// Reads `src` in chunks, calling `f` for each intact payload.
fn scan(src: &mut dyn Read, f: &mut dyn FnMut(&[u8])) -> io::Result<Scan> {
    let mut out = Scan::default();
    let mut buf: Vec<u8> = Vec::with_capacity(SCAN_CHUNK);
    // File offset of `buf[0]`.
    let mut base = 0u64;
    let mut pos = 0;
    let mut eof = false;
    let mut in_damage = false;
    loop {
        let at = record_at(&buf, pos);
        if matches!(at, At::Short) && !eof {
            // Drop what was consumed and read on.
            buf.drain(..pos);
            base += pos as u64;
            pos = 0;
            let have = buf.len();
            buf.resize(have + SCAN_CHUNK, 0);
            let n = read_full(src, &mut buf[have..])?;
            buf.truncate(have + n);
            out.len = base + buf.len() as u64;
            eof = n == 0;
            continue;
        }
        match at {
            At::Record(start, end) => {
                if in_damage {
                    out.corrupt += 1;
                    in_damage = false;
                }
                f(&buf[start..end]);
                out.records += 1;
                pos = end;
                out.good_end = base + end as u64;
                out.dirty_tail = false;
            }
            At::Short if pos >= buf.len() => break,
            At::Short | At::Bad => {
                in_damage = true;
                match buf[pos..].iter().position(|&b| b != 0) {
                    // Zeros (a preallocated segment's unused end, or a hole): skip them.
                    None => {
                        pos = buf.len();
                        continue;
                    }
                    Some(0) => out.dirty_tail = true,
                    Some(n) => {
                        pos += n;
                        continue;
                    }
                }
                // Resynchronise on the next magic; without one, keep the last bytes
                // (a magic may straddle the chunk's end) and read on.
                match buf
                    .get(pos + 1..)
                    .and_then(|b| b.windows(4).position(|w| w == MAGIC))
                {
                    Some(off) => pos = pos + 1 + off,
                    None if eof => break,
                    None => pos = buf.len().saturating_sub(MAGIC.len() - 1).max(pos + 1),
                }
            }
        }
    }
    Ok(out)
}

/// Fills `buf` from `src` unless it ends first; returns the bytes read.
fn read_full(src: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Segment numbers in `dir`, oldest first.
fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut segments: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".log")?.parse::<u64>().ok()
        })
        .collect();
    segments.sort_unstable();
    Ok(segments)
}

/// Reads the intact records of the segments numbered below `before` again, in order,
/// without changing them: recovery's second pass, after [`Log::open`] (which truncated
/// any torn tail, so both passes see the same records).
///
/// # Errors
/// I/O errors of the directory or files.
pub(crate) fn replay(dir: &Path, before: u64, f: &mut dyn FnMut(&[u8])) -> io::Result<()> {
    for n in list_segments(dir)?.into_iter().filter(|&n| n < before) {
        scan(&mut File::open(segment_path(dir, n))?, f)?;
    }
    Ok(())
}

impl Log {
    /// Opens (creating if needed) the log in `dir`, replaying every intact record into
    /// `f`, truncating a torn tail. New appends go to a fresh segment.
    ///
    /// # Errors
    /// I/O errors of the directory or files.
    pub(crate) fn open(
        dir: &Path,
        segment_limit: u64,
        f: &mut dyn FnMut(&[u8]),
    ) -> io::Result<(Log, Recovery)> {
        fs::create_dir_all(dir)?;
        // A snapshot that was never finished was never in force; a spare never used.
        let _ = fs::remove_file(dir.join(SNAPSHOT_TMP));
        let _ = fs::remove_file(dir.join(SPARE_TMP));
        // Segments a snapshot replaced whose deletion a crash cut short.
        for e in fs::read_dir(dir)?.filter_map(|e| e.ok()) {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.ends_with(".retired"))
            {
                let _ = fs::remove_file(e.path());
            }
        }
        let mut segments = list_segments(dir)?;
        let mut report = Recovery {
            segments: segments.len(),
            ..Recovery::default()
        };
        let last = segments.last().copied();
        for &n in &segments {
            let path = segment_path(dir, n);
            let found = scan(&mut File::open(&path)?, f)?;
            report.corrupt_regions += found.corrupt;
            report.records += found.records;
            let tail = found.len - found.good_end;
            if tail > 0 {
                // The unused, zero-filled end of a preallocated segment, or a torn write
                // at the end of the newest segment: cut it off (only the latter is news).
                let torn = found.dirty_tail && Some(n) == last;
                if !found.dirty_tail || torn {
                    if torn {
                        report.truncated_bytes += tail;
                    }
                    OpenOptions::new()
                        .write(true)
                        .open(&path)?
                        .set_len(found.good_end)?;
                    continue;
                }
                // Damage at the end of an older segment loses what it covered.
                report.corrupt_regions += 1;
            }
        }
        let next = last.map_or(1, |n| n + 1);
        let active = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(segment_path(dir, next))?;
        segments.push(next);
        report.active_segment = next;
        sync_dir(dir)?;
        Ok((
            Log {
                dir: dir.to_path_buf(),
                segments,
                active,
                active_len: 0,
                spare: None,
                segment_limit,
                pending: Vec::with_capacity(64 * 1024),
                snapshot: None,
                closing: None,
                #[cfg(test)]
                faults: Arc::default(),
            },
            report,
        ))
    }

    #[cfg(test)]
    /// Buffers one record; nothing reaches the file until [`Log::write`].
    pub(crate) fn append(&mut self, payload: &[u8]) {
        frame(&mut self.pending, payload);
    }

    /// Buffers already framed records (see [`frame`]).
    pub(crate) fn append_framed(&mut self, framed: &[u8]) {
        self.pending.extend_from_slice(framed);
    }

    /// Writes buffered records to the active segment, then `fsync`s it when `sync`.
    /// Rolls to a new segment once the active one passes the size limit.
    ///
    /// # Errors
    /// I/O errors; the records are then not durable and the caller must not acknowledge.
    pub(crate) fn write(&mut self, sync: bool) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.inject(Op::Write)?;
            self.active.write_all_at(&self.pending, self.active_len)?;
            self.active_len += self.pending.len() as u64;
            self.pending.clear();
        }
        if sync {
            self.inject(Op::Sync)?;
            self.active.sync_data()?;
        }
        if self.closing.as_ref().is_some_and(JoinHandle::is_finished) {
            self.close()?;
        }
        if self.active_len >= self.segment_limit {
            self.roll()?;
        } else if self.active_len >= self.segment_limit / 2 && self.spare.is_none() {
            self.spare = Some(prepare_spare(&self.dir, self.segment_limit)?);
        }
        Ok(())
    }

    /// Closes the active segment and starts the next: the prepared spare if it is ready,
    /// else an empty file.
    ///
    /// The closed segment is synced on a thread of its own. Under `--fsync always` its
    /// records were synced before they were acknowledged, so that sync finds nothing to
    /// do; under `every=MS` and `never` it writes up to a whole segment (157 ms measured
    /// for 64 MiB), which would otherwise hold every acknowledgement behind it. Its
    /// result is collected by a later [`Log::write`] or [`Log::close`]; a failure there
    /// fails the journal, as any failed sync does.
    fn roll(&mut self) -> io::Result<()> {
        self.inject(Op::Sync)?;
        // One closed segment's sync at a time.
        self.close()?;
        let next = self.segments.last().map_or(1, |n| n + 1);
        let path = segment_path(&self.dir, next);
        let spare = match self.spare.take() {
            Some(h) if h.is_finished() => h.join().ok().and_then(Result::ok),
            still_writing => {
                self.spare = still_writing;
                None
            }
        };
        let active = match spare {
            Some(file) => {
                fs::rename(self.dir.join(SPARE_TMP), &path)?;
                file
            }
            None => OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)?,
        };
        let closed = std::mem::replace(&mut self.active, active);
        self.segments.push(next);
        self.active_len = 0;
        sync_dir(&self.dir)?;
        #[cfg(test)]
        let faults = self.faults.clone();
        self.closing = Some(
            std::thread::Builder::new()
                .name("mote-log-close".into())
                .spawn(move || {
                    #[cfg(test)]
                    faults.hold_background();
                    closed.sync_data()
                })?,
        );
        Ok(())
    }

    /// Test seam: lets a test fail or hold this operation (nothing outside tests).
    #[cfg(test)]
    fn inject(&self, op: Op) -> io::Result<()> {
        self.faults.check(op)
    }

    /// Test seam: lets a test fail or hold this operation (nothing outside tests).
    #[cfg(not(test))]
    #[inline(always)]
    fn inject(&self, _op: Op) -> io::Result<()> {
        Ok(())
    }

    /// Starts a snapshot: everything appended so far is written and synced, and the
    /// snapshot gets a temporary file, returned to be written by whoever writes it (the
    /// journal does it on a thread of its own, so the writer is not held up by its bytes
    /// and its sync). Records appended meanwhile go to a new segment numbered after the
    /// one reserved for the snapshot, so they survive it and replay after it. (The
    /// snapshot is taken of the state at this point; it is written while the broker goes
    /// on.) [`Log::install_snapshot`] puts the finished file in force.
    ///
    /// # Errors
    /// I/O errors.
    pub(crate) fn begin_snapshot(&mut self) -> io::Result<SnapshotFile> {
        self.write(true)?;
        let slot = self.segments.last().map_or(1, |n| n + 1);
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(self.dir.join(SNAPSHOT_TMP))?;
        // The next segment skips the reserved number.
        self.segments.push(slot);
        let rolled = self.roll();
        self.segments.retain(|&n| n != slot);
        rolled?;
        self.snapshot = Some(slot);
        Ok(SnapshotFile {
            file,
            len: 0,
            unsynced: 0,
            #[cfg(test)]
            faults: self.faults.clone(),
        })
    }

    /// Puts a snapshot from [`Log::begin_snapshot`], written and synced, in force: renames
    /// it into place as the segment reserved for it (atomic), then retires every segment
    /// before it. Segments after it (records appended since [`Log::begin_snapshot`])
    /// stay. A crash at any point leaves either the old segments or the complete
    /// snapshot, never a partial one: recovery ignores (and removes) the temporary file.
    ///
    /// # Errors
    /// I/O errors; the old segments are then kept.
    pub(crate) fn install_snapshot(&mut self) -> io::Result<()> {
        let slot = self
            .snapshot
            .take()
            .ok_or_else(|| io::Error::other("no snapshot started"))?;
        fs::rename(self.dir.join(SNAPSHOT_TMP), segment_path(&self.dir, slot))?;
        sync_dir(&self.dir)?;
        // The replaced segments leave the log by a rename (metadata only, quick); their
        // data is freed by a thread of its own, a little at a time (see
        // `free_gradually`). Recovery reads only `.log` files, and deletes leftovers
        // from a crash.
        let mut kept = vec![slot];
        let mut gone = Vec::new();
        for n in std::mem::take(&mut self.segments) {
            if n < slot {
                let old = retired_path(&self.dir, n);
                fs::rename(segment_path(&self.dir, n), &old)?;
                gone.push(old);
            } else {
                kept.push(n);
            }
        }
        self.segments = kept;
        sync_dir(&self.dir)?;
        if !gone.is_empty() {
            let removed = std::thread::Builder::new()
                .name("mote-log-retire".into())
                .spawn(move || {
                    for p in gone {
                        free_gradually(&p);
                        let _ = fs::remove_file(p);
                    }
                });
            if let Err(e) = removed {
                tracing::warn!(error = %e, "store: retired segments left for the next start");
            }
        }
        Ok(())
    }

    /// Gives up the snapshot from [`Log::begin_snapshot`]: its temporary file is removed
    /// and the old segments stay in force.
    pub(crate) fn abandon_snapshot(&mut self) {
        if self.snapshot.take().is_some() {
            let _ = fs::remove_file(self.dir.join(SNAPSHOT_TMP));
        }
    }

    /// Waits for the sync of the last closed segment (see [`Log::roll`]); for shutdown.
    ///
    /// # Errors
    /// That sync's error.
    pub(crate) fn close(&mut self) -> io::Result<()> {
        match self.closing.take() {
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the segment sync panicked"))),
            None => Ok(()),
        }
    }

    #[cfg(test)]
    /// Writes a whole snapshot at once (see [`Log::begin_snapshot`]).
    ///
    /// # Errors
    /// I/O errors.
    pub(crate) fn compact(&mut self, snapshot: &[u8]) -> io::Result<()> {
        let mut f = self.begin_snapshot()?;
        f.write(snapshot)?;
        f.finish()?;
        self.install_snapshot()
    }
}

/// A snapshot's temporary file, written apart from the log (see [`Log::begin_snapshot`]).
#[derive(Debug)]
pub(crate) struct SnapshotFile {
    file: File,
    len: u64,
    /// Bytes written since the last sync.
    unsynced: u64,
    /// Test seam: the log's injected failures apply to the snapshot too.
    #[cfg(test)]
    faults: Arc<FailPoints>,
}

impl SnapshotFile {
    /// Bytes written and not synced after which [`SnapshotFile::write`] syncs: a large
    /// snapshot goes to the disk as it is written, so that its final sync is short and no
    /// large burst of dirty pages sits in front of the log's own syncs.
    const SYNC_EVERY: u64 = 8 * 1024 * 1024;

    /// Appends framed records.
    ///
    /// # Errors
    /// I/O errors.
    pub(crate) fn write(&mut self, framed: &[u8]) -> io::Result<()> {
        self.inject(Op::Write)?;
        self.file.write_all(framed)?;
        self.len += framed.len() as u64;
        self.unsynced += framed.len() as u64;
        if self.unsynced >= Self::SYNC_EVERY {
            self.inject(Op::Sync)?;
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(())
    }

    /// Syncs the whole file; returns its size.
    ///
    /// # Errors
    /// I/O errors.
    pub(crate) fn finish(self) -> io::Result<u64> {
        #[cfg(test)]
        self.faults.hold_background();
        self.inject(Op::Sync)?;
        self.file.sync_all()?;
        Ok(self.len)
    }

    #[cfg(test)]
    fn inject(&self, op: Op) -> io::Result<()> {
        self.faults.check(op)
    }

    #[cfg(not(test))]
    #[inline(always)]
    fn inject(&self, _op: Op) -> io::Result<()> {
        Ok(())
    }
}

/// Starts writing a zero-filled, synced file of `len` bytes in `dir` on a thread of its
/// own, to become the next segment.
///
/// Why: a sync after an append must also commit the file system's metadata for the
/// blocks the append allocated and the file's new size; overwriting blocks that already
/// exist needs only the data written and the device's cache flushed. Measured on this
/// machine's ext4 (300 x write 20 KB + fdatasync, three rounds): mean 1.6/0.5/0.5 ms
/// appending against 1.1/0.3/0.3 ms overwriting. Under `--fsync always` every
/// acknowledgement waits on such syncs. Recovery treats zeros after the last record as
/// the unused end of such a file, not as damage.
///
/// # Errors
/// When the thread cannot be started.
fn prepare_spare(dir: &Path, len: u64) -> io::Result<JoinHandle<io::Result<File>>> {
    let path = dir.join(SPARE_TMP);
    std::thread::Builder::new()
        .name("mote-log-spare".into())
        .spawn(move || {
            let file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)?;
            let zeros = vec![0u8; 1024 * 1024];
            let mut at = 0;
            while at < len {
                let n = (len - at).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], at)?;
                at += n as u64;
                // Sync as it goes, so no large burst of writes sits in front of the
                // log's own syncs.
                if at % (8 * 1024 * 1024) == 0 {
                    file.sync_data()?;
                }
            }
            file.sync_all()?;
            Ok(file)
        })
}

/// Shrinks the file at `path` to nothing, [`FREE_STEP`] bytes at a time with a pause
/// between steps, before it is unlinked.
///
/// Why: freeing a whole 64 MiB segment at once held the journal writer's `fdatasync` for
/// 45 ms on this machine's ext4 (strace: the unlink took 51 ms, and the sync running
/// beside it waited for the file system's journal commit, which carries the freed
/// blocks, and their discard where the file system is mounted with `discard`). Each
/// step frees little, so a commit has little to carry.
fn free_gradually(path: &Path) {
    let Ok(file) = OpenOptions::new().write(true).open(path) else {
        return;
    };
    let mut len = file.metadata().map_or(0, |m| m.len());
    while len > 0 {
        len = len.saturating_sub(FREE_STEP);
        if file.set_len(len).is_err() {
            return;
        }
        std::thread::sleep(FREE_PAUSE);
    }
}

/// How much of a retired segment [`free_gradually`] frees per step, and the pause after.
const FREE_STEP: u64 = 1024 * 1024;
const FREE_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// Makes file creations and deletions in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mote-log-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn reopen(dir: &Path) -> (Log, Vec<Vec<u8>>, Recovery) {
        let mut got = Vec::new();
        let (log, rep) = Log::open(dir, 1 << 20, &mut |p| got.push(p.to_vec())).unwrap();
        (log, got, rep)
    }

    fn only_segment(dir: &Path) -> PathBuf {
        let mut segs: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        segs.sort();
        segs.into_iter()
            .find(|p| fs::metadata(p).unwrap().len() > 0)
            .unwrap()
    }

    #[test]
    fn segments_a_snapshot_replaced_are_never_read_again() {
        let dir = tmp("retired");
        let (mut log, _, _) = reopen(&dir);
        for i in 0..10u32 {
            log.append(&i.to_le_bytes());
        }
        log.write(true).unwrap();
        let mut snap = Vec::new();
        frame(&mut snap, b"snapshot");
        log.compact(&snap).unwrap();
        drop(log);
        // A crash before the retired segments were deleted: they are left as they were.
        let retired = dir.join("0000000000000099.retired");
        let mut old = Vec::new();
        frame(&mut old, b"stale");
        fs::write(&retired, &old).unwrap();
        let (_, got, _) = reopen(&dir);
        assert_eq!(got, vec![b"snapshot".to_vec()]);
        assert!(!retired.exists(), "a leftover is deleted at open");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn records_survive_reopen_in_order() {
        let dir = tmp("order");
        let (mut log, got, _) = reopen(&dir);
        assert!(got.is_empty());
        for i in 0..100u32 {
            log.append(&i.to_le_bytes());
        }
        log.write(true).unwrap();
        drop(log);
        let (_, got, rep) = reopen(&dir);
        assert_eq!(got.len(), 100);
        assert_eq!(got[42], 42u32.to_le_bytes());
        assert_eq!((rep.corrupt_regions, rep.truncated_bytes), (0, 0));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn torn_tail_is_truncated_and_reported() {
        let dir = tmp("torn");
        let (mut log, _, _) = reopen(&dir);
        log.append(b"one");
        log.append(b"two");
        log.write(true).unwrap();
        drop(log);
        let seg = only_segment(&dir);
        let full = fs::metadata(&seg).unwrap().len();
        // A crash in the middle of writing the second record.
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(full - 2)
            .unwrap();
        let (_, got, rep) = reopen(&dir);
        assert_eq!(got, [b"one".to_vec()]);
        assert_eq!(rep.truncated_bytes, (HEADER + 3 - 2) as u64);
        assert_eq!(fs::metadata(&seg).unwrap().len(), (HEADER + 3) as u64);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn flipped_byte_loses_only_that_record() {
        let dir = tmp("flip");
        let (mut log, _, _) = reopen(&dir);
        for p in [&b"first"[..], b"second", b"third"] {
            log.append(p);
        }
        log.write(true).unwrap();
        drop(log);
        let seg = only_segment(&dir);
        let mut bytes = fs::read(&seg).unwrap();
        let second_payload = HEADER + 5 + HEADER;
        bytes[second_payload + 2] ^= 0xFF;
        fs::write(&seg, &bytes).unwrap();
        let (_, got, rep) = reopen(&dir);
        assert_eq!(got, [b"first".to_vec(), b"third".to_vec()]);
        assert_eq!(rep.corrupt_regions, 1);
        assert_eq!(rep.truncated_bytes, 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn records_across_read_chunks_and_damage_at_a_chunk_edge() {
        // Records of 0.7 MiB and 3 bytes mixed, so they straddle the 4 MiB read chunks;
        // one damaged record starts just before a chunk's end, and the second pass reads
        // exactly what the first one kept.
        let dir = tmp("chunks");
        let (mut log, _, _) = reopen(&dir);
        let payloads: Vec<Vec<u8>> = (0..40u8)
            .map(|i| {
                let len = if i % 3 == 0 { 3 } else { 700 * 1024 };
                vec![i; len]
            })
            .collect();
        for p in &payloads {
            log.append(p);
        }
        log.write(true).unwrap();
        drop(log);
        // Damage the record that spans the first chunk boundary.
        let seg = only_segment(&dir);
        let mut bytes = fs::read(&seg).unwrap();
        let mut at = 0;
        let mut damaged = None;
        for (i, p) in payloads.iter().enumerate() {
            let end = at + HEADER + p.len();
            if damaged.is_none() && end > SCAN_CHUNK {
                bytes[end - 1] ^= 0xFF;
                damaged = Some(i);
            }
            at = end;
        }
        fs::write(&seg, &bytes).unwrap();
        let damaged = damaged.unwrap();
        let (log, got, rep) = reopen(&dir);
        let mut want = payloads.clone();
        want.remove(damaged);
        assert_eq!(got.len(), want.len());
        assert!(got == want, "records differ");
        assert_eq!((rep.corrupt_regions, rep.truncated_bytes), (1, 0));
        drop(log);
        let mut again = Vec::new();
        replay(&dir, rep.active_segment, &mut |p| again.push(p.to_vec())).unwrap();
        assert!(again == want, "the second pass differs");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rolls_into_preallocated_segments_and_their_zero_ends_are_not_damage() {
        // 1 MiB segments: past half of each, a zero-filled spare is prepared and the
        // next roll writes into it; a reopen reads every record, reports nothing, and
        // cuts the zeros off.
        let dir = tmp("spare");
        let (mut log, _, _) = reopen(&dir);
        let mut want = Vec::new();
        for i in 0..60u32 {
            let p = vec![i as u8; 40 * 1024];
            log.append(&p);
            want.push(p);
            log.write(true).unwrap();
            // Let a spare being written finish, so the next roll takes it.
            while log.spare.as_ref().is_some_and(|h| !h.is_finished()) {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        let active = segment_path(&dir, *log.segments.last().unwrap());
        assert!(
            fs::metadata(&active).unwrap().len() >= 1 << 20,
            "the active segment is a preallocated one"
        );
        drop(log);
        let (_, got, rep) = reopen(&dir);
        assert!(got == want, "records differ");
        assert_eq!((rep.corrupt_regions, rep.truncated_bytes), (0, 0));
        let len = fs::metadata(&active).unwrap().len();
        assert!(len < 1 << 20, "zero end cut off: {len}");
        // Garbage before the zeros is damage, not a clean end (this segment is no
        // longer the newest, so it is not cut off as a torn write).
        let f = OpenOptions::new().write(true).open(&active).unwrap();
        f.write_all_at(b"MoTe\x10\0\0\0garbage", len).unwrap();
        f.set_len(len + 4096).unwrap();
        drop(f);
        let (_, got, rep) = reopen(&dir);
        assert_eq!(got.len(), want.len());
        assert_eq!((rep.corrupt_regions, rep.truncated_bytes), (1, 0));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn empty_and_garbage_files_do_not_stop_start_up() {
        let dir = tmp("garbage");
        fs::create_dir_all(&dir).unwrap();
        fs::write(segment_path(&dir, 1), b"").unwrap();
        fs::write(segment_path(&dir, 2), b"not a log at all, just bytes").unwrap();
        let (mut log, got, rep) = reopen(&dir);
        assert!(got.is_empty());
        assert_eq!(rep.truncated_bytes, 28);
        log.append(b"after");
        log.write(true).unwrap();
        drop(log);
        let (_, got, _) = reopen(&dir);
        assert_eq!(got, [b"after".to_vec()]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unfinished_snapshot_is_ignored() {
        let dir = tmp("unfinished");
        let (mut log, _, _) = reopen(&dir);
        log.append(b"kept");
        log.write(true).unwrap();
        let mut snapshot = log.begin_snapshot().unwrap();
        let mut partial = Vec::new();
        frame(&mut partial, b"partial");
        snapshot.write(&partial).unwrap();
        drop((log, snapshot)); // crash before the snapshot was installed
        let (_, got, _) = reopen(&dir);
        assert_eq!(got, [b"kept".to_vec()]);
        assert!(!dir.join(SNAPSHOT_TMP).exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn compaction_replaces_old_segments() {
        let dir = tmp("compact");
        let (mut log, _, _) = reopen(&dir);
        for i in 0..1000u32 {
            log.append(&i.to_le_bytes());
        }
        log.write(true).unwrap();
        let mut snap = Vec::new();
        frame(&mut snap, b"state");
        log.compact(&snap).unwrap();
        log.append(b"later");
        log.write(true).unwrap();
        drop(log);
        let (_, got, _) = reopen(&dir);
        assert_eq!(got, [b"state".to_vec(), b"later".to_vec()]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
