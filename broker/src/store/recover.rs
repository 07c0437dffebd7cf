//! Rebuilding the broker's durable state from the journal's records, in two passes so
//! that recovery needs memory for the live state's skeleton, not for every queued
//! message.
//!
//! Pass 1 ([`Index`]) reads every record but keeps no message body and no queued
//! delivery: it learns which sessions exist (and from which record on), their
//! subscriptions, wills and inbound QoS 2 ids, the retained topics, which deliveries
//! finished, which were sent (packet id, PUBREC seen), and for every message the last
//! record that names it. Pass 2 ([`Replay`]) reads the records again and hands each
//! live delivery, with its message, to the caller in log order, which is the order the
//! session queued them; the caller can put it in memory or straight into a spill file.
//! A message body is decoded when its `Msg` record comes by and dropped after the last
//! record naming it, so only messages whose deliveries are still being replayed (or
//! that are retained or a will) are held at once.
//!
//! Records about a session that ended (or never opened, e.g. written after a session's
//! end) are ignored, as are deliveries whose message is missing (a damaged record).

use std::collections::{BTreeMap, HashMap, HashSet};

use super::record::{Record, StoredMessage};

/// A delivery as the journal left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeliveryImage {
    /// Message id.
    pub(crate) mid: u64,
    /// Delivery QoS.
    pub(crate) qos: u8,
    /// RETAIN to send.
    pub(crate) retain: bool,
    /// Subscription identifiers.
    pub(crate) sub_ids: Vec<u32>,
    /// Shared group and filter.
    pub(crate) shared: Option<(String, String)>,
    /// Packet id if it was sent.
    pub(crate) packet_id: Option<u16>,
    /// PUBREC received.
    pub(crate) released: bool,
    /// Deliveries so far (a work queue's job).
    pub(crate) attempts: u32,
}

/// A persistent session as the journal left it, without its queued deliveries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SessionImage {
    /// Position of the `SessionOpen` record that started it: its records come after.
    pub(crate) opened_at: u64,
    /// Session Expiry Interval.
    pub(crate) expiry: u32,
    /// The user that created it.
    pub(crate) user: Option<String>,
    /// When its connection ended (Unix ms); `None` if it was connected at the crash.
    pub(crate) offline_at_ms: Option<u64>,
    /// Subscriptions: full filter -> (options byte, identifier or 0).
    pub(crate) subs: BTreeMap<String, (u8, u32)>,
    /// Deliveries sent and not finished: sequence number -> (packet id, PUBREC seen).
    pub(crate) sent: HashMap<u64, (u16, bool)>,
    /// Work-queue jobs delivered before: sequence number -> deliveries so far.
    pub(crate) attempts: HashMap<u64, u32>,
    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub(crate) inbound2: HashSet<u16>,
    /// Will: message id and delay.
    pub(crate) will: Option<(u64, u32)>,
}

/// Pass 1: everything durable except message bodies and queued deliveries.
#[derive(Debug, Clone, Default)]
pub(crate) struct Index {
    /// Sessions by client id.
    pub(crate) sessions: HashMap<String, SessionImage>,
    /// Retained: topic -> message id.
    pub(crate) retained: HashMap<String, u64>,
    /// Highest message id seen.
    pub(crate) max_mid: u64,
    /// Highest delivery sequence number seen.
    pub(crate) max_dseq: u64,
    /// Stream readers' committed offsets, by (stream, reader).
    pub(crate) stream_readers: HashMap<(String, String), u64>,
    /// Records that could not be parsed (format mismatch).
    pub(crate) unreadable: u64,
    /// Records seen; the position of the next one.
    pub(crate) records: u64,
    /// Deliveries that finished (sorted by [`Index::replay`]).
    done: Vec<u64>,
    /// (message id, position) of every record naming a message; [`Index::replay`]
    /// keeps the last per message, sorted by id. Sorted vectors rather than hash maps:
    /// half the memory for a million entries, and one allocation that goes back to the
    /// system when recovery ends instead of a trail of rehashed tables.
    last_ref: Vec<(u64, u64)>,
}

impl Index {
    /// Applies the raw payload of the next log record.
    pub(crate) fn apply_bytes(&mut self, b: &[u8]) {
        let pos = self.records;
        self.records += 1;
        // Message bodies are most of the log and pass 1 needs only their ids.
        if let Some(mid) = Record::msg_id(b) {
            self.max_mid = self.max_mid.max(mid);
            return;
        }
        match Record::decode(b) {
            Some(r) => self.apply(pos, r),
            None => self.unreadable += 1,
        }
    }

    fn apply(&mut self, pos: u64, rec: Record) {
        match rec {
            Record::SessionOpen {
                client,
                expiry,
                user,
            } => {
                let s = SessionImage {
                    opened_at: pos,
                    expiry,
                    user,
                    ..SessionImage::default()
                };
                self.sessions.insert(client, s);
            }
            Record::SessionExpiry { client, expiry } => {
                if let Some(s) = self.sessions.get_mut(&client) {
                    s.expiry = expiry;
                }
            }
            Record::SessionOffline { client, at_ms } => {
                if let Some(s) = self.sessions.get_mut(&client) {
                    s.offline_at_ms = Some(at_ms);
                }
            }
            Record::SessionEnd { client } => {
                self.sessions.remove(&client);
            }
            Record::SubAdd {
                client,
                filter,
                options,
                id,
            } => {
                if let Some(s) = self.sessions.get_mut(&client) {
                    s.subs.insert(filter, (options, id));
                }
            }
            Record::SubDel { client, filter } => {
                if let Some(s) = self.sessions.get_mut(&client) {
                    s.subs.remove(&filter);
                }
            }
            Record::Msg { mid, .. } => self.max_mid = self.max_mid.max(mid),
            Record::Enqueue { dseq, mid, .. } => {
                self.max_dseq = self.max_dseq.max(dseq);
                self.last_ref.push((mid, pos));
            }
            Record::Sent {
                client,
                dseq,
                packet_id,
            } => {
                if let Some(s) = self.sessions.get_mut(&client) {
                    s.sent.insert(dseq, (packet_id, false));
                }
            }
            Record::Released { client, dseq } => {
                if let Some(s) = self.sessions.get_mut(&client) {
                    if let Some(d) = s.sent.get_mut(&dseq) {
                        d.1 = true;
                    }
                }
            }
            Record::Done { client, dseq } => {
                if let Some(s) = self.sessions.get_mut(&client) {
                    s.sent.remove(&dseq);
                    s.attempts.remove(&dseq);
                }
                self.done.push(dseq);
            }
            Record::Inbound2 { client, packet_id } => {
                if let Some(s) = self.sessions.get_mut(&client) {
                    s.inbound2.insert(packet_id);
                }
            }
            Record::Inbound2Done { client, packet_id } => {
                if let Some(s) = self.sessions.get_mut(&client) {
                    s.inbound2.remove(&packet_id);
                }
            }
            Record::RetainSet { topic, mid } => {
                self.last_ref.push((mid, pos));
                self.retained.insert(topic, mid);
            }
            Record::RetainDel { topic } => {
                self.retained.remove(&topic);
            }
            Record::Will { client, mid, delay } => {
                self.last_ref.push((mid, pos));
                if let Some(s) = self.sessions.get_mut(&client) {
                    s.will = Some((mid, delay));
                }
            }
            Record::WillClear { client } => {
                if let Some(s) = self.sessions.get_mut(&client) {
                    s.will = None;
                }
            }
            Record::StreamCommit {
                stream,
                reader,
                next,
            } => {
                // A committed offset never moves backwards.
                let at = self.stream_readers.entry((stream, reader)).or_insert(next);
                *at = (*at).max(next);
            }
            Record::Attempts {
                client,
                dseq,
                attempts,
            } => {
                if let Some(s) = self.sessions.get_mut(&client) {
                    s.attempts.insert(dseq, attempts);
                }
            }
            Record::StreamReaderDel { stream, reader } => {
                self.stream_readers.remove(&(stream, reader));
            }
        }
    }

    /// Messages needed after the replay: retained ones and wills.
    fn kept(&self) -> HashSet<u64> {
        let wills = self.sessions.values().filter_map(|s| s.will.map(|w| w.0));
        self.retained.values().copied().chain(wills).collect()
    }

    /// Position of the last record naming message `mid`.
    fn last_ref(&self, mid: u64) -> Option<u64> {
        let i = self.last_ref.binary_search_by_key(&mid, |r| r.0).ok()?;
        Some(self.last_ref[i].1)
    }

    /// Ends pass 1 and starts pass 2.
    pub(crate) fn replay<M: Clone>(&mut self) -> Replay<'_, M> {
        self.done.sort_unstable();
        // Sorted by id then position: keep the last entry of each id.
        self.last_ref.sort_unstable();
        let refs = &mut self.last_ref;
        let mut kept = 0;
        for i in 0..refs.len() {
            if refs.get(i + 1).is_some_and(|next| next.0 == refs[i].0) {
                continue;
            }
            refs[kept] = refs[i];
            kept += 1;
        }
        refs.truncate(kept);
        refs.shrink_to_fit();
        Replay {
            index: self,
            pos: 0,
            kept: self.kept(),
            messages: HashMap::new(),
            delivered: 0,
        }
    }
}

/// Pass 2: the live deliveries in log order, each with its message.
#[derive(Debug)]
pub(crate) struct Replay<'i, M> {
    index: &'i Index,
    pos: u64,
    /// Retained messages and wills: kept to the end.
    kept: HashSet<u64>,
    /// Messages decoded and still named by a record to come (or kept).
    messages: HashMap<u64, M>,
    /// Deliveries handed out.
    pub(crate) delivered: u64,
}

impl<M: Clone> Replay<'_, M> {
    /// Applies the raw payload of the next log record (the same records, in the same
    /// order, as pass 1 saw). `make` turns a stored message into the caller's form;
    /// `deliver` receives each live delivery with its session's client id.
    pub(crate) fn apply_bytes(
        &mut self,
        b: &[u8],
        make: &mut dyn FnMut(u64, StoredMessage) -> M,
        deliver: &mut dyn FnMut(&str, u64, DeliveryImage, M),
    ) {
        let pos = self.pos;
        self.pos += 1;
        let index = self.index;
        match Record::kind(b) {
            Some(Record::KIND_MSG) => {
                let Some(Record::Msg { mid, msg }) = Record::decode(b) else {
                    return;
                };
                let wanted = index.last_ref(mid).is_some_and(|last| last > pos);
                if wanted || self.kept.contains(&mid) {
                    let m = make(mid, msg);
                    self.messages.insert(mid, m);
                }
            }
            Some(Record::KIND_ENQUEUE) => {
                let Some(Record::Enqueue {
                    client,
                    dseq,
                    mid,
                    qos,
                    retain,
                    sub_ids,
                    shared,
                }) = Record::decode(b)
                else {
                    return;
                };
                let live = index
                    .sessions
                    .get(&client)
                    .filter(|s| s.opened_at < pos && index.done.binary_search(&dseq).is_err());
                if let (Some(s), Some(m)) = (live, self.messages.get(&mid)) {
                    let sent = s.sent.get(&dseq);
                    let d = DeliveryImage {
                        mid,
                        qos,
                        retain,
                        sub_ids,
                        shared,
                        packet_id: sent.map(|s| s.0),
                        released: sent.is_some_and(|s| s.1),
                        attempts: s.attempts.get(&dseq).copied().unwrap_or(0),
                    };
                    self.delivered += 1;
                    deliver(&client, dseq, d, m.clone());
                }
                self.release(mid, pos);
            }
            Some(Record::KIND_RETAIN_SET | Record::KIND_WILL) => {
                if let Some(Record::RetainSet { mid, .. } | Record::Will { mid, .. }) =
                    Record::decode(b)
                {
                    self.release(mid, pos);
                }
            }
            _ => {}
        }
    }

    /// Forgets message `mid` if the record at `pos` was the last to name it.
    fn release(&mut self, mid: u64, pos: u64) {
        if self.index.last_ref(mid) == Some(pos) && !self.kept.contains(&mid) {
            self.messages.remove(&mid);
        }
    }

    /// Ends the replay: the retained messages and wills, by message id.
    pub(crate) fn finish(self) -> HashMap<u64, M> {
        let kept = self.kept;
        let mut messages = self.messages;
        messages.retain(|mid, _| kept.contains(mid));
        messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(topic: &str) -> StoredMessage {
        StoredMessage {
            topic: topic.into(),
            payload: Bytes::from_static(b"x"),
            qos: 1,
            retain: false,
            payload_format_indicator: u8::MAX,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Bytes::new(),
            expires_at_ms: 0,
            will_expiry: u32::MAX,
            publisher: None,
        }
    }

    /// A delivery handed out by pass 2: client, sequence number, image, topic.
    type Restored = (String, u64, DeliveryImage, String);

    fn encoded(records: &[Record]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for r in records {
            let mut b = Vec::new();
            r.encode(&mut b);
            out.push(b);
        }
        out
    }

    /// Both passes over `records`: the index, the deliveries and the kept messages' ids.
    fn recover(records: &[Record]) -> (Index, Vec<Restored>, Vec<u64>) {
        let bytes = encoded(records);
        let mut index = Index::default();
        for b in &bytes {
            index.apply_bytes(b);
        }
        let mut out = Vec::new();
        let mut replay = index.replay::<String>();
        for b in &bytes {
            replay.apply_bytes(b, &mut |_, m| m.topic, &mut |c, dseq, d, t| {
                out.push((c.to_string(), dseq, d, t))
            });
        }
        let mut kept: Vec<u64> = replay.finish().into_keys().collect();
        kept.sort_unstable();
        (index, out, kept)
    }

    #[test]
    fn replay_tracks_flows_and_drops_what_finished() {
        let c = || "c".to_string();
        let records = [
            Record::SessionOpen {
                client: c(),
                expiry: 60,
                user: None,
            },
            Record::SubAdd {
                client: c(),
                filter: "t".into(),
                options: 1,
                id: 0,
            },
            Record::Msg {
                mid: 1,
                msg: msg("t"),
            },
            Record::Msg {
                mid: 2,
                msg: msg("t"),
            },
            Record::Enqueue {
                client: c(),
                dseq: 1,
                mid: 1,
                qos: 2,
                retain: false,
                sub_ids: vec![],
                shared: None,
            },
            Record::Enqueue {
                client: c(),
                dseq: 2,
                mid: 2,
                qos: 1,
                retain: false,
                sub_ids: vec![],
                shared: None,
            },
            Record::Sent {
                client: c(),
                dseq: 1,
                packet_id: 7,
            },
            Record::Released {
                client: c(),
                dseq: 1,
            },
            Record::Sent {
                client: c(),
                dseq: 2,
                packet_id: 8,
            },
            Record::Done {
                client: c(),
                dseq: 2,
            },
            Record::Inbound2 {
                client: c(),
                packet_id: 3,
            },
            Record::Msg {
                mid: 3,
                msg: msg("r"),
            },
            Record::RetainSet {
                topic: "r".into(),
                mid: 3,
            },
            Record::SessionEnd {
                client: "other".into(),
            },
            Record::Enqueue {
                client: "ghost".into(),
                dseq: 9,
                mid: 1,
                qos: 1,
                retain: false,
                sub_ids: vec![],
                shared: None,
            },
        ];
        let (img, out, kept) = recover(&records);
        assert_eq!(out.len(), 1, "only the unfinished delivery: {out:?}");
        let (client, dseq, d, topic) = &out[0];
        assert_eq!((client.as_str(), *dseq, topic.as_str()), ("c", 1, "t"));
        assert_eq!((d.packet_id, d.released, d.qos), (Some(7), true, 2));
        let s = &img.sessions["c"];
        assert!(s.inbound2.contains(&3));
        assert_eq!(img.retained["r"], 3);
        assert_eq!(
            kept,
            vec![3],
            "only the retained message outlives the replay"
        );
        assert_eq!((img.max_mid, img.max_dseq), (3, 9));
        assert!(!img.sessions.contains_key("ghost"));
    }

    #[test]
    fn session_end_forgets_everything_of_it() {
        let open = Record::SessionOpen {
            client: "c".into(),
            expiry: 5,
            user: None,
        };
        let enqueue = |dseq, mid| Record::Enqueue {
            client: "c".into(),
            dseq,
            mid,
            qos: 1,
            retain: false,
            sub_ids: vec![],
            shared: None,
        };
        let records = [
            open.clone(),
            Record::Msg {
                mid: 1,
                msg: msg("old"),
            },
            enqueue(1, 1),
            Record::Will {
                client: "c".into(),
                mid: 1,
                delay: 0,
            },
            Record::SessionEnd { client: "c".into() },
            // The same client id opens a new session: only what follows is its.
            open,
            Record::Msg {
                mid: 2,
                msg: msg("new"),
            },
            enqueue(2, 2),
        ];
        let (img, out, kept) = recover(&records);
        assert_eq!(img.sessions["c"].will, None);
        let got: Vec<(u64, &str)> = out.iter().map(|o| (o.1, o.3.as_str())).collect();
        assert_eq!(got, vec![(2, "new")]);
        assert!(kept.is_empty());
    }

    #[test]
    fn a_message_is_held_only_until_the_last_record_naming_it() {
        // Two sessions queue the same message far apart (as a snapshot writes them):
        // both get it; a message named by nothing later is not decoded at all.
        let open = |c: &str| Record::SessionOpen {
            client: c.into(),
            expiry: 60,
            user: None,
        };
        let enqueue = |c: &str, dseq, mid| Record::Enqueue {
            client: c.into(),
            dseq,
            mid,
            qos: 1,
            retain: false,
            sub_ids: vec![7],
            shared: None,
        };
        let records = [
            open("a"),
            open("b"),
            Record::Msg {
                mid: 1,
                msg: msg("shared"),
            },
            Record::Msg {
                mid: 2,
                msg: msg("orphan"),
            },
            enqueue("a", 1, 1),
            Record::Msg {
                mid: 3,
                msg: msg("a-only"),
            },
            enqueue("a", 2, 3),
            enqueue("b", 3, 1),
        ];
        let bytes = encoded(&records);
        let mut index = Index::default();
        bytes.iter().for_each(|b| index.apply_bytes(b));
        let mut replay = index.replay::<String>();
        let mut decoded = Vec::new();
        let mut held = Vec::new();
        let mut out = Vec::new();
        for b in &bytes {
            replay.apply_bytes(
                b,
                &mut |_, m| {
                    decoded.push(m.topic.clone());
                    m.topic
                },
                &mut |c, _, d, t| out.push((c.to_string(), t, d.sub_ids)),
            );
            held.push(replay.messages.len());
        }
        assert_eq!(decoded, ["shared", "a-only"]);
        assert_eq!(held, [0, 0, 1, 1, 1, 2, 1, 0]);
        assert_eq!(
            out,
            [
                ("a".to_string(), "shared".to_string(), vec![7]),
                ("a".to_string(), "a-only".to_string(), vec![7]),
                ("b".to_string(), "shared".to_string(), vec![7]),
            ]
        );
    }
}
