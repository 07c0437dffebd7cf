//! Queue tails on disk: when the deliveries queued in memory across all sessions exceed
//! the configured budget, further deliveries to persistent sessions are appended to a
//! per-session spill file instead, and read back in chunks as the session drains.
//!
//! A spill file is a cache, not a source of truth: every spilled delivery was journaled
//! before it was spilled, so recovery rebuilds queues from the journal and spill files
//! left by a previous run are deleted at start-up. Entries are `u32` length-prefixed;
//! each holds the delivery's journal position followed by its `Enqueue` and `Msg`
//! records.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::record::Record;
use crate::proto::message::Message;
use crate::proto::session::Delivery;
use mote_codec::QoS;

/// Bytes buffered before a write to the file.
const WRITE_CHUNK: usize = 64 * 1024;

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
    /// Deliveries spilled and not yet read back.
    pub(crate) count: usize,
    /// Queue cost of those deliveries.
    pub(crate) bytes: usize,
}

impl Spill {
    /// Creates an empty spill file in `dir`.
    ///
    /// # Errors
    /// When the file cannot be created.
    pub(crate) fn create(dir: &Path, seq: u64) -> io::Result<Spill> {
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

    /// Appends a delivery.
    ///
    /// # Errors
    /// When writing fails; the delivery is then not spilled.
    pub(crate) fn push(&mut self, d: &Delivery, now: Instant, now_ms: u64) -> io::Result<()> {
        // Encoded in place; the two lengths are filled in after.
        let b = &mut self.buffer;
        let start = b.len();
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&d.lsn.to_le_bytes());
        let enq = b.len();
        b.extend_from_slice(&[0; 4]);
        d.enqueue_record("").encode(b);
        let enq_len = (b.len() - enq - 4) as u32;
        b[enq..enq + 4].copy_from_slice(&enq_len.to_le_bytes());
        d.msg.as_stored(None, now, now_ms).encode_msg(d.msg.mid, b);
        let len = (b.len() - start - 4) as u32;
        b[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self.count += 1;
        self.bytes += d.msg.cost();
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

    /// Reads back up to `max_bytes` of deliveries (at least one if any), oldest first.
    ///
    /// # Errors
    /// I/O errors, or an entry that does not parse.
    pub(crate) fn pop_chunk(
        &mut self,
        max_bytes: usize,
        now: Instant,
        now_ms: u64,
    ) -> io::Result<Vec<Delivery>> {
        self.flush()?;
        let mut out = Vec::new();
        let mut budget = max_bytes;
        self.file.seek(SeekFrom::Start(self.read_pos))?;
        let want =
            (self.file_len - self.read_pos).min(max_bytes.max(64 * 1024) as u64 * 2) as usize;
        let mut buf = vec![0u8; want];
        self.file.read_exact(&mut buf)?;
        let mut at = 0;
        while self.count > 0 {
            let Some(len) = buf
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            else {
                break;
            };
            let Some(entry) = buf.get(at + 4..at + 4 + len) else {
                if out.is_empty() {
                    // One entry larger than the window: read exactly it.
                    let mut big = vec![0u8; len];
                    self.file
                        .seek(SeekFrom::Start(self.read_pos + at as u64 + 4))?;
                    self.file.read_exact(&mut big)?;
                    let d = parse(&big, now, now_ms)?;
                    self.bytes = self.bytes.saturating_sub(d.msg.cost());
                    out.push(d);
                    self.read_pos += (at + 4 + len) as u64;
                    self.count -= 1;
                }
                break;
            };
            let d = parse(entry, now, now_ms)?;
            at += 4 + len;
            self.count -= 1;
            self.bytes = self.bytes.saturating_sub(d.msg.cost());
            budget = budget.saturating_sub(d.msg.cost());
            out.push(d);
            if budget == 0 {
                break;
            }
        }
        self.read_pos += at as u64;
        Ok(out)
    }

    /// Calls `f` for every spilled delivery without consuming them (for snapshots),
    /// reading the file in chunks.
    ///
    /// # Errors
    /// I/O errors or an entry that does not parse.
    pub(crate) fn for_each(
        &mut self,
        now: Instant,
        now_ms: u64,
        f: &mut dyn FnMut(&Delivery),
    ) -> io::Result<()> {
        self.flush()?;
        let mut pos = self.read_pos;
        let mut buf: Vec<u8> = Vec::new();
        while pos < self.file_len {
            let want = ((self.file_len - pos) as usize).min(1024 * 1024);
            buf.resize(want, 0);
            self.file.seek(SeekFrom::Start(pos))?;
            self.file.read_exact(&mut buf)?;
            let mut at = 0;
            while let Some(b) = buf.get(at..at + 4) {
                let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
                match buf.get(at + 4..at + 4 + len) {
                    Some(entry) => {
                        f(&parse(entry, now, now_ms)?);
                        at += 4 + len;
                    }
                    None if at == 0 => {
                        // One entry larger than the chunk.
                        let mut big = vec![0u8; len];
                        self.file.seek(SeekFrom::Start(pos + 4))?;
                        self.file.read_exact(&mut big)?;
                        f(&parse(&big, now, now_ms)?);
                        at = 4 + len;
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

    /// True when every spilled delivery was read back.
    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
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

/// Parses one entry back into a delivery.
fn parse(entry: &[u8], now: Instant, now_ms: u64) -> io::Result<Delivery> {
    let lsn = entry
        .get(..8)
        .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]));
    let lsn = lsn.ok_or_else(|| bad("short spill entry"))?;
    let enq_len = entry
        .get(8..12)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let enq_len = enq_len.ok_or_else(|| bad("short spill entry"))?;
    let enq = entry.get(12..12 + enq_len).and_then(Record::decode);
    let msg = entry.get(12 + enq_len..).and_then(Record::decode);
    match (enq, msg) {
        (
            Some(Record::Enqueue {
                dseq,
                qos,
                retain,
                sub_ids,
                shared,
                ..
            }),
            Some(Record::Msg { mid, msg }),
        ) => {
            let (msg, _) = Message::from_stored(mid, msg, now, now_ms);
            Ok(Delivery {
                msg: Arc::new(msg),
                qos: QoS::from_u8(qos).unwrap_or(QoS::AtLeastOnce),
                retain,
                sub_ids,
                shared: shared.map(|(g, f)| (Arc::from(g), Arc::from(f))),
                dseq,
                lsn,
            })
        }
        _ => Err(bad("unreadable spill entry")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use mote_codec::{Properties, Publish};

    fn delivery(i: u64) -> Delivery {
        let payload = i.to_le_bytes();
        let p = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "t",
            packet_id: 1,
            properties: Properties::default(),
            payload: &payload,
        };
        let msg = Message::from_publish(i, &p, Arc::from("t"), None, Instant::now());
        Delivery {
            msg: Arc::new(msg),
            qos: QoS::AtLeastOnce,
            retain: false,
            sub_ids: vec![7],
            shared: None,
            dseq: i,
            lsn: i,
        }
    }

    #[test]
    fn deliveries_come_back_in_order_in_chunks() {
        let dir = std::env::temp_dir().join(format!("mote-spill-{}", std::process::id()));
        let now = Instant::now();
        let mut s = Spill::create(&dir, 1).unwrap();
        for i in 1..=5000 {
            s.push(&delivery(i), now, 0).unwrap();
        }
        let mut seen = 0;
        s.for_each(now, 0, &mut |_| seen += 1).unwrap();
        assert_eq!(seen, 5000);
        let mut next = 1;
        while !s.is_empty() {
            let chunk = s.pop_chunk(10_000, now, 0).unwrap();
            assert!(!chunk.is_empty());
            for d in chunk {
                assert_eq!((d.dseq, d.lsn, d.msg.mid), (next, next, next));
                assert_eq!(d.msg.payload, Bytes::copy_from_slice(&next.to_le_bytes()));
                assert_eq!(d.sub_ids, [7]);
                next += 1;
            }
        }
        assert_eq!(next, 5001);
        assert_eq!(s.bytes, 0);
        let path = s.path.clone();
        drop(s);
        assert!(!path.exists(), "the file goes with the spill");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn for_each_streams_across_chunk_boundaries() {
        let dir = std::env::temp_dir().join(format!("mote-spill-big-{}", std::process::id()));
        let now = Instant::now();
        let mut s = Spill::create(&dir, 2).unwrap();
        let payload = vec![7u8; 1500];
        for i in 1..=2000u64 {
            let p = Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: "big",
                packet_id: 1,
                properties: Properties::default(),
                payload: &payload,
            };
            let msg = Message::from_publish(i, &p, Arc::from("big"), None, now);
            let d = Delivery {
                msg: Arc::new(msg),
                qos: QoS::AtLeastOnce,
                retain: false,
                sub_ids: vec![],
                shared: None,
                dseq: i,
                lsn: 0,
            };
            s.push(&d, now, 0).unwrap();
        }
        let mut seen = Vec::new();
        s.for_each(now, 0, &mut |d| seen.push(d.dseq)).unwrap();
        assert_eq!(seen, (1..=2000).collect::<Vec<_>>());
        let first = s.pop_chunk(4096, now, 0).unwrap();
        assert_eq!(first.len(), 3, "a chunk stops at its byte budget");
        let mut rest = Vec::new();
        s.for_each(now, 0, &mut |d| rest.push(d.dseq)).unwrap();
        assert_eq!(
            rest.first(),
            Some(&4),
            "what was read back is no longer in the spill"
        );
        drop(s);
        let _ = fs::remove_dir_all(&dir);
    }
}
