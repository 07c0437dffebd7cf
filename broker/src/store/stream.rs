//! Streams on disk (`docs/streams.md`): one directory per stream, `ROOT/NAME/`, holding
//! segments `FIRST_OFFSET.seg` (20 digits) of entries in the log's framing (magic,
//! length, CRC; see [`super::log`]). An entry is
//!
//! ```text
//! offset u64 LE | timestamp (Unix ms) u64 LE | the core's bytes (opaque here)
//! ```
//!
//! Appends reach the files through the journal's writer thread ([`StreamBatch`] jobs),
//! in the same group commit as the log's records, so one sync covers both and the
//! journal's positions say when an append is durable. Reads come from the core, under
//! the files' lock, a bounded chunk at a time, found through a sparse index of each
//! segment kept in memory (one mark per [`MARK_EVERY`] bytes).
//!
//! Invariants: offsets are dense and increasing across segments; a segment is only ever
//! appended to while it is the last; segments are deleted whole, oldest first, and the
//! last never is. At open, a torn tail of the last segment is cut, so the next append
//! takes the offset after the last intact entry (offsets are never reused).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use super::log::{frame_with, framed_at, sync_dir, HEADER};

/// Bytes between two marks of a segment's sparse index.
const MARK_EVERY: u64 = 64 * 1024;
/// Bytes read from a segment at a time (more for one larger entry).
const READ_CHUNK: usize = 256 * 1024;
/// Bytes before the core's part of an entry.
const ENTRY_HEADER: usize = 16;

/// Where the streams live: one directory per stream under `root`.
#[derive(Debug, Clone)]
pub(crate) struct StreamDir {
    root: PathBuf,
}

/// One segment, as the index in memory knows it.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// Offset of its first entry (also its name).
    first: u64,
    /// One past its last entry.
    next: u64,
    /// Bytes written.
    len: u64,
    /// Timestamp of its newest entry (0 while empty).
    last_ts: u64,
    /// (offset, file position) of an entry every [`MARK_EVERY`] bytes, the first
    /// entry's included.
    marks: Vec<(u64, u64)>,
}

#[derive(Debug)]
struct Files {
    segments: VecDeque<Segment>,
    /// The last segment, open for writing.
    active: Option<File>,
    /// Written since the last sync.
    dirty: bool,
    /// Bytes in every segment.
    bytes: u64,
    /// One past the last entry written (the first offset while empty).
    next: u64,
    /// A segment this long is closed at the next batch.
    segment_limit: u64,
}

/// One stream's segments.
#[derive(Debug)]
pub(crate) struct StreamFiles {
    dir: PathBuf,
    files: Mutex<Files>,
}

/// Entries on their way to a stream's files, framed, with where each starts.
#[derive(Debug, Default)]
pub(crate) struct StreamBatch {
    pub(crate) bytes: Vec<u8>,
    /// (offset, position in `bytes`, timestamp) of each entry.
    pub(crate) entries: Vec<(u64, usize, u64)>,
}

impl StreamBatch {
    /// Frames one entry into the batch.
    pub(crate) fn push(&mut self, offset: u64, ts: u64, encode: &mut dyn FnMut(&mut Vec<u8>)) {
        let at = self.bytes.len();
        frame_with(&mut self.bytes, &mut |b| {
            b.extend_from_slice(&offset.to_le_bytes());
            b.extend_from_slice(&ts.to_le_bytes());
            encode(b);
        });
        self.entries.push((offset, at, ts));
    }
}

impl StreamDir {
    /// Streams under `root` (created when the first stream is).
    pub(crate) fn new(root: PathBuf) -> StreamDir {
        StreamDir { root }
    }

    /// The names of the streams kept.
    pub(crate) fn list(&self) -> Vec<String> {
        let Ok(dir) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut names: Vec<String> = dir
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| crate::config::is_queue_name(n))
            .collect();
        names.sort();
        names
    }

    /// Opens stream `name` (creating its directory), reading its segments' index and
    /// cutting a torn tail.
    ///
    /// # Errors
    /// I/O errors of the directory or files.
    pub(crate) fn open(&self, name: &str, segment_limit: u64) -> io::Result<StreamFiles> {
        let dir = self.root.join(name);
        fs::create_dir_all(&dir)?;
        let mut firsts: Vec<u64> = fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().into_string().ok()?;
                n.strip_suffix(".seg")?.parse::<u64>().ok()
            })
            .collect();
        firsts.sort_unstable();
        let mut segments = VecDeque::new();
        let count = firsts.len();
        for (i, first) in firsts.into_iter().enumerate() {
            let last = i + 1 == count;
            let seg = scan_segment(segment_path(&dir, first), first, last)?;
            if let Some(prev) = segments.back() {
                let prev: &Segment = prev;
                if seg.first < prev.next {
                    tracing::warn!(
                        stream = name,
                        segment = first,
                        "stream: overlapping segment ignored"
                    );
                    continue;
                }
            }
            segments.push_back(seg);
        }
        let next = segments.back().map_or(0, |s| s.next);
        let bytes = segments.iter().map(|s| s.len).sum();
        let active = match segments.back() {
            Some(s) => Some(OpenOptions::new().write(true).open(&s.path)?),
            None => None,
        };
        Ok(StreamFiles {
            dir,
            files: Mutex::new(Files {
                segments,
                active,
                dirty: false,
                bytes,
                next,
                segment_limit: segment_limit.max(4096),
            }),
        })
    }
}

impl Segment {
    /// The entry at `offset`, file position `pos`, timestamp `ts` is the segment's last:
    /// marked in the sparse index when far enough from the previous mark.
    fn note(&mut self, offset: u64, pos: u64, ts: u64) {
        if self
            .marks
            .last()
            .map_or(true, |&(_, p)| pos - p >= MARK_EVERY)
        {
            self.marks.push((offset, pos));
        }
        self.next = offset + 1;
        self.last_ts = ts;
    }
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

/// The offset and timestamp at the start of an entry's payload.
fn entry_head(payload: &[u8]) -> Option<(u64, u64)> {
    let o = payload.get(0..8)?;
    let t = payload.get(8..16)?;
    Some((
        u64::from_le_bytes([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]]),
        u64::from_le_bytes([t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]]),
    ))
}

/// Reads a segment's index; the last segment's torn tail is cut (an earlier segment
/// keeps what precedes its first damaged entry: the rest cannot be found again).
fn scan_segment(path: PathBuf, first: u64, last: bool) -> io::Result<Segment> {
    let file = File::open(&path)?;
    let file_len = file.metadata()?.len();
    let mut seg = Segment {
        path,
        first,
        next: first,
        len: 0,
        last_ts: 0,
        marks: Vec::new(),
    };
    let mut buf = Vec::new();
    let mut base = 0u64;
    'chunks: while base < file_len {
        let want = (file_len - base).min(4 * 1024 * 1024) as usize;
        buf.resize(want, 0);
        let n = read_at_full(&file, &mut buf, base)?;
        buf.truncate(n);
        let mut pos = 0;
        loop {
            match framed_at(&buf, pos) {
                Ok(Ok((start, end))) => {
                    let Some((offset, ts)) = entry_head(&buf[start..end]) else {
                        break 'chunks;
                    };
                    if offset != seg.next {
                        break 'chunks;
                    }
                    seg.note(offset, base + pos as u64, ts);
                    pos = end;
                    seg.len = base + end as u64;
                }
                // Cut off by the chunk: read on from this record.
                Ok(Err(full)) if base + (pos as u64) < file_len && n > 0 => {
                    let need = full.unwrap_or(HEADER) as u64;
                    if base + pos as u64 + need > file_len {
                        break 'chunks;
                    }
                    if pos == 0 {
                        // One record larger than the chunk.
                        buf.resize(need as usize, 0);
                        if read_at_full(&file, &mut buf, base)? < need as usize {
                            break 'chunks;
                        }
                        continue;
                    }
                    base += pos as u64;
                    continue 'chunks;
                }
                _ => break 'chunks,
            }
        }
    }
    if seg.len < file_len {
        let cut = file_len - seg.len;
        if last {
            tracing::warn!(path = %seg.path.display(), bytes = cut, "stream: cut a torn tail");
            OpenOptions::new()
                .write(true)
                .open(&seg.path)?
                .set_len(seg.len)?;
        } else {
            tracing::warn!(path = %seg.path.display(), bytes = cut, "stream: damaged segment end skipped");
        }
    }
    Ok(seg)
}

fn read_at_full(file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], at + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl StreamFiles {
    fn lock(&self) -> MutexGuard<'_, Files> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The first offset kept and one past the last written.
    pub(crate) fn bounds(&self) -> (u64, u64) {
        let f = self.lock();
        (f.segments.front().map_or(f.next, |s| s.first), f.next)
    }

    /// Bytes in the stream's segments.
    pub(crate) fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Writes `batch` at the end of the last segment, first starting a new segment
    /// when the last is full (the journal's writer thread calls it).
    ///
    /// # Errors
    /// I/O errors: the journal then fails (nothing more is acknowledged).
    pub(crate) fn write(&self, batch: &StreamBatch) -> io::Result<()> {
        let Some(&(first, _, _)) = batch.entries.first() else {
            return Ok(());
        };
        let mut f = self.lock();
        let full = f.segments.back().map_or(true, |s| s.len >= f.segment_limit);
        if full || f.active.is_none() {
            if let Some(active) = &f.active {
                active.sync_data()?;
            }
            let path = segment_path(&self.dir, first);
            let file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)?;
            sync_dir(&self.dir)?;
            f.active = Some(file);
            f.segments.push_back(Segment {
                path,
                first,
                next: first,
                len: 0,
                last_ts: 0,
                marks: Vec::new(),
            });
        }
        let Files {
            segments, active, ..
        } = &mut *f;
        let (Some(seg), Some(file)) = (segments.back_mut(), active.as_ref()) else {
            return Err(io::Error::other("stream: no segment to write"));
        };
        file.write_all_at(&batch.bytes, seg.len)?;
        let base = seg.len;
        for &(offset, at, ts) in &batch.entries {
            seg.note(offset, base + at as u64, ts);
        }
        seg.len += batch.bytes.len() as u64;
        let next = seg.next;
        f.bytes += batch.bytes.len() as u64;
        f.next = next;
        f.dirty = true;
        Ok(())
    }

    /// Syncs what was written since the last sync.
    ///
    /// # Errors
    /// I/O errors: the journal then fails.
    pub(crate) fn sync(&self) -> io::Result<()> {
        let mut f = self.lock();
        if f.dirty {
            if let Some(a) = &f.active {
                a.sync_data()?;
            }
            f.dirty = false;
        }
        Ok(())
    }

    /// Visits entries from offset `from` (or the first kept after it) in order until
    /// `max_bytes` of them were visited (at least one), within one segment: `visit`
    /// gets each entry's offset, timestamp and the core's bytes. Visits nothing when
    /// `from` is at or past the end.
    ///
    /// # Errors
    /// I/O errors reading the segment.
    pub(crate) fn read(
        &self,
        from: u64,
        max_bytes: usize,
        visit: &mut dyn FnMut(u64, u64, &[u8]),
    ) -> io::Result<()> {
        let f = self.lock();
        let i = f.segments.partition_point(|s| s.first <= from);
        let mut i = i.saturating_sub(1);
        // Past this segment's end (a gap left by damage): the next one.
        while f.segments.get(i).is_some_and(|s| s.next <= from) {
            i += 1;
        }
        let Some(seg) = f.segments.get(i) else {
            return Ok(());
        };
        let m = seg.marks.partition_point(|&(o, _)| o <= from);
        let start = seg.marks.get(m.saturating_sub(1)).map_or(0, |&(_, p)| p);
        let file = File::open(&seg.path)?;
        let mut pos = start;
        let mut seen = 0usize;
        let mut buf = Vec::new();
        while pos < seg.len {
            let want = ((seg.len - pos) as usize).min(READ_CHUNK.max(max_bytes));
            buf.resize(want, 0);
            let n = read_at_full(&file, &mut buf, pos)?;
            buf.truncate(n);
            let mut at = 0;
            loop {
                match framed_at(&buf, at) {
                    Ok(Ok((s, e))) => {
                        let payload = &buf[s..e];
                        if let Some((offset, ts)) = entry_head(payload) {
                            if offset >= from {
                                visit(offset, ts, &payload[ENTRY_HEADER..]);
                                seen += payload.len();
                                if seen >= max_bytes {
                                    return Ok(());
                                }
                            }
                        }
                        at = e;
                    }
                    Ok(Err(full)) if at == 0 => {
                        // One entry larger than the chunk.
                        let need = full.unwrap_or(HEADER);
                        if need <= buf.len() || pos + need as u64 > seg.len {
                            return Ok(());
                        }
                        buf.resize(need, 0);
                        if read_at_full(&file, &mut buf, pos)? < need {
                            return Ok(());
                        }
                    }
                    Ok(Err(_)) => break,
                    Err(()) => return Ok(()),
                }
            }
            if at == 0 {
                return Ok(());
            }
            pos += at as u64;
        }
        Ok(())
    }

    /// The first offset whose entry's timestamp is at or after `ts` (one past the end
    /// when none is).
    ///
    /// # Errors
    /// I/O errors reading a segment.
    pub(crate) fn seek_time(&self, ts: u64) -> io::Result<u64> {
        let (seg_first, end) = {
            let f = self.lock();
            match f
                .segments
                .iter()
                .find(|s| s.last_ts >= ts && s.next > s.first)
            {
                Some(s) => (s.first, s.next),
                None => return Ok(f.next),
            }
        };
        let mut from = seg_first;
        while from < end {
            let mut found = None;
            let mut last = from;
            self.read(from, READ_CHUNK, &mut |o, t, _| {
                last = o;
                if found.is_none() && t >= ts {
                    found = Some(o);
                }
            })?;
            if let Some(o) = found {
                return Ok(o);
            }
            if last < from {
                break;
            }
            from = last + 1;
        }
        Ok(end)
    }

    /// Deletes whole segments, oldest first, while the oldest's newest entry is older
    /// than `older_than` (Unix ms) or the stream holds more than `max_bytes`; the last
    /// segment stays. Returns the first offset kept.
    ///
    /// # Errors
    /// I/O errors deleting a file.
    pub(crate) fn trim(&self, older_than: Option<u64>, max_bytes: u64) -> io::Result<u64> {
        let mut f = self.lock();
        let mut removed = false;
        while f.segments.len() > 1 {
            let Some(front) = f.segments.front() else {
                break;
            };
            let old = older_than.is_some_and(|t| front.last_ts < t);
            if !old && f.bytes <= max_bytes {
                break;
            }
            fs::remove_file(&front.path)?;
            f.bytes -= front.len;
            f.segments.pop_front();
            removed = true;
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(f.segments.front().map_or(f.next, |s| s.first))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mote-stream-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn append(files: &StreamFiles, from: u64, n: u64, size: usize) {
        let mut b = StreamBatch::default();
        for o in from..from + n {
            b.push(o, 1000 + o, &mut |v| {
                v.extend(std::iter::repeat(o as u8).take(size))
            });
        }
        files.write(&b).unwrap();
    }

    fn read_all(files: &StreamFiles, mut from: u64) -> Vec<(u64, u64, usize)> {
        let mut got = Vec::new();
        loop {
            let before = got.len();
            files
                .read(from, 10_000, &mut |o, t, b| got.push((o, t, b.len())))
                .unwrap();
            if got.len() == before {
                return got;
            }
            from = got.last().unwrap().0 + 1;
        }
    }

    #[test]
    fn appends_read_back_across_segments_and_reopen() {
        let root = tmp("rw");
        let dir = StreamDir::new(root.clone());
        let files = dir.open("s", 8192).unwrap();
        for i in 0..50 {
            append(&files, i * 10, 10, 100);
        }
        files.sync().unwrap();
        assert_eq!(files.bounds(), (0, 500));
        let got = read_all(&files, 0);
        assert_eq!(got.len(), 500);
        assert!(got
            .iter()
            .enumerate()
            .all(|(i, g)| g.0 == i as u64 && g.1 == 1000 + i as u64));
        assert_eq!(read_all(&files, 437)[0].0, 437);
        assert_eq!(files.seek_time(1000 + 321).unwrap(), 321);
        drop(files);
        assert_eq!(dir.list(), vec!["s".to_owned()]);
        let files = dir.open("s", 8192).unwrap();
        assert_eq!(files.bounds(), (0, 500));
        append(&files, 500, 1, 10);
        assert_eq!(read_all(&files, 499).len(), 2);
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn a_torn_tail_is_cut_and_offsets_go_on_from_the_last_intact() {
        let root = tmp("torn");
        let dir = StreamDir::new(root.clone());
        let files = dir.open("s", 1 << 20).unwrap();
        append(&files, 0, 20, 50);
        let path = files.lock().segments.back().unwrap().path.clone();
        drop(files);
        let len = fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 10)
            .unwrap();
        let files = dir.open("s", 1 << 20).unwrap();
        assert_eq!(files.bounds(), (0, 19));
        append(&files, 19, 1, 50);
        let got = read_all(&files, 0);
        assert_eq!(got.len(), 20);
        assert_eq!(got[19].2, 50);
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn trim_drops_whole_old_segments_never_the_last() {
        let root = tmp("trim");
        let dir = StreamDir::new(root.clone());
        let files = dir.open("s", 4096).unwrap();
        for i in 0..20 {
            append(&files, i * 10, 10, 500);
        }
        let total = files.bytes();
        let first = files.trim(None, total / 2).unwrap();
        assert!(first > 0 && files.bytes() <= total / 2);
        let got = read_all(&files, 0);
        assert_eq!(got[0].0, first);
        assert_eq!(got.last().unwrap().0, 199);
        // Everything older than any timestamp: only the last segment stays.
        let first = files.trim(Some(u64::MAX), u64::MAX).unwrap();
        assert_eq!(files.lock().segments.len(), 1);
        assert_eq!(read_all(&files, 0)[0].0, first);
        let _ = fs::remove_dir_all(root);
    }
}
