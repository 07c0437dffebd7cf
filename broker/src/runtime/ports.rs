//! The store behind the core's ports: the journal and spill files, as the sans-IO core
//! sees them (`proto::durable`). The store knows nothing of the protocol and the core
//! nothing of files; this is where the two meet.

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::proto::durable::{FrozenTail, Journal, QueueTail, TailStore};
use crate::proto::Clock;
use crate::store::journal;
use crate::store::spill::{Spill, SpillDir, SpillView};

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
