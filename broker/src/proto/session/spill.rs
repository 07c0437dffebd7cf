//! A session's queue tail beyond the memory budget: deliveries written to the queue-tail
//! port as opaque entries and read back as the queue drains.

use super::*;

impl Session {
    pub(super) fn spill_push(
        &mut self,
        d: &Delivery,
        to: SpillTo<'_>,
        clock: Clock,
    ) -> std::io::Result<()> {
        if self.spill.is_none() {
            if let Some(to) = to {
                self.spill = Some(to.create()?);
            }
        }
        match self.spill.as_mut() {
            Some(s) => s.push(d.msg.cost(), &mut |b| encode_spilled(d, clock, b)),
            None => Err(std::io::Error::other("no spill directory")),
        }
    }

    /// Moves a chunk of the on-disk tail back into memory when the memory queue ran dry.
    pub(super) fn refill(&mut self, clock: Clock) {
        let Some(spill) = self.spill.as_mut() else {
            return;
        };
        let mut chunk = Vec::new();
        let read = spill.pop_chunk(REFILL_BYTES, &mut |e| {
            chunk.push(decode_spilled(e, clock)?);
            Ok(())
        });
        for d in chunk {
            self.add_mem(d.msg.cost());
            self.queue.push_back(d);
        }
        if let Err(e) = read {
            // The deliveries are still in the journal and come back after a restart.
            tracing::error!(client = %self.client_id, error = %e, "spill unreadable; dropping its in-memory view");
            self.spill = None;
        }
        if self.spill.as_ref().is_some_and(|s| s.count() == 0) {
            self.spill = None;
        }
    }
}

/// Writes `d` as a spill entry: its journal position, its `Enqueue` record (without the
/// client, which the file belongs to) and its message's `Msg` record.
pub(super) fn encode_spilled(d: &Delivery, clock: Clock, b: &mut Vec<u8>) {
    b.extend_from_slice(&d.lsn.to_le_bytes());
    let enq = b.len();
    b.extend_from_slice(&[0; 4]);
    d.enqueue_record("").encode(b);
    let enq_len = (b.len() - enq - 4) as u32;
    b[enq..enq + 4].copy_from_slice(&enq_len.to_le_bytes());
    let now = clock.at;
    d.msg
        .as_stored(None, now, clock.unix_ms(now))
        .encode_msg(d.msg.mid, b);
}

/// Reads a spill entry written by [`encode_spilled`] back into a delivery.
pub(crate) fn decode_spilled(entry: &[u8], clock: Clock) -> std::io::Result<Delivery> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "unreadable spill entry");
    let word = |at: usize, n: usize| entry.get(at..at + n).ok_or_else(bad);
    let lsn = word(0, 8)?;
    let lsn = u64::from_le_bytes([
        lsn[0], lsn[1], lsn[2], lsn[3], lsn[4], lsn[5], lsn[6], lsn[7],
    ]);
    let enq_len = word(8, 4)?;
    let enq_len = u32::from_le_bytes([enq_len[0], enq_len[1], enq_len[2], enq_len[3]]) as usize;
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
            let now = clock.at;
            let (msg, _) = Message::from_stored(mid, msg, now, clock.unix_ms(now));
            Ok(Delivery {
                msg: Arc::new(msg),
                qos: QoS::from_u8(qos).unwrap_or(QoS::AtLeastOnce),
                retain,
                sub_ids,
                shared: shared.map(|(g, f)| (Arc::from(g), Arc::from(f))),
                dseq,
                lsn,
                queue: None,
                stream: None,
                attempts: 0,
            })
        }
        _ => Err(bad()),
    }
}
