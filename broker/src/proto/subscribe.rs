//! SUBSCRIBE and UNSUBSCRIBE.

use super::*;
use session::RetainedJob;

/// Most retained messages queued for new subscriptions in one step.
const RETAINED_STEP: usize = 256;

impl Core {
    pub(super) fn handle_subscribe(
        &mut self,
        client: &Arc<str>,
        conn_id: u64,
        sub: &Subscribe<'_>,
        now: Instant,
        out: &mut BytesMut,
        fx: &mut Effects,
    ) -> Result<(), Close> {
        let cfg = self.cfg.clone();
        let s = self.shards.owned(client, conn_id).ok_or(Close::TakenOver)?;
        let persisted = s.persisted();
        let mut records = Vec::new();
        let protocol = s.link().map_or(Protocol::V311, |l| l.protocol);
        let v5 = protocol.is_v5();
        let sub_id = sub.properties.subscription_identifiers().iter().next();
        if sub_id.is_some() && !cfg.subscription_identifiers {
            return Err(Close::Error(reason::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED));
        }
        let mut codes = Vec::with_capacity(sub.filters.len());
        // Filters whose retained messages are due, by full filter: a filter repeated in
        // one SUBSCRIBE is one subscription, and its last options win.
        let mut retained_for: HashMap<Arc<str>, (usize, Arc<str>, QoS)> = HashMap::new();
        // Work queues this SUBSCRIBE consumes: (name, granted QoS).
        let mut consumes: Vec<(String, QoS)> = Vec::new();
        // Streams it reads: (group, the filter taken apart, granted QoS).
        let mut reads = Vec::new();
        for f in sub.filters.iter() {
            let fail = |v5code: u8| {
                if v5 {
                    v5code
                } else {
                    reason::v3::SUBACK_FAILURE
                }
            };
            let (group, inner) = match topic::split_shared(f.filter) {
                None => (None, f.filter),
                Some(Err(())) => {
                    codes.push(fail(reason::TOPIC_FILTER_INVALID));
                    continue;
                }
                Some(Ok((g, inner))) => {
                    if f.options.no_local {
                        return Err(Close::Error(reason::PROTOCOL_ERROR));
                    }
                    if !cfg.shared_subscriptions {
                        codes.push(fail(reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED));
                        continue;
                    }
                    (Some(g), inner)
                }
            };
            // `$json/FILTER`: FILTER, with sensor events sent as JSON.
            let inner = match inner.strip_prefix(JSON_PREFIX) {
                Some(rest) if rest.is_empty() || rest.starts_with('$') => {
                    codes.push(fail(reason::TOPIC_FILTER_INVALID));
                    continue;
                }
                Some(rest) => rest,
                None => inner,
            };
            if f.filter.len() > cfg.max_topic_length || topic_levels(inner) > cfg.max_topic_levels {
                codes.push(fail(reason::TOPIC_FILTER_INVALID));
                continue;
            }
            // The access rules (docs/security.md); `mqtt.deny_subscribe` is one of them.
            let who = acl::Who {
                user: s.user().map(|u| &**u),
                client,
                grant: s.grant().map(|g| &**g),
            };
            let checked = match self.acl.subscription(who, inner) {
                acl::FilterVerdict::Denied => {
                    tracing::debug!(client = %client, filter = f.filter, "subscription refused by the access rules");
                    self.stats.subscribe_denied += 1;
                    codes.push(fail(reason::NOT_AUTHORIZED));
                    continue;
                }
                acl::FilterVerdict::Allowed => false,
                acl::FilterVerdict::AllowedChecked => true,
            };
            if topic::has_wildcard(inner) && !cfg.wildcard_subscriptions {
                codes.push(fail(reason::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED));
                continue;
            }
            // One session cannot pin unbounded memory in subscriptions; replacing one
            // it holds is always allowed. The user's own limit (`auth.limits`) when it
            // has one.
            if s.subscription_count() >= s.max_subscriptions(cfg.max_subscriptions_per_client)
                && !s.has_subscription(f.filter)
            {
                codes.push(fail(reason::QUOTA_EXCEEDED));
                continue;
            }
            // `$stream/NAME[/@START][/FILTER]` reads a stream (`proto/streams.rs`): not a
            // topic subscription either. A stream is read at least once (QoS 1 at most).
            let read = streams::parse_reader(inner);
            match &read {
                Some(Err(())) => {
                    codes.push(fail(reason::TOPIC_FILTER_INVALID));
                    continue;
                }
                Some(Ok(rf)) if !self.streams.usable(rf.name) => {
                    codes.push(fail(reason::TOPIC_FILTER_INVALID));
                    continue;
                }
                _ => {}
            }
            let max_qos = match read {
                Some(_) => QoS::AtLeastOnce,
                None => QoS::from_u8(cfg.max_qos).unwrap_or(QoS::ExactlyOnce),
            };
            let qos = f.options.qos.min(max_qos);
            let mut options = f.options;
            options.qos = qos;
            let full: Arc<str> = Arc::from(f.filter);
            if persisted {
                records.push(Record::SubAdd {
                    client: client.to_string(),
                    filter: f.filter.to_owned(),
                    options: options.to_byte(Protocol::V5),
                    id: sub_id.unwrap_or(0),
                });
            }
            // `$queue/NAME` makes the session a consumer of that work queue: not a
            // topic subscription (no trie entry, no retained messages, never shared).
            let queue = queues::queue_of(inner).filter(|n| inner.len() == n.len() + 7);
            let unusable = queue.is_some_and(|n| !self.queues.usable(n));
            if inner.starts_with(queues::QUEUE_PREFIX)
                && (queue.is_none() || group.is_some() || unusable)
            {
                codes.push(fail(reason::TOPIC_FILTER_INVALID));
                continue;
            }
            let existed = s.subscribe(
                full,
                Subscription {
                    options,
                    id: sub_id,
                },
            );
            if let Some(name) = queue {
                consumes.push((name.to_owned(), qos));
                codes.push(qos as u8);
                continue;
            }
            if let Some(Ok(rf)) = read {
                reads.push((group, rf, qos));
                codes.push(qos as u8);
                continue;
            }
            let (key, _) = trie_key(client, f.filter);
            self.subs.insert(
                inner,
                key,
                SubEntry {
                    qos,
                    no_local: options.no_local,
                    retain_as_published: options.retain_as_published,
                    id: sub_id,
                    checked,
                },
            );
            let send_retained = group.is_none()
                && (!v5
                    || match options.retain_handling {
                        RetainHandling::SendAtSubscribe => true,
                        RetainHandling::SendIfNew => !existed,
                        RetainHandling::DoNotSend => false,
                    });
            if send_retained {
                let order = retained_for.len();
                retained_for.insert(Arc::from(f.filter), (order, Arc::from(inner), qos));
            } else {
                retained_for.remove(f.filter);
            }
            codes.push(qos as u8);
        }
        for rec in records {
            self.log(rec, Why::Subscription);
        }
        // A consumer that pulls says so with its initial credit (v5 user property).
        let credit = sub
            .properties
            .user_properties()
            .iter()
            .find(|(k, _)| *k == queues::CREDIT_PROPERTY)
            .and_then(|(_, v)| v.parse::<u32>().ok());
        for (name, qos) in consumes {
            self.add_consumer(&name, client, (qos, credit), now);
        }
        // A v5 reader names its start in a user property (over the filter's `@START`).
        let start = sub
            .properties
            .user_properties()
            .iter()
            .find(|(k, _)| *k == streams::OFFSET_PROPERTY)
            .and_then(|(_, v)| streams::Start::parse(v));
        for (group, rf, qos) in reads {
            self.add_reader(client, group, &rf, (qos, sub_id), start, now);
        }
        let ack = SubAck {
            packet_id: sub.packet_id,
            properties: Properties::default(),
            codes: &codes,
        };
        write_packet(out, protocol, &Packet::SubAck(ack));
        // Retained messages follow the SUBACK (MQTT-3.8.4-4), flagged RETAIN; they are
        // walked from the index in steps as the session's queue has room.
        if let Some(s) = self.shards.get_mut(client) {
            let mut due: Vec<(usize, Arc<str>, QoS)> = retained_for.into_values().collect();
            due.sort_unstable_by_key(|d| d.0);
            let jobs = due.into_iter().map(|(_, filter, qos)| RetainedJob {
                filter,
                qos,
                sub_id,
                cursor: None,
            });
            s.add_retained_jobs(jobs.collect());
        }
        let _ = fx;
        Ok(())
    }

    /// Queues the next retained messages of `client`'s pending subscriptions, as many
    /// as its queue has room for and at most [`RETAINED_STEP`]. When some remain and
    /// this step queued something, the connection is woken to take the next step (after
    /// it has written this one): a large retained set never holds the core long.
    pub(super) fn retained_step(&mut self, client: &Arc<str>, now: Instant) {
        let Some(s) = self.shards.get_mut(client) else {
            return;
        };
        if !s.has_retained_jobs() || !s.online() {
            return;
        }
        let limits = s.queue_limits(self.limits);
        let (spilled, _) = s.spilled();
        let room = limits
            .max_messages
            .saturating_sub(s.queued_len() + spilled)
            .min(RETAINED_STEP);
        let mut found = Vec::new();
        // Retained messages looked at (sent or not): what bounds one step.
        let mut seen = 0;
        let user = s.user().cloned();
        let grant = s.grant().cloned();
        let acl = self.acl.checks(grant.as_deref()).then_some(&self.acl);
        let readable = |topic: &str| {
            acl.map_or(true, |acl| {
                let who = acl::Who {
                    user: user.as_deref(),
                    client,
                    grant: grant.as_deref(),
                };
                acl.allows(who, acl::Access::Read, topic)
            })
        };
        while seen < room {
            let Some(job) = s.retained_job() else {
                break;
            };
            let (qos, sub_id) = (job.qos, job.sub_id);
            let limit = room - seen;
            job.cursor =
                self.retained
                    .for_each_match(&job.filter, job.cursor.as_ref(), limit, |_, msg| {
                        seen += 1;
                        if !msg.expired(now) && readable(&msg.topic) {
                            found.push(Delivery {
                                qos: msg.qos.min(qos),
                                retain: true,
                                sub_ids: sub_id.into_iter().collect(),
                                msg: msg.clone(),
                                shared: None,
                                dseq: 0,
                                lsn: 0,
                                queue: None,
                                stream: None,
                                attempts: 0,
                            });
                        }
                    });
            if job.cursor.is_none() {
                s.finish_retained_job();
            }
        }
        let more = s.has_retained_jobs();
        let wake = s.link().map(|l| l.notify.clone());
        let queued = seen > 0;
        let mut fx = Effects::default();
        for d in found {
            self.deliver(client, d, now, &mut fx);
        }
        if more && queued {
            if let Some(w) = wake {
                fx.wake.push(w);
            }
        }
        fx.run();
    }

    pub(super) fn handle_unsubscribe(
        &mut self,
        client: &Arc<str>,
        conn_id: u64,
        u: &Unsubscribe<'_>,
        now: Instant,
        out: &mut BytesMut,
    ) -> Result<(), Close> {
        let s = self.owned(client, conn_id).ok_or(Close::TakenOver)?;
        let protocol = s.link().map_or(Protocol::V311, |l| l.protocol);
        let persisted = s.persisted();
        let mut codes = Vec::with_capacity(u.filters.len());
        let mut removed = Vec::new();
        for f in u.filters.iter() {
            if s.unsubscribe(f) {
                removed.push(f);
                codes.push(reason::SUCCESS);
            } else {
                codes.push(reason::NO_SUBSCRIPTION_EXISTED);
            }
        }
        for f in removed {
            if let Some(name) = queues::queue_of(f) {
                self.remove_consumer(name, client, now);
            }
            self.remove_reader(client, f, now);
            self.remove_trie_entry(client, f);
            if persisted {
                self.log(
                    Record::SubDel {
                        client: client.to_string(),
                        filter: f.to_owned(),
                    },
                    Why::Subscription,
                );
            }
        }
        let ack = UnsubAck {
            packet_id: u.packet_id,
            properties: Properties::default(),
            codes: &codes,
        };
        write_packet(out, protocol, &Packet::UnsubAck(ack));
        Ok(())
    }

    pub(super) fn remove_trie_entry(&mut self, client: &Arc<str>, full_filter: &str) {
        let (key, inner) = trie_key(client, full_filter);
        self.subs.remove(inner, &key);
    }
}

/// A subscription filter starting with this gets the JSON view of sensor events
/// (`docs/http.md`): `$json/FILTER` is FILTER, with payloads that are `SensorEvent`s
/// sent as JSON.
pub(crate) const JSON_PREFIX: &str = "$json/";

/// A subscription a session holds (its full filter, checked when it was made): its
/// shared group, if any, and the filter the trie holds it under (without `$share/GROUP/`
/// and `$json/`).
pub(super) fn held_filter(full: &str) -> (Option<&str>, &str) {
    let (group, rest) = match topic::split_shared(full) {
        Some(Ok((group, inner))) => (Some(group), inner),
        _ => (None, full),
    };
    (group, rest.strip_prefix(JSON_PREFIX).unwrap_or(rest))
}

/// The filter of a `$json/` subscription (shared or not), without its prefixes.
pub(super) fn json_filter(full: &str) -> Option<&str> {
    let rest = match topic::split_shared(full) {
        Some(Ok((_, inner))) => inner,
        _ => full,
    };
    rest.strip_prefix(JSON_PREFIX)
}

/// The trie key of `client`'s subscription `full`, and the filter the trie holds it
/// under.
pub(super) fn trie_key<'a>(client: &Arc<str>, full: &'a str) -> (SubKey, &'a str) {
    let (group, inner) = held_filter(full);
    let key = SubKey {
        client: client.clone(),
        group: group.map(Arc::from),
        json: json_filter(full).is_some(),
    };
    (key, inner)
}
