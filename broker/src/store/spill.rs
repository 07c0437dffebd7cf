//! Queue tails on disk: when the deliveries queued in memory across all sessions exceed
//! the configured budget, further deliveries to persistent sessions are appended to a
//! per-session spill file instead, and read back in chunks as the session drains.
//!
//! A spill file is a cache, not a source of truth: every spilled delivery was journaled
//! before it was spilled, so recovery rebuilds queues from the journal and spill files
//! left by a previous run are deleted at start-up.
//!
//! The file knows nothing of what it holds: an entry is opaque bytes (the protocol core
//! writes a delivery's journal position and records there) with the queue cost it stands
//! for. On disk: `u32` length, `u32` cost, then the bytes, all little-endian.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes buffered before a write to the file.
const WRITE_CHUNK: usize = 64 * 1024;

/// Bytes of an entry's header (length and cost).
const HEADER: usize = 8;

/// Creates the spill files of one broker in one directory, numbered in order.
#[derive(Debug)]
pub(crate) struct SpillDir {
    dir: PathBuf,
    next: AtomicU64,
}

impl SpillDir {
    /// Spill files go to `dir`; whatever a previous run left there is stale (the journal
    /// holds every spilled delivery) and is removed now.
    pub(crate) fn new(dir: PathBuf) -> SpillDir {
        let _ = fs::remove_dir_all(&dir);
        SpillDir {
            dir,
            next: AtomicU64::new(1),
        }
    }

    /// A new, empty spill file.
    ///
    /// # Errors
    /// When the file cannot be created.
    pub(crate) fn create(&self) -> io::Result<Spill> {
        Spill::create(&self.dir, self.next.fetch_add(1, Ordering::Relaxed))
    }
}

/// One session's spilled queue tail, oldest first.
#[derive(Debug)]
pub(crate) struct Spill {
    path: PathBuf,
    file: File,
    /// Next byte to read.
    read_pos: u64,
    /// Bytes in the file (buffered bytes come after).
    file_len: u64,
    /// Entries not yet written to the file.
    buffer: Vec<u8>,
    /// Entries spilled and not yet read back.
    count: usize,
    /// Summed cost of those entries.
    bytes: usize,
}

/// Reads the little-endian `u32` at `at`, if the buffer holds it.
fn u32_at(buf: &[u8], at: usize) -> Option<usize> {
    let b = buf.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

impl Spill {
    /// Creates an empty spill file numbered `seq` in `dir`.
    ///
    /// # Errors
    /// When the file cannot be created.
    fn create(dir: &Path, seq: u64) -> io::Result<Spill> {
        fs::create_dir_all(dir)?;
        let path = dir.join(format!("{seq:016}.spill"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)?;
        Ok(Spill {
            path,
            file,
            read_pos: 0,
            file_len: 0,
            buffer: Vec::new(),
            count: 0,
            bytes: 0,
        })
    }

    /// Entries waiting.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// Summed cost of the entries waiting.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Appends an entry of queue cost `cost` whose bytes `encode` writes.
    ///
    /// # Errors
    /// When writing fails; the entry is then not spilled.
    pub(crate) fn push(
        &mut self,
        cost: usize,
        encode: &mut dyn FnMut(&mut Vec<u8>),
    ) -> io::Result<()> {
        // Encoded in place; the length is filled in after.
        let b = &mut self.buffer;
        let start = b.len();
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&u32::try_from(cost).unwrap_or(u32::MAX).to_le_bytes());
        encode(b);
        let len = u32::try_from(b.len() - start - HEADER);
        let Ok(len) = len else {
            b.truncate(start);
            return Err(io::Error::other("spill entry too large"));
        };
        b[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self.count += 1;
        self.bytes += cost;
        if self.buffer.len() >= WRITE_CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes buffered entries to the file.
    fn flush(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.file.seek(SeekFrom::Start(self.file_len))?;
        self.file.write_all(&self.buffer)?;
        self.file_len += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }

    /// Reads `len` bytes at `pos`.
    fn read_at(&mut self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.file.seek(SeekFrom::Start(pos))?;
        self.file.read_exact(&mut buf)?;
        Ok(buf)
    }

    /// Takes entries from the front, oldest first, until their summed cost reaches
    /// `max_bytes` (at least one if any), handing each to `visit`.
    ///
    /// # Errors
    /// I/O errors, or a truncated entry.
    pub(crate) fn pop_chunk(
        &mut self,
        max_bytes: usize,
        visit: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        self.flush()?;
        let mut budget = max_bytes;
        let want =
            (self.file_len - self.read_pos).min(max_bytes.max(64 * 1024) as u64 * 2) as usize;
        let buf = self.read_at(self.read_pos, want)?;
        let mut at = 0;
        let mut taken = 0;
        while self.count > 0 {
            let (Some(len), Some(cost)) = (u32_at(&buf, at), u32_at(&buf, at + 4)) else {
                break;
            };
            let entry = match buf.get(at + HEADER..at + HEADER + len) {
                Some(e) => e.to_vec(),
                // One entry larger than the window: read exactly it.
                None if taken == 0 => self.read_at(self.read_pos + (at + HEADER) as u64, len)?,
                None => break,
            };
            visit(&entry)?;
            at += HEADER + len;
            taken += 1;
            self.count -= 1;
            self.bytes = self.bytes.saturating_sub(cost);
            budget = budget.saturating_sub(cost);
            if budget == 0 {
                break;
            }
        }
        if taken == 0 && self.count > 0 {
            return Err(bad("truncated spill entry"));
        }
        self.read_pos += at as u64;
        Ok(())
    }

    /// A view of the entries waiting now, readable later and from another thread while
    /// this spill goes on: appends come after its end, and its own handle on the file
    /// keeps the data readable even once the spill is dropped and the file removed.
    ///
    /// # Errors
    /// I/O errors writing buffered entries or duplicating the handle.
    pub(crate) fn frozen(&mut self) -> io::Result<SpillView> {
        self.flush()?;
        Ok(SpillView {
            file: self.file.try_clone()?,
            start: self.read_pos,
            end: self.file_len,
        })
    }

    /// Calls `visit` for every entry waiting, without taking them.
    ///
    /// # Errors
    /// I/O errors, a truncated entry, or what `visit` returns.
    #[cfg(test)]
    pub(crate) fn for_each(
        &mut self,
        visit: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        self.frozen()?.for_each(visit)
    }
}

/// The entries a [`Spill`] held when [`Spill::frozen`] was called.
#[derive(Debug)]
pub(crate) struct SpillView {
    /// A handle of its own (reads are positioned, so the spill's offset is not shared).
    file: File,
    start: u64,
    end: u64,
}

impl SpillView {
    /// Reads `len` bytes at `pos`.
    fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, pos)?;
        Ok(buf)
    }

    /// Calls `visit` for every entry of the view, oldest first, reading the file in
    /// chunks.
    ///
    /// # Errors
    /// I/O errors, a truncated entry, or what `visit` returns.
    pub(crate) fn for_each(
        &mut self,
        visit: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut pos = self.start;
        while pos < self.end {
            let want = ((self.end - pos) as usize).min(1024 * 1024);
            let buf = self.read_at(pos, want)?;
            let mut at = 0;
            while let Some(len) = u32_at(&buf, at) {
                match buf.get(at + HEADER..at + HEADER + len) {
                    Some(entry) => {
                        visit(entry)?;
                        at += HEADER + len;
                    }
                    None if at == 0 => {
                        // One entry larger than the chunk.
                        let big = self.read_at(pos + HEADER as u64, len)?;
                        visit(&big)?;
                        at = HEADER + len;
                        break;
                    }
                    None => break,
                }
            }
            if at == 0 {
                return Err(bad("truncated spill entry"));
            }
            pos += at as u64;
        }
        Ok(())
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(i: u64, size: usize) -> Vec<u8> {
        let mut e = i.to_le_bytes().to_vec();
        e.resize(size.max(8), 7);
        e
    }

    fn id(e: &[u8]) -> u64 {
        u64::from_le_bytes(e[..8].try_into().unwrap())
    }

    #[test]
    fn entries_come_back_in_order_in_chunks() {
        let dir = std::env::temp_dir().join(format!("mote-spill-{}", std::process::id()));
        let spills = SpillDir::new(dir.clone());
        let mut s = spills.create().unwrap();
        for i in 1..=5000u64 {
            let e = entry(i, 16);
            s.push(100, &mut |b| b.extend_from_slice(&e)).unwrap();
        }
        assert_eq!((s.count(), s.bytes()), (5000, 500_000));
        let mut seen = 0;
        s.for_each(&mut |_| {
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, 5000);
        let mut next = 1;
        while s.count() > 0 {
            let mut chunk = Vec::new();
            s.pop_chunk(10_000, &mut |e| {
                chunk.push(id(e));
                Ok(())
            })
            .unwrap();
            assert_eq!(chunk.len(), 100, "a chunk stops at its cost budget");
            for got in chunk {
                assert_eq!(got, next);
                next += 1;
            }
        }
        assert_eq!(next, 5001);
        assert_eq!(s.bytes(), 0);
        let path = s.path.clone();
        drop(s);
        assert!(!path.exists(), "the file goes with the spill");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn for_each_streams_across_chunk_boundaries() {
        let dir = std::env::temp_dir().join(format!("mote-spill-big-{}", std::process::id()));
        let spills = SpillDir::new(dir.clone());
        let mut s = spills.create().unwrap();
        for i in 1..=2000u64 {
            let e = entry(i, 1500);
            s.push(1600, &mut |b| b.extend_from_slice(&e)).unwrap();
        }
        // An entry larger than any read window still comes back whole.
        let huge = entry(2001, 3 * 1024 * 1024);
        s.push(huge.len(), &mut |b| b.extend_from_slice(&huge))
            .unwrap();
        let mut seen = Vec::new();
        s.for_each(&mut |e| {
            seen.push(id(e));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, (1..=2001).collect::<Vec<_>>());
        let mut first = Vec::new();
        s.pop_chunk(4096, &mut |e| {
            first.push(id(e));
            Ok(())
        })
        .unwrap();
        assert_eq!(first, [1, 2, 3], "a chunk stops at its cost budget");
        let mut rest = Vec::new();
        s.for_each(&mut |e| {
            rest.push((id(e), e.len()));
            Ok(())
        })
        .unwrap();
        assert_eq!(rest.first(), Some(&(4, 1500)), "what was read is gone");
        assert_eq!(rest.last(), Some(&(2001, huge.len())));
        drop(s);
        let _ = fs::remove_dir_all(&dir);
    }
}
