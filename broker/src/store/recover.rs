//! Rebuilding the broker's durable state from the journal's records.
//!
//! Records are applied in order to an [`Image`]; records about a session that ended
//! (or never opened, e.g. written after a session's end) are ignored. Messages nothing
//! references any more are dropped at the end.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::record::{Record, StoredMessage};

/// A delivery as the journal left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryImage {
    /// Message id.
    pub mid: u64,
    /// Delivery QoS.
    pub qos: u8,
    /// RETAIN to send.
    pub retain: bool,
    /// Subscription identifiers.
    pub sub_ids: Vec<u32>,
    /// Shared group and filter.
    pub shared: Option<(String, String)>,
    /// Packet id if it was sent.
    pub packet_id: Option<u16>,
    /// PUBREC received.
    pub released: bool,
}

/// A persistent session as the journal left it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionImage {
    /// Session Expiry Interval.
    pub expiry: u32,
    /// When its connection ended (Unix ms); `None` if it was connected at the crash.
    pub offline_at_ms: Option<u64>,
    /// Subscriptions: full filter -> (options byte, identifier or 0).
    pub subs: BTreeMap<String, (u8, u32)>,
    /// Deliveries by sequence number (send order).
    pub deliveries: BTreeMap<u64, DeliveryImage>,
    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub inbound2: HashSet<u16>,
    /// Will: message id and delay.
    pub will: Option<(u64, u32)>,
}

/// Everything durable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Image {
    /// Sessions by client id.
    pub sessions: HashMap<String, SessionImage>,
    /// Messages by id.
    pub messages: HashMap<u64, StoredMessage>,
    /// Retained: topic -> message id.
    pub retained: HashMap<String, u64>,
    /// Highest message id seen.
    pub max_mid: u64,
    /// Highest delivery sequence number seen.
    pub max_dseq: u64,
    /// Records that could not be parsed (format mismatch).
    pub unreadable: u64,
}

impl Image {
    /// Applies one record.
    pub fn apply(&mut self, rec: Record) {
        match rec {
            Record::SessionOpen { client, expiry } => {
                self.sessions.insert(
                    client,
                    SessionImage {
                        expiry,
                        ..SessionImage::default()
                    },
                );
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
            Record::Msg { mid, msg } => {
                self.max_mid = self.max_mid.max(mid);
                self.messages.insert(mid, msg);
            }
            Record::Enqueue {
                client,
                dseq,
                mid,
                qos,
                retain,
                sub_ids,
                shared,
            } => {
                self.max_dseq = self.max_dseq.max(dseq);
                if let Some(s) = self.sessions.get_mut(&client) {
                    let d = DeliveryImage {
                        mid,
                        qos,
                        retain,
                        sub_ids,
                        shared,
                        packet_id: None,
                        released: false,
                    };
                    s.deliveries.insert(dseq, d);
                }
            }
            Record::Sent {
                client,
                dseq,
                packet_id,
            } => {
                if let Some(d) = self.delivery(&client, dseq) {
                    d.packet_id = Some(packet_id);
                }
            }
            Record::Released { client, dseq } => {
                if let Some(d) = self.delivery(&client, dseq) {
                    d.released = true;
                }
            }
            Record::Done { client, dseq } => {
                if let Some(s) = self.sessions.get_mut(&client) {
                    s.deliveries.remove(&dseq);
                }
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
                self.retained.insert(topic, mid);
            }
            Record::RetainDel { topic } => {
                self.retained.remove(&topic);
            }
            Record::Will { client, mid, delay } => {
                if let Some(s) = self.sessions.get_mut(&client) {
                    s.will = Some((mid, delay));
                }
            }
            Record::WillClear { client } => {
                if let Some(s) = self.sessions.get_mut(&client) {
                    s.will = None;
                }
            }
        }
    }

    fn delivery(&mut self, client: &str, dseq: u64) -> Option<&mut DeliveryImage> {
        self.sessions.get_mut(client)?.deliveries.get_mut(&dseq)
    }

    /// Applies the raw payload of a log record.
    pub fn apply_bytes(&mut self, b: &[u8]) {
        match Record::decode(b) {
            Some(r) => self.apply(r),
            None => self.unreadable += 1,
        }
    }

    /// Drops messages nothing references, and references to messages that are gone.
    pub fn collect_garbage(&mut self) {
        let messages = &self.messages;
        for s in self.sessions.values_mut() {
            s.deliveries.retain(|_, d| messages.contains_key(&d.mid));
            if s.will.is_some_and(|(mid, _)| !messages.contains_key(&mid)) {
                s.will = None;
            }
        }
        self.retained.retain(|_, mid| messages.contains_key(mid));
        let mut live: HashSet<u64> = self.retained.values().copied().collect();
        for s in self.sessions.values() {
            live.extend(s.deliveries.values().map(|d| d.mid));
            live.extend(s.will.map(|(mid, _)| mid));
        }
        self.messages.retain(|mid, _| live.contains(mid));
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

    #[test]
    fn replay_tracks_flows_and_drops_what_finished() {
        let c = || "c".to_string();
        let mut img = Image::default();
        for r in [
            Record::SessionOpen {
                client: c(),
                expiry: 60,
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
        ] {
            img.apply(r);
        }
        img.collect_garbage();
        let s = &img.sessions["c"];
        assert_eq!(s.deliveries.len(), 1);
        assert_eq!(
            (s.deliveries[&1].packet_id, s.deliveries[&1].released),
            (Some(7), true)
        );
        assert!(s.inbound2.contains(&3));
        assert_eq!(img.retained["r"], 3);
        assert!(!img.messages.contains_key(&2), "finished message collected");
        assert_eq!((img.max_mid, img.max_dseq), (3, 9));
        assert!(!img.sessions.contains_key("ghost"));
    }

    #[test]
    fn session_end_forgets_everything_of_it() {
        let mut img = Image::default();
        img.apply(Record::SessionOpen {
            client: "c".into(),
            expiry: 5,
        });
        img.apply(Record::Msg {
            mid: 1,
            msg: msg("t"),
        });
        img.apply(Record::Enqueue {
            client: "c".into(),
            dseq: 1,
            mid: 1,
            qos: 1,
            retain: false,
            sub_ids: vec![],
            shared: None,
        });
        img.apply(Record::SessionEnd { client: "c".into() });
        img.collect_garbage();
        assert!(img.sessions.is_empty());
        assert!(img.messages.is_empty());
    }
}
