//! The store behind the core's ports: the journal and spill files, as the sans-IO core
//! sees them (`proto::durable`). The store knows nothing of the protocol and the core
//! nothing of files; this is where the two meet.

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::proto::durable::{FrozenTail, Journal, QueueTail, StreamLog, StreamStore, TailStore};
use crate::proto::Clock;
use crate::store::journal;
use crate::store::spill::{Spill, SpillDir, SpillView};
use crate::store::stream::{StreamDir, StreamFiles};

impl Journal for journal::Journal {
    fn append_with(&self, encode: &mut dyn FnMut(&mut Vec<u8>)) -> u64 {
        journal::Journal::append_with(self, encode)
    }
    fn waits(&self) -> bool {
        journal::Journal::waits(self)
    }
    fn durable(&self) -> u64 {
        journal::Journal::durable(self)
    }
    fn since_snapshot(&self) -> u64 {
        journal::Journal::since_snapshot(self)
    }
    fn snapshot_begin(&self) {
        journal::Journal::snapshot_begin(self);
    }
    fn snapshot_chunk(&self, framed: Vec<u8>) {
        journal::Journal::snapshot_chunk(self, framed);
    }
    fn snapshot_end(&self) {
        journal::Journal::snapshot_end(self);
    }
}

impl QueueTail for Spill {
    fn push(&mut self, cost: usize, encode: &mut dyn FnMut(&mut Vec<u8>)) -> io::Result<()> {
        Spill::push(self, cost, encode)
    }
    fn pop_chunk(
        &mut self,
        max_bytes: usize,
        visit: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        Spill::pop_chunk(self, max_bytes, visit)
    }
    fn frozen(&mut self) -> io::Result<Box<dyn FrozenTail>> {
        Ok(Box::new(Spill::frozen(self)?))
    }
    fn count(&self) -> usize {
        Spill::count(self)
    }
    fn bytes(&self) -> usize {
        Spill::bytes(self)
    }
}

impl FrozenTail for SpillView {
    fn for_each(&mut self, visit: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        SpillView::for_each(self, visit)
    }
}

impl TailStore for SpillDir {
    fn create(&self) -> io::Result<Box<dyn QueueTail>> {
        Ok(Box::new(SpillDir::create(self)?))
    }
}

/// Now, on both clocks (the only place the broker reads the wall clock).
pub(crate) fn now() -> Clock {
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Clock::new(std::time::Instant::now(), unix_ms)
}

/// A stream's files, appended to through the journal (one group commit with the log).
#[derive(Debug)]
struct StreamPort {
    files: std::sync::Arc<StreamFiles>,
    journal: std::sync::Arc<journal::Journal>,
    /// One past the last offset appended (the files lag behind until the writer ran).
    next: u64,
}

impl StreamLog for StreamPort {
    fn bounds(&self) -> (u64, u64) {
        (self.files.bounds().0, self.next)
    }
    fn bytes(&self) -> u64 {
        self.files.bytes()
    }
    fn append(&mut self, offset: u64, ts: u64, encode: &mut dyn FnMut(&mut Vec<u8>)) -> u64 {
        self.next = offset + 1;
        self.journal.append_stream(&self.files, offset, ts, encode)
    }
    fn read(
        &self,
        from: u64,
        max_bytes: usize,
        visit: &mut dyn FnMut(u64, u64, &[u8]),
    ) -> io::Result<()> {
        self.files.read(from, max_bytes, visit)
    }
    fn seek_time(&self, ts: u64) -> io::Result<u64> {
        self.files.seek_time(ts)
    }
    fn trim(&mut self, older_than: Option<u64>, max_bytes: u64) -> io::Result<u64> {
        self.files.trim(older_than, max_bytes)
    }
}

/// Streams in the store's directory, appended to through `journal`.
#[derive(Debug)]
pub(crate) struct StreamPorts {
    pub(crate) dir: StreamDir,
    pub(crate) journal: std::sync::Arc<journal::Journal>,
}

impl StreamStore for StreamPorts {
    fn list(&self) -> Vec<String> {
        self.dir.list()
    }
    fn open(&self, name: &str, segment_bytes: u64) -> io::Result<Box<dyn StreamLog>> {
        let files = std::sync::Arc::new(self.dir.open(name, segment_bytes)?);
        let next = files.bounds().1;
        Ok(Box::new(StreamPort {
            files,
            journal: self.journal.clone(),
            next,
        }))
    }
}
