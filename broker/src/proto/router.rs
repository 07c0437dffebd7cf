//! Routing a published message to sessions: matching subscriptions, shared groups, queueing.

use super::*;

/// What one publish sends one client whose subscriptions match it (several may:
/// MQTT-3.3.4-2 / 5.0 §3.3.4, one delivery with the highest QoS and every identifier).
#[derive(Debug)]
pub(super) struct Target {
    qos: QoS,
    retain: bool,
    sub_ids: Vec<u32>,
}

impl Core {
    /// True when `msg` may become its topic's retained message within the limits on
    /// retained messages (count, total bytes, bytes per message); the one it replaces
    /// makes room.
    fn may_retain(&self, msg: &Message) -> bool {
        if msg.payload.len() > self.cfg.max_retained_message_bytes {
            return false;
        }
        let old = self.retained.get(&msg.topic);
        let freed = old.map_or(0, |m| m.cost());
        let count_ok = old.is_some() || self.retained.len() < self.cfg.max_retained_messages;
        count_ok && self.retained_bytes - freed + msg.cost() <= self.cfg.max_retained_bytes
    }

    /// Routes `msg` to every matching subscription and stores/deletes it as retained.
    /// Returns the number of sessions it was queued for.
    pub(crate) fn publish(&mut self, msg: Arc<Message>, now: Instant, fx: &mut Effects) -> usize {
        if msg.retain {
            if msg.payload.is_empty() {
                if let Some(old) = self.retained.remove(&msg.topic) {
                    self.retained_bytes -= old.cost();
                    self.log(
                        Record::RetainDel {
                            topic: msg.topic.to_string(),
                        },
                        Why::accept(msg.qos),
                    );
                }
            } else if self.may_retain(&msg) {
                // `$SYS` values are regenerated at start-up; they are not stored.
                if !is_sys(&msg.topic) {
                    self.hold_msg(&msg, None, now);
                    let rec = Record::RetainSet {
                        topic: msg.topic.to_string(),
                        mid: msg.mid,
                    };
                    self.log(rec, Why::accept(msg.qos));
                }
                self.retained_bytes += msg.cost();
                let old = self
                    .retained
                    .insert(msg.topic.clone(), msg.clone(), msg.expires_at);
                if let Some(old) = old {
                    self.retained_bytes -= old.cost();
                }
            } else {
                self.stats.retained_refused += 1;
                tracing::debug!(topic = %msg.topic, "retained message limits reached; not retained");
            }
        }
        let hits = self.matches.get(&self.subs, &msg.topic);
        let mut count = 0;
        // Plain subscriptions: a client's are neighbours in `hits`, merged into one
        // delivery with the highest QoS and every identifier.
        let plain = hits.iter().take_while(|h| h.group.is_none()).count();
        let mut rest = &hits[..plain];
        while let Some(first) = rest.first() {
            let n = 1 + rest[1..].iter().take_while(|h| !h.new_client).count();
            let (mine, next) = rest.split_at(n);
            rest = next;
            if let Some(t) = self.target(&msg, mine) {
                count += self.deliver_target(&first.client, &msg, t, now, fx);
            }
        }
        // Shared subscriptions: one member of each (group, filter) gets it.
        let mut rest = &hits[plain..];
        while let Some(first) = rest.first() {
            let n = rest.iter().take_while(|h| h.group == first.group).count();
            let (mine, next) = rest.split_at(n);
            rest = next;
            let Some((group, filter)) = &first.group else {
                continue;
            };
            let members: Vec<(Arc<str>, SubEntry)> = mine
                .iter()
                .filter(|h| !h.entry.checked || self.readable(&h.client, &msg.topic))
                .map(|h| (h.client.clone(), h.entry.clone()))
                .collect();
            if let Some(client) = self.pick_member(group, filter, &members, None) {
                if let Some((_, e)) = members.iter().find(|m| m.0 == client) {
                    let d = Delivery {
                        qos: msg.qos.min(e.qos),
                        retain: e.retain_as_published && msg.retain,
                        sub_ids: e.id.into_iter().collect(),
                        msg: msg.clone(),
                        shared: Some((group.clone(), filter.clone())),
                        dseq: 0,
                        lsn: 0,
                        queue: None,
                        stream: None,
                        attempts: 0,
                    };
                    count += usize::from(self.deliver(&client, d, now, fx));
                }
            }
        }
        // One nobody took (no subscriber, or its deliveries spilled to disk) is freed
        // here: set aside for after the lock, publishing QoS 1 to an offline persistent
        // subscriber was 6-8 % slower with `--fsync never` and `every=10` (likely: the
        // memory the next message would reuse while still warm was not free yet).
        count
    }

    /// True when the access rules let `client`'s user read `topic` (for a subscription
    /// the rules allow only in part).
    fn readable(&self, client: &Arc<str>, topic: &str) -> bool {
        let s = self.shards.get(client);
        let who = acl::Who {
            user: s.and_then(|s| s.user()).map(|u| &**u),
            client,
            grant: s.and_then(|s| s.grant()).map(|g| &**g),
        };
        self.acl.allows(who, acl::Access::Read, topic)
    }

    /// What `msg` sends the client of the plain subscriptions `mine` (all of one
    /// client): `None` when none of them takes it (No Local, or a read the access rules
    /// refuse).
    fn target(&self, msg: &Message, mine: &[matches::Hit]) -> Option<Target> {
        let mut t: Option<Target> = None;
        for h in mine {
            let e = &h.entry;
            if e.no_local && msg.publisher.as_deref() == Some(&*h.client) {
                continue;
            }
            if e.checked && !self.readable(&h.client, &msg.topic) {
                continue;
            }
            let t = t.get_or_insert(Target {
                qos: QoS::AtMostOnce,
                retain: false,
                sub_ids: Vec::new(),
            });
            t.qos = t.qos.max(e.qos);
            t.retain |= e.retain_as_published && msg.retain;
            if let Some(id) = e.id {
                t.sub_ids.push(id);
            }
        }
        t
    }

    /// Hands `msg` to `client` as `t` says: a stream's or work queue's collecting
    /// filter appends or enqueues it, a session queues a delivery. Returns 1 when it
    /// was taken.
    fn deliver_target(
        &mut self,
        client: &Arc<str>,
        msg: &Arc<Message>,
        t: Target,
        now: Instant,
        fx: &mut Effects,
    ) -> usize {
        // A stream collecting its `filter`: appended.
        if let Some(name) = client.strip_prefix(streams::STREAM_PREFIX) {
            return usize::from(self.append(name, msg, now, fx));
        }
        // A work queue collecting its `filter`: a job of its own.
        if let Some(name) = client.strip_prefix(queues::QUEUE_PREFIX) {
            return usize::from(self.enqueue(name, msg.clone(), false, now, fx));
        }
        let d = Delivery {
            qos: msg.qos.min(t.qos),
            retain: t.retain,
            sub_ids: t.sub_ids,
            msg: msg.clone(),
            shared: None,
            dseq: 0,
            lsn: 0,
            queue: None,
            stream: None,
            attempts: 0,
        };
        usize::from(self.deliver(client, d, now, fx))
    }

    /// Chooses the member of a shared group to receive the next message: round robin over
    /// online members, or over all members when none is online; never `exclude`.
    pub(super) fn pick_member(
        &mut self,
        group: &Arc<str>,
        filter: &Arc<str>,
        members: &[(Arc<str>, SubEntry)],
        exclude: Option<&str>,
    ) -> Option<Arc<str>> {
        let candidates: Vec<&Arc<str>> = members
            .iter()
            .map(|m| &m.0)
            .filter(|c| Some(&***c) != exclude)
            .collect();
        let online: Vec<&Arc<str>> = candidates
            .iter()
            .copied()
            .filter(|c| self.shards.get(c).is_some_and(|s| s.online()))
            .collect();
        let pool = if online.is_empty() {
            &candidates
        } else {
            &online
        };
        if pool.is_empty() {
            return None;
        }
        let rr = self
            .shared_rr
            .entry((group.clone(), filter.clone()))
            .or_insert(0);
        let chosen = pool[*rr % pool.len()].clone();
        *rr = rr.wrapping_add(1);
        Some(chosen)
    }

    /// Queues `d` for `client`; QoS 0 is not queued for an offline session.
    pub(super) fn deliver(
        &mut self,
        client: &str,
        mut d: Delivery,
        now: Instant,
        fx: &mut Effects,
    ) -> bool {
        // A work queue has limits of its own (its declaration).
        let limits = if client.starts_with(queues::QUEUE_PREFIX) {
            let q = self.queue_settings(client);
            QueueLimits {
                max_messages: q.max_messages,
                max_bytes: q.max_bytes,
                ..self.limits
            }
        } else {
            self.limits
        };
        let clock = self.clock(now);
        let queued = self.queued_memory();
        let Some(s) = self.shards.get_mut(client) else {
            return false;
        };
        if d.msg.expired(now) || (!s.online() && d.qos == QoS::AtMostOnce) {
            return false;
        }
        let qos = d.qos;
        // A delivery to a persistent session is journaled before it is queued; beyond
        // the memory budget it waits on disk only.
        let store = s.persisted() && qos != QoS::AtMostOnce && self.journal.is_some();
        // What cannot wait on disk (QoS 0, clean sessions, the in-memory store) meets the
        // queue budget as a hard cap across all sessions: past it the delivery is dropped
        // (counted), so the broker's memory stays bounded in every mode.
        let spillable = store && self.tails.is_some();
        if !spillable && queued + d.msg.cost() > self.budget {
            self.stats.dropped_overflow += 1;
            tracing::debug!(client = %client, "queue memory budget reached: delivery dropped");
            return false;
        }
        self.stats.deliveries += 1;
        let (s, spill) = if store {
            // Journaling needs the whole core: the session is looked up again after.
            self.hold_msg(&d.msg, None, now);
            d.dseq = self.next_dseq;
            self.next_dseq += 1;
            let rec = d.enqueue_record(client);
            d.lsn = self.log_with(Why::Accept, &mut |b| rec.encode(b));
            let spill = spill_to(&self.tails, &self.mem, self.budget);
            let Some(s) = self.shards.get_mut(client) else {
                return false;
            };
            (s, spill)
        } else {
            (s, None)
        };
        let dseq = d.dseq;
        let result = s.enqueue(d, &limits, spill, clock);
        if result == crate::proto::session::Enqueued::Dropped {
            self.stats.dropped_overflow += 1;
            match s.link() {
                // A connected consumer that cannot keep up with QoS 1/2 is disconnected
                // (its persistent session keeps queueing up to the same bound).
                Some(link) if qos != QoS::AtMostOnce && link.kick().get() == 0 => {
                    tracing::warn!(client = %client, "slow consumer: queue full, disconnecting");
                    link.kick().set(reason::QUOTA_EXCEEDED);
                    fx.wake(&link.notify);
                }
                _ => tracing::debug!(client = %client, "queue full: delivery dropped"),
            }
            if dseq != 0 {
                self.log(
                    Record::Done {
                        client: client.to_owned(),
                        dseq,
                    },
                    Why::NoPromise,
                );
            }
            return false;
        }
        if let Some(link) = s.link() {
            fx.wake(&link.notify);
            if self.held.pausable.is_some() && s.congested(&s.queue_limits(self.limits)) {
                self.check_congestion(client, now);
            }
        }
        true
    }

    /// Gives a shared delivery to another member of its group (the previous one left).
    pub(super) fn reroute_shared(
        &mut self,
        from: &Arc<str>,
        mut d: Delivery,
        now: Instant,
        fx: &mut Effects,
    ) {
        let Some((group, filter)) = d.shared.clone() else {
            return;
        };
        if d.dseq != 0 {
            self.log(
                Record::Done {
                    client: from.to_string(),
                    dseq: d.dseq,
                },
                Why::NoPromise,
            );
            d.dseq = 0;
            d.lsn = 0;
        }
        let mut members = Vec::new();
        self.subs.for_each_match(&d.msg.topic, |f, key, entry| {
            if f == &*filter && key.group.as_deref() == Some(&*group) {
                members.push((key.client.clone(), entry.clone()));
            }
        });
        members.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(client) = self.pick_member(&group, &filter, &members, Some(from)) {
            // The new member gets it as its own subscription grants it: its QoS, its
            // Retain As Published, its Subscription Identifier (MQTT-3.3.4-3, 3.8.4-8).
            if let Some((_, e)) = members.iter().find(|m| m.0 == client) {
                d.qos = d.msg.qos.min(e.qos);
                d.retain = e.retain_as_published && d.msg.retain;
                d.sub_ids = e.id.into_iter().collect();
            }
            self.deliver(&client, d, now, fx);
        }
    }
}
