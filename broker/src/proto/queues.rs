//! Work queues (`$queue/NAME`): a PUBLISH to `$queue/NAME` (or `$queue/NAME/...`)
//! enqueues, a SUBSCRIBE to `$queue/NAME` makes the session a consumer, a PUBACK
//! acknowledges. Each message goes to one consumer at a time, the least loaded, at most
//! `min(its Receive Maximum, PREFETCH)` unacknowledged per consumer; PUBACKs may come in
//! any order. A consumer's unacknowledged messages go back to the front of the queue
//! when its connection ends, it unsubscribes, or its session ends, and are sent again
//! as new PUBLISHes flagged DUP (a live connection is never sent the same PUBLISH twice,
//! MQTT-4.4.0-1). Delivery is at least once.
//!
//! A queue's messages are kept like the queue of a persistent session that is never
//! online, under the store id `$queue/NAME` (client ids with that prefix are refused):
//! they are journaled before the publisher's PUBACK, spill to disk past the memory
//! budget, and come back after a restart. A message handed to a consumer stays the
//! queue's (its `Delivery::queue`); the consumer's session journals nothing of it, and
//! its PUBACK journals the queue's `Done`. A QoS 0 publish is kept as QoS 1; a QoS 0
//! consumer acknowledges on receipt.
//!
//! Invariants: a consumer's `outstanding` counts the queue's deliveries in its session
//! (queued or in flight); every such delivery ends in exactly one of: acknowledged
//! (`Event::QueueDone`), returned to the queue.

use super::*;
use crate::config::{Overflow, QueueDecl};
use crate::proto::message::push_user_property;
use session::Enqueued;

/// Topics and filters of work queues start with this; it is also the store id prefix.
pub(crate) const QUEUE_PREFIX: &str = "$queue/";

// The prefetch, the deliveries before dead-lettering (`queue_max_deliveries`, SQS's
// maxReceiveCount: a job that kills every worker that takes it must not take them all
// down forever) and the visibility timeout are `[mqtt] queue_*` settings.

/// Topics a consumer publishes to about its own jobs (queue names cannot start with `$`):
/// - `$queue/$nack/PACKET_ID[/RETRY_AFTER]`: the job in flight as PACKET_ID is refused:
///   back to its queue at once, or after RETRY_AFTER seconds (one attempt more). The
///   consumer's PUBACK for it afterwards only frees the packet id.
/// - `$queue/$touch/PACKET_ID[/SECONDS]`: its visibility timeout restarts, for SECONDS
///   (default `queue_visibility_timeout_secs`); 0 is a nack.
/// - `$queue/$credit/NAME/N`: the consumer of queue NAME pulls: at most N more jobs are
///   sent to it until it grants more (a consumer that never grants is sent jobs as its
///   window allows; one that subscribed with the v5 user property `mote-credit` starts
///   with that credit).
pub(crate) const CONTROL_PREFIX: &str = "$queue/$";

/// The SUBSCRIBE user property that makes a queue consumer pull (its initial credit).
pub(crate) const CREDIT_PROPERTY: &str = "mote-credit";

/// What a queue's dead-letter queue is called: `NAME.dlq`.
const DEAD_LETTER_SUFFIX: &str = ".dlq";

/// A v5 PUBACK reason code that dead-letters a job at once (a consumer's "poison").
const POISON: u8 = reason::PAYLOAD_FORMAT_INVALID;

/// The queue name in a topic `$queue/NAME` or `$queue/NAME/...`, if it is well formed:
/// 1 to 64 of `A-Z a-z 0-9 _ . -`.
pub(crate) fn queue_of(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix(QUEUE_PREFIX)?;
    queue_of_name(rest.split('/').next()?)
}

/// `name` when it is a well-formed queue name.
fn queue_of_name(name: &str) -> Option<&str> {
    crate::config::is_queue_name(name).then_some(name)
}

/// An `$admin/...` declaration: `body` (JSON; empty is `{}`) parsed and `apply`ed. The
/// PUBACK's reason code and reason string: 0x99 when it is not the JSON of a
/// declaration, 0x83 when `apply` refuses it.
pub(super) fn admin_json<T: serde::de::DeserializeOwned>(
    body: &[u8],
    apply: impl FnOnce(T) -> Result<(), String>,
) -> (u8, Option<String>) {
    let decl = match serde_json::from_slice(if body.is_empty() { b"{}" } else { body }) {
        Ok(d) => d,
        Err(e) => {
            return (
                reason::PAYLOAD_FORMAT_INVALID,
                Some(format!("bad declaration: {e}")),
            )
        }
    };
    match apply(decl) {
        Ok(()) => (reason::SUCCESS, None),
        Err(why) => (reason::IMPLEMENTATION_SPECIFIC_ERROR, Some(why)),
    }
}

/// The store id (and session id) of queue `name`.
fn store_id(name: &str) -> Arc<str> {
    Arc::from(format!("{QUEUE_PREFIX}{name}"))
}

/// The consumers of every queue, by the queue's store id.
#[derive(Debug, Default)]
pub(crate) struct Queues {
    map: HashMap<Arc<str>, Vec<Consumer>>,
    /// Per queue, the consumer (by index) the next search for the least loaded starts
    /// at: equally loaded consumers take turns, as RabbitMQ's round robin does. Without
    /// it, at a low rate every consumer has nothing outstanding and the first listed
    /// took most jobs (measured with 8 workers: 2,122 to 17,334 jobs each of 75,000).
    turn: HashMap<Arc<str>, usize>,
    /// Queues whose consumers may have room now (after acknowledgements).
    due: Vec<Arc<str>>,
    /// Messages each queue sent to its dead-letter queue since the start.
    dead: HashMap<Arc<str>, u64>,
    /// Jobs refused with a retry delay, by message id: their queue and the job, back at
    /// `Timer::Retry`.
    retrying: HashMap<u64, (Arc<str>, Delivery)>,
    /// Refused jobs (by message id) and who refused them: another consumer gets them
    /// first.
    refused_by: HashMap<u64, Arc<str>>,
    /// Declared queues' settings, by store id (`[queue.NAME]`, `$admin/queue/NAME`).
    declared: HashMap<Arc<str>, QueueDecl>,
    /// Whether a queue used before it is declared is created (`[queues] auto_create`).
    no_auto_create: bool,
    /// Queues made on first use at most (`[queues] max_queues`; `None`: no limit).
    max: Option<usize>,
}

/// A queue's settings: its declaration over the broker's defaults.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    retention: Option<Duration>,
    delay: u32,
    visibility: Duration,
    max_deliveries: u32,
    prefetch: usize,
    pub(super) max_messages: usize,
    pub(super) max_bytes: usize,
    overflow: Overflow,
}

/// Default `retention`: 4 days, as SQS.
const DEFAULT_RETENTION_SECS: u64 = 4 * 24 * 3600;

/// Topics whose PUBLISH declares a queue: `$admin/queue/NAME` with a JSON body. The
/// declaration is kept as that topic's retained message, so it survives a restart.
pub(crate) const ADMIN_PREFIX: &str = "$admin/queue/";

/// One consumer of a queue.
#[derive(Debug)]
struct Consumer {
    client: Arc<str>,
    /// Granted QoS of its subscription.
    qos: QoS,
    /// The queue's deliveries in its session, not yet acknowledged.
    outstanding: usize,
    /// A pulling consumer's credit: jobs it may still be sent (`None`: it does not
    /// pull, its window alone limits it).
    credit: Option<u32>,
}

impl Queues {
    /// Whether queue `name` may be used: declared, or created on first use (dead-letter
    /// queues always are).
    pub(super) fn usable(&self, name: &str) -> bool {
        let id = store_id(name);
        if self.map.contains_key(&id) || self.declared.contains_key(&id) {
            return true;
        }
        // Made on first use: within the limit on queues (a dead-letter queue may take
        // one more per queue, so a full table never loses a dead letter).
        let dlq = name.ends_with(DEAD_LETTER_SUFFIX);
        let room = self.max.map_or(true, |m| {
            self.map.len() < m.saturating_mul(if dlq { 2 } else { 1 })
        });
        room && (!self.no_auto_create || dlq)
    }

    /// `client`'s session ended: it consumes nothing any more.
    pub(crate) fn forget(&mut self, client: &str) {
        for cs in self.map.values_mut() {
            cs.retain(|c| &*c.client != client);
        }
    }

    /// One of `client`'s jobs from queue `id` left it (acknowledged, refused, timed
    /// out): it has room for another.
    fn release(&mut self, id: &Arc<str>, client: &Arc<str>) {
        if let Some(c) = self
            .map
            .get_mut(id)
            .and_then(|cs| cs.iter_mut().find(|c| &c.client == client))
        {
            c.outstanding = c.outstanding.saturating_sub(1);
        }
    }

    /// The queues `client` consumes.
    fn consumed_by(&self, client: &str) -> Vec<Arc<str>> {
        let mut ids: Vec<Arc<str>> = self
            .map
            .iter()
            .filter(|(_, cs)| cs.iter().any(|c| &*c.client == client))
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }
}

/// A work queue's counters (`$SYS/broker/queues/NAME/...`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueStats {
    /// Messages waiting (in memory and on disk), not yet given to a consumer.
    pub(crate) depth: u64,
    /// Messages consumers hold, not yet acknowledged.
    pub(crate) inflight: u64,
    /// Consumers (online or not).
    pub(crate) consumers: u64,
    /// Messages sent to its dead-letter queue since the start.
    pub(crate) dead_lettered: u64,
    /// Messages waiting out a delay before they join it (the queue's `delay`, or a
    /// publish to `$delayed/SECONDS/$queue/NAME`).
    pub(crate) delayed: u64,
}

impl Core {
    /// Every work queue's counters, by name, in name order.
    pub(crate) fn queue_stats(&self) -> Vec<(String, QueueStats)> {
        // Delayed messages by the queue they will join (one pass over them).
        let mut delayed: HashMap<&str, u64> = HashMap::new();
        for d in self.delayed.waiting() {
            if let Some(Ok(due)) = delayed::parse(&d.msg.topic, 0) {
                if let Some(name) = queue_of(due.topic) {
                    *delayed.entry(name).or_default() += 1;
                }
            }
        }
        let mut out: Vec<(String, QueueStats)> = self
            .queues
            .map
            .iter()
            .map(|(id, cs)| {
                let depth = self.shards.get(id).map_or(0, |s| {
                    let (spilled, _) = s.spilled();
                    s.queued_len() + spilled
                });
                let name = id.strip_prefix(QUEUE_PREFIX).unwrap_or(id).to_owned();
                let stats = QueueStats {
                    depth: depth as u64,
                    inflight: cs.iter().map(|c| c.outstanding as u64).sum(),
                    consumers: cs.len() as u64,
                    dead_lettered: self.queues.dead.get(id).copied().unwrap_or(0),
                    delayed: delayed.get(name.as_str()).copied().unwrap_or(0),
                };
                (name, stats)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The settings of queue `id` (its store id).
    pub(super) fn queue_settings(&self, id: &str) -> Settings {
        let d = self.queues.declared.get(id);
        let get = |f: fn(&QueueDecl) -> Option<u64>| d.and_then(f);
        let retention = get(|d| d.retention).unwrap_or(DEFAULT_RETENTION_SECS);
        Settings {
            retention: (retention > 0).then(|| Duration::from_secs(retention)),
            delay: d.and_then(|d| d.delay).unwrap_or(0),
            visibility: Duration::from_secs(
                get(|d| d.visibility_timeout).unwrap_or(self.cfg.queue_visibility_timeout_secs),
            ),
            max_deliveries: d
                .and_then(|d| d.max_deliveries)
                .unwrap_or(self.cfg.queue_max_deliveries),
            prefetch: d
                .and_then(|d| d.prefetch)
                .unwrap_or(self.cfg.queue_prefetch),
            max_messages: d
                .and_then(|d| d.max_messages)
                .unwrap_or(self.cfg.max_queued_messages),
            max_bytes: d
                .and_then(|d| d.max_bytes)
                .unwrap_or(self.cfg.max_queued_bytes),
            overflow: d.and_then(|d| d.overflow).unwrap_or_default(),
        }
    }

    /// Whether queues used before they are declared are created (default yes).
    pub(crate) fn set_auto_create_queues(&mut self, on: bool, max: usize) {
        self.queues.no_auto_create = !on;
        self.queues.max = Some(max);
    }

    /// Whether queue `name` may be used: declared, or created on first use.
    pub(super) fn queue_usable(&self, name: &str) -> bool {
        self.queues.usable(name)
    }

    /// Declares queue `name` with `decl` (idempotent). `Err` with the reason when the
    /// queue was declared with other settings, or `decl` is not valid.
    pub(crate) fn declare_queue(
        &mut self,
        name: &str,
        decl: QueueDecl,
        now: Instant,
    ) -> Result<(), String> {
        if queue_of_name(name).is_none() {
            return Err(format!(
                "{name:?} is not a queue name (1 to 64 of A-Z a-z 0-9 _ . -)"
            ));
        }
        decl.validate()?;
        let id = store_id(name);
        if let Some(old) = self.queues.declared.get(&id) {
            return if *old == decl {
                Ok(())
            } else {
                Err(format!("queue {name} is declared with other settings"))
            };
        }
        if let Some(f) = &decl.filter {
            // The queue's store session subscribes to the filter: the router hands it
            // every matching publish (`Core::publish` enqueues it).
            let key = SubKey {
                client: id.clone(),
                group: None,
                json: false,
            };
            let entry = SubEntry {
                qos: QoS::AtLeastOnce,
                no_local: false,
                retain_as_published: false,
                id: None,
                checked: false,
            };
            self.subs.insert(f, key, entry);
        }
        self.queues.declared.insert(id, decl);
        self.open_queue(name, now);
        tracing::info!(queue = name, "queue declared");
        Ok(())
    }

    /// A PUBLISH to `$admin/queue/NAME`: declares the queue from the JSON body. The
    /// PUBACK's reason code and reason string.
    pub(super) fn admin_declare(
        &mut self,
        topic: &str,
        body: &[u8],
        now: Instant,
    ) -> (u8, Option<String>) {
        let name = &topic[ADMIN_PREFIX.len()..];
        admin_json(body, |decl: QueueDecl| self.declare_queue(name, decl, now))
    }

    /// `$admin/queue/NAME/redrive`: the jobs waiting in `NAME.dlq` go back to the end of
    /// NAME, their delivery count started again (jobs a consumer of the dead-letter queue
    /// holds stay there). The PUBACK's reason code and a reason string saying how many.
    pub(super) fn redrive(&mut self, name: &str, now: Instant) -> (u8, Option<String>) {
        if queue_of_name(name).is_none() || name.ends_with(DEAD_LETTER_SUFFIX) {
            return (
                reason::IMPLEMENTATION_SPECIFIC_ERROR,
                Some(format!("{name:?} is not a queue with a dead-letter queue")),
            );
        }
        let dlq = store_id(&format!("{name}{DEAD_LETTER_SUFFIX}"));
        let clock = self.clock(now);
        let mut moved = 0usize;
        let mut fx = Effects::default();
        loop {
            let Some(d) = self.shards.get_mut(&dlq).and_then(|q| q.take_ready(clock)) else {
                break;
            };
            // Back as a job of NAME: without the dead letter's reason.
            let mut m = (*d.msg).clone();
            let mut users = Vec::new();
            for (k, v) in Properties::Wire(&m.user_properties)
                .user_properties()
                .iter()
            {
                if k != "mote-dead-reason" {
                    push_user_property(&mut users, k, v);
                }
            }
            m.user_properties = Bytes::from(users);
            if !self.enqueue(name, Arc::new(m), true, now, &mut fx) {
                // NAME is full: this one and the rest stay dead letters.
                if let Some(q) = self.shards.get_mut(&dlq) {
                    q.push_front_ready(d);
                }
                break;
            }
            if d.dseq != 0 {
                let rec = Record::Done {
                    client: dlq.to_string(),
                    dseq: d.dseq,
                };
                self.log(rec, Why::NoPromise);
            }
            moved += 1;
        }
        fx.run();
        tracing::info!(queue = name, moved, "dead letters redriven");
        (reason::SUCCESS, Some(format!("moved {moved}")))
    }

    /// Recovery: the declarations kept as retained `$admin/queue/NAME` messages.
    pub(crate) fn restore_declarations(&mut self, now: Instant) {
        let mut found = Vec::new();
        self.retained
            .for_each_match("$admin/queue/+", None, usize::MAX, |t, m| {
                found.push((t.to_string(), m.payload.clone()));
            });
        for (topic, body) in found {
            let (code, why) = self.admin_declare(&topic, &body, now);
            if code >= 0x80 {
                tracing::warn!(
                    topic,
                    reason = why.unwrap_or_default(),
                    "stored queue declaration not applied"
                );
            }
        }
    }

    /// Makes queue `name` exist (its store session opened); returns its store id.
    fn open_queue(&mut self, name: &str, now: Instant) -> Arc<str> {
        let id = store_id(name);
        if !self.shards.contains(&id) {
            let mut s = Session::new(id.clone(), self.mem.clone());
            s.set_expiry_interval(u32::MAX);
            s.set_offline_since(now);
            s.set_persisted(self.journal.is_some());
            if self.journal.is_some() {
                let rec = Record::SessionOpen {
                    client: id.to_string(),
                    expiry: u32::MAX,
                    user: None,
                };
                self.log(rec, Why::Accept);
            }
            self.shards.insert(id.clone(), Box::new(s));
        }
        self.queues.map.entry(id.clone()).or_default();
        id
    }

    /// Registers queue `name` recovered from the store (its session is already there).
    pub(super) fn add_queue(&mut self, name: &str) {
        self.queues.map.entry(store_id(name)).or_default();
    }

    /// Enqueues `msg` on queue `name` and hands what it can to consumers. False when the
    /// queue is full (the publisher is told 0x97 Quota exceeded).
    ///
    /// `released`: a delayed message coming due (the queue's `delay` is not applied
    /// again).
    pub(super) fn enqueue(
        &mut self,
        name: &str,
        msg: Arc<Message>,
        released: bool,
        now: Instant,
        fx: &mut Effects,
    ) -> bool {
        let id = self.open_queue(name, now);
        let settings = self.queue_settings(&id);
        // The job is a message of its own (a new id for the store: the published one
        // may also be on its way to subscribers, with another expiry): it carries its
        // id as the user property `mote-id`, and the queue's retention bounds its life.
        let mut m = (*msg).clone();
        m.mid = self.mid();
        m.stored_epoch = Default::default();
        m.retain = false;
        if !released {
            let mut users = m.user_properties.to_vec();
            push_user_property(&mut users, "mote-id", &format!("{:016x}", m.mid));
            m.user_properties = Bytes::from(users);
        }
        if let Some(r) = settings.retention {
            let until = now + r;
            if m.expires_at.map_or(true, |e| e > until) {
                m.expires_at = Some(until);
            }
        }
        let msg = Arc::new(m);
        if settings.delay > 0 && !released {
            let now_secs = self.clock.unix_ms(now).div_ceil(1000);
            let mut m = (*msg).clone();
            m.topic = Arc::from(format!("$delayed/{}/{}", settings.delay, msg.topic));
            let target = msg.topic.clone();
            let due = delayed::Due {
                at_secs: now_secs + u64::from(settings.delay),
                topic: &target,
            };
            return self.delay(Arc::new(m), due, now);
        }
        if settings.overflow != Overflow::RejectPublish {
            self.make_room(&id, &settings, msg.cost(), now);
        }
        let d = Delivery::kept(msg, 0);
        let queued = self.deliver(&id, d, now, fx);
        self.dispatch(&id, now);
        queued
    }

    /// A full queue whose overflow policy is `drop_oldest` or `dead_letter`: its oldest
    /// waiting messages leave until one of `cost` bytes fits.
    fn make_room(&mut self, id: &Arc<str>, settings: &Settings, cost: usize, now: Instant) {
        let clock = self.clock(now);
        loop {
            let Some(q) = self.shards.get_mut(id) else {
                return;
            };
            let (spilled, spilled_bytes) = q.spilled();
            let len = q.queued_len() + spilled;
            let bytes = q.queued_bytes() + spilled_bytes;
            if len < settings.max_messages && bytes + cost <= settings.max_bytes {
                return;
            }
            let Some(oldest) = q.take_ready(clock) else {
                return;
            };
            if settings.overflow == Overflow::DeadLetter && !id.ends_with(DEAD_LETTER_SUFFIX) {
                self.dead_letter(id, oldest, "overflow", now);
            } else {
                tracing::debug!(queue = %id, "queue full: oldest message dropped");
                self.stats.dropped_overflow += 1;
                if oldest.dseq != 0 {
                    let rec = Record::Done {
                        client: id.to_string(),
                        dseq: oldest.dseq,
                    };
                    self.log(rec, Why::NoPromise);
                }
            }
        }
    }

    /// `client` consumes queue `name` with granted `qos` (a SUBSCRIBE to `$queue/NAME`).
    /// `credit`: it pulls, with this initial credit (`CREDIT_PROPERTY`).
    pub(super) fn add_consumer(
        &mut self,
        name: &str,
        client: &Arc<str>,
        (qos, credit): (QoS, Option<u32>),
        now: Instant,
    ) {
        let id = self.open_queue(name, now);
        let consumers = self.queues.map.entry(id.clone()).or_default();
        match consumers.iter_mut().find(|c| &c.client == client) {
            Some(c) => {
                c.qos = qos;
                if credit.is_some() {
                    c.credit = credit;
                }
            }
            None => consumers.push(Consumer {
                client: client.clone(),
                qos,
                outstanding: 0,
                credit,
            }),
        }
        self.queues.due.push(id);
    }

    /// `client` no longer consumes queue `name`: what it held goes back to the queue.
    pub(super) fn remove_consumer(&mut self, name: &str, client: &Arc<str>, now: Instant) {
        let id = store_id(name);
        // Out of the consumers first: what it gives back must not come straight back.
        if let Some(cs) = self.queues.map.get_mut(&id) {
            cs.retain(|c| &c.client != client);
        }
        self.return_deliveries(client, Some(&id), now);
    }

    /// A delivery of queue `queue` to `client` was acknowledged (or dropped as if it
    /// were): the consumer has room for another.
    pub(super) fn queue_acked(&mut self, queue: &Arc<str>, client: &Arc<str>) {
        self.queues.release(queue, client);
        self.queues.due.push(queue.clone());
    }

    /// Hands queued messages to consumers of the queues that may have room now.
    pub(super) fn dispatch_due(&mut self, now: Instant) {
        let mut due = std::mem::take(&mut self.queues.due);
        due.sort();
        due.dedup();
        for id in due {
            self.dispatch(&id, now);
        }
    }

    /// Queues `client` consumes get a chance to send to it (it connected).
    pub(super) fn consumer_online(&mut self, client: &str) {
        let ids = self.queues.consumed_by(client);
        self.queues.due.extend(ids);
    }

    /// The online consumer of queue `id` with room and the fewest unacknowledged
    /// messages (other than `not`), by its index.
    fn pick_consumer(
        &self,
        id: &Arc<str>,
        prefetch: usize,
        not: Option<&Arc<str>>,
    ) -> Option<usize> {
        let consumers = self.queues.map.get(id)?;
        let mut pick: Option<(usize, usize)> = None;
        let start = self.queues.turn.get(id).copied().unwrap_or(0);
        let n = consumers.len();
        for i in (0..n).map(|k| (start + k) % n) {
            let c = &consumers[i];
            if c.credit == Some(0) || not == Some(&c.client) {
                continue;
            }
            let Some(link) = self.shards.get(&c.client).and_then(|s| s.link()) else {
                continue;
            };
            let window = prefetch.min(usize::from(link.client_receive_max.max(1)));
            if c.outstanding < window && pick.map_or(true, |(_, n)| c.outstanding < n) {
                pick = Some((i, c.outstanding));
            }
        }
        pick.map(|(i, _)| i)
    }

    /// Gives the messages of queue `id` to its online consumers with room, least loaded
    /// first, in queue order, waking them now.
    ///
    /// A job goes out before its enqueue is durable, as RabbitMQ and SQS hand out jobs:
    /// the producer's acknowledgement still waits until it is, so nothing acknowledged
    /// is lost; what a crash can do is take back a job whose enqueue was never
    /// acknowledged, which the producer then sends again, and which may then run twice
    /// (work queues are at least once). Held until durable, every job waited for an
    /// fsync on its way to a worker (the end-to-end p99 at 8 workers was 1.3-2.3x
    /// RabbitMQ's, where `--fsync never` was 0.19x).
    pub(super) fn dispatch(&mut self, id: &Arc<str>, now: Instant) {
        let clock = self.clock(now);
        let limits = self.limits;
        let settings = self.queue_settings(id);
        let (prefetch, visibility) = (settings.prefetch, settings.visibility);
        while let Some(i) = self.pick_consumer(id, prefetch, None) {
            let Some(mut d) = self.shards.get_mut(id).and_then(|q| q.take_ready(clock)) else {
                break;
            };
            // Past its retention (or its own expiry): deleted unconsumed.
            if d.msg.expired(now) {
                self.queues.refused_by.remove(&d.msg.mid);
                if d.dseq != 0 {
                    let rec = Record::Done {
                        client: id.to_string(),
                        dseq: d.dseq,
                    };
                    self.log(rec, Why::NoPromise);
                }
                continue;
            }
            // A refused job goes to another consumer when one has room.
            let mut i = i;
            if let Some(refuser) = self.queues.refused_by.remove(&d.msg.mid) {
                let picked = self.queues.map.get(id).and_then(|cs| cs.get(i));
                if picked.is_some_and(|c| c.client == refuser) {
                    i = self
                        .pick_consumer(id, prefetch, Some(&refuser))
                        .unwrap_or(i);
                }
            }
            let Some(c) = self.queues.map.get_mut(id).and_then(|cs| cs.get_mut(i)) else {
                break;
            };
            match self.queues.turn.get_mut(id) {
                Some(turn) => *turn = i + 1,
                None => {
                    self.queues.turn.insert(id.clone(), i + 1);
                }
            }
            c.outstanding += 1;
            if let Some(credit) = &mut c.credit {
                *credit -= 1;
            }
            d.qos = d.qos.min(c.qos);
            d.queue = Some(id.clone());
            // Sendable now, durable or not (see above).
            d.lsn = 0;
            let client = c.client.clone();
            // QoS 0 consumers acknowledge on receipt: nothing to time.
            if d.qos != QoS::AtMostOnce {
                let due = now + visibility;
                self.timers
                    .set(Timer::Visible(client.clone(), d.msg.mid), due);
            }
            let Some(s) = self.shards.get_mut(&client) else {
                break;
            };
            // Bounded by the prefetch, not by the session's queue limits (see
            // `Session::enqueue`): it is never dropped here.
            let queued = s.enqueue(d, &limits, None, clock);
            debug_assert_eq!(queued, Enqueued::Ok);
            // Woken now, not once this call's records are durable.
            if let Some(link) = s.link() {
                link.notify.wake();
            }
        }
    }

    /// Puts the queue deliveries `client` holds (of queue `only`, or of every queue) back
    /// at the front of their queues, in their order; those that were sent count one
    /// attempt more.
    pub(super) fn return_deliveries(
        &mut self,
        client: &Arc<str>,
        only: Option<&Arc<str>>,
        now: Instant,
    ) {
        let Some(s) = self.shards.get_mut(client) else {
            return;
        };
        let held = s.take_queue_deliveries(only);
        if held.is_empty() {
            return;
        }
        for d in &held {
            self.timers
                .cancel(&Timer::Visible(client.clone(), d.msg.mid));
        }
        let mut by_queue: HashMap<Arc<str>, Vec<Delivery>> = HashMap::new();
        for d in held {
            if let Some(q) = d.queue.clone() {
                by_queue.entry(q).or_default().push(d);
            }
        }
        for (id, ds) in by_queue {
            if let Some(c) = self
                .queues
                .map
                .get_mut(&id)
                .and_then(|cs| cs.iter_mut().find(|c| &c.client == client))
            {
                c.outstanding = 0;
            }
            self.put_back(&id, ds, now);
        }
        self.dispatch_due(now);
    }

    /// Puts deliveries of queue `id` back at its front, in their order, except those
    /// delivered `queue_max_deliveries` times: they go to its dead-letter queue.
    fn put_back(&mut self, id: &Arc<str>, ds: Vec<Delivery>, now: Instant) {
        let max = self.queue_settings(id).max_deliveries;
        let (dead, back): (Vec<Delivery>, Vec<Delivery>) = ds
            .into_iter()
            .partition(|d| max > 0 && d.attempts >= max && !id.ends_with(DEAD_LETTER_SUFFIX));
        // The count that dead-letters a job survives a restart.
        for d in back.iter().filter(|d| d.dseq != 0 && d.attempts > 0) {
            let rec = Record::Attempts {
                client: id.to_string(),
                dseq: d.dseq,
                attempts: d.attempts,
            };
            self.log(rec, Why::NoPromise);
        }
        if let Some(q) = self.shards.get_mut(id) {
            for mut d in back.into_iter().rev() {
                d.queue = None;
                q.push_front_ready(d);
            }
        }
        for d in dead {
            self.dead_letter(id, d, "max_deliveries", now);
        }
        self.queues.due.push(id.clone());
    }

    /// A consumer refused a job with a v5 PUBACK reason code `code` of 0x80 or more: it
    /// goes back to the queue (a redelivery), or with 0x99 straight to the dead-letter
    /// queue.
    pub(super) fn job_refused(&mut self, client: &Arc<str>, d: Delivery, code: u8, now: Instant) {
        let Some(id) = d.queue.clone() else {
            return;
        };
        tracing::debug!(client = %client, queue = %id, code, "job refused by its consumer");
        self.queues.refused_by.insert(d.msg.mid, client.clone());
        self.timers
            .cancel(&Timer::Visible(client.clone(), d.msg.mid));
        self.queues.release(&id, client);
        if code == POISON && !id.ends_with(DEAD_LETTER_SUFFIX) {
            self.dead_letter(&id, d, "refused", now);
            self.queues.due.push(id);
        } else {
            self.put_back(&id, vec![d], now);
        }
        self.dispatch_due(now);
    }

    /// The visibility timeout of job `mid` held by `client` ran out: it goes back to its
    /// queue for another consumer (one attempt more if it was sent). A PUBACK from
    /// `client` for it afterwards acknowledges nothing: the job runs again elsewhere
    /// (at least once).
    pub(super) fn visibility_expired(&mut self, client: &Arc<str>, mid: u64, now: Instant) {
        let Some((d, stale_left)) = self
            .shards
            .get_mut(client)
            .and_then(|s| s.abandon_queue_job(mid))
        else {
            return;
        };
        let Some(id) = d.queue.clone() else {
            return;
        };
        tracing::info!(client = %client, queue = %id, "visibility timeout: job made available again");
        // A job still in flight keeps its place at the consumer (and the consumer looks
        // busier to dispatch) until the consumer's PUBACK frees it.
        if !stale_left {
            self.queues.release(&id, client);
        }
        self.put_back(&id, vec![d], now);
        self.dispatch_due(now);
    }

    /// A consumer's control publish (`CONTROL_PREFIX`): the PUBACK's reason code. 0x90
    /// for a malformed topic, 0x80 when it names no job or queue of this consumer.
    pub(super) fn queue_control(&mut self, client: &Arc<str>, topic: &str, now: Instant) -> u8 {
        let rest = &topic[CONTROL_PREFIX.len()..];
        let mut parts = rest.split('/');
        let (verb, target, arg) = (parts.next(), parts.next(), parts.next());
        let secs = match arg.map(str::parse::<u32>) {
            None => None,
            Some(Ok(n)) => Some(n),
            Some(Err(_)) => return reason::TOPIC_NAME_INVALID,
        };
        if parts.next().is_some() {
            return reason::TOPIC_NAME_INVALID;
        }
        let packet_id = target
            .and_then(|t| t.parse::<u16>().ok())
            .filter(|&p| p != 0);
        let done = match (verb, packet_id) {
            (Some("nack"), Some(pid)) => self.nack_job(client, pid, secs.unwrap_or(0), now),
            (Some("touch"), Some(pid)) => match secs {
                Some(0) => self.nack_job(client, pid, 0, now),
                s => self.touch_job(
                    client,
                    pid,
                    s.map(|s| Duration::from_secs(u64::from(s))),
                    now,
                ),
            },
            (Some("credit"), _) => match (target.and_then(queue_of_name), secs) {
                (Some(name), Some(n)) => self.grant_credit(client, name, n, now),
                _ => return reason::TOPIC_NAME_INVALID,
            },
            _ => return reason::TOPIC_NAME_INVALID,
        };
        if done {
            reason::SUCCESS
        } else {
            reason::UNSPECIFIED_ERROR
        }
    }

    /// `$queue/$nack/PACKET_ID[/RETRY_AFTER]`.
    fn nack_job(
        &mut self,
        client: &Arc<str>,
        packet_id: u16,
        retry_after: u32,
        now: Instant,
    ) -> bool {
        let Some(d) = self
            .shards
            .get_mut(client)
            .and_then(|s| s.refuse_queue_job(packet_id))
        else {
            return false;
        };
        let Some(id) = d.queue.clone() else {
            return false;
        };
        tracing::debug!(client = %client, queue = %id, retry_after, "job refused by its consumer");
        self.queues.refused_by.insert(d.msg.mid, client.clone());
        self.timers
            .cancel(&Timer::Visible(client.clone(), d.msg.mid));
        if retry_after == 0 {
            self.put_back(&id, vec![d], now);
            self.dispatch_due(now);
        } else {
            let mid = d.msg.mid;
            self.queues.retrying.insert(mid, (id, d));
            let due = now + Duration::from_secs(u64::from(retry_after));
            self.timers.set(Timer::Retry(mid), due);
        }
        true
    }

    /// `$queue/$touch/PACKET_ID[/SECONDS]`: the job's visibility timeout starts again.
    fn touch_job(
        &mut self,
        client: &Arc<str>,
        packet_id: u16,
        for_: Option<Duration>,
        now: Instant,
    ) -> bool {
        let Some((mid, queue)) = self
            .shards
            .get(client)
            .and_then(|s| s.queue_job_in_flight(packet_id))
        else {
            return false;
        };
        let for_ = for_.unwrap_or_else(|| self.queue_settings(&queue).visibility);
        self.timers
            .set(Timer::Visible(client.clone(), mid), now + for_);
        true
    }

    /// `$queue/$credit/NAME/N`: `client`, a consumer of NAME, may be sent N more jobs.
    fn grant_credit(&mut self, client: &Arc<str>, name: &str, n: u32, now: Instant) -> bool {
        let id = store_id(name);
        let Some(c) = self
            .queues
            .map
            .get_mut(&id)
            .and_then(|cs| cs.iter_mut().find(|c| &c.client == client))
        else {
            return false;
        };
        c.credit = Some(n);
        self.queues.due.push(id);
        self.dispatch_due(now);
        true
    }

    /// A job refused with a retry delay goes back to its queue.
    pub(super) fn retry_due(&mut self, mid: u64, now: Instant) {
        if let Some((id, d)) = self.queues.retrying.remove(&mid) {
            self.put_back(&id, vec![d], now);
            self.dispatch_due(now);
        }
    }

    /// Jobs waiting out a retry delay, with their queue (for snapshots).
    pub(super) fn retrying_jobs(&self) -> impl Iterator<Item = (&Arc<str>, &Delivery)> {
        self.queues.retrying.values().map(|(q, d)| (q, d))
    }

    /// Moves a message of queue `id` to the queue `NAME.dlq`: enqueued there (journaled),
    /// then done in `id`. A crash between the two leaves it in both: at least once.
    fn dead_letter(&mut self, id: &Arc<str>, d: Delivery, why: &str, now: Instant) {
        self.queues.refused_by.remove(&d.msg.mid);
        let name = id.strip_prefix(QUEUE_PREFIX).unwrap_or(id);
        tracing::info!(
            queue = name,
            attempts = d.attempts,
            why,
            "message dead-lettered"
        );
        let dlq = self.open_queue(&format!("{name}{DEAD_LETTER_SUFFIX}"), now);
        // A copy of its own (a new message id for the store) that says why.
        let mut m = (*d.msg).clone();
        m.mid = self.mid();
        m.stored_epoch = Default::default();
        let mut users = m.user_properties.to_vec();
        push_user_property(&mut users, "mote-dead-reason", why);
        m.user_properties = Bytes::from(users);
        let moved = Delivery::kept(Arc::new(m), d.attempts);
        let mut fx = Effects::default();
        if !self.deliver(&dlq, moved, now, &mut fx) {
            // The dead-letter queue is full: the message stays where it was.
            tracing::warn!(
                queue = name,
                "dead-letter queue full; message kept in its queue"
            );
            if let Some(q) = self.shards.get_mut(id) {
                let mut d = d;
                d.queue = None;
                q.push_front_ready(d);
            }
            return;
        }
        if d.dseq != 0 {
            let rec = Record::Done {
                client: id.to_string(),
                dseq: d.dseq,
            };
            self.log(rec, Why::NoPromise);
        }
        *self.queues.dead.entry(id.clone()).or_default() += 1;
        self.queues.due.push(dlq);
        fx.run();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_are_checked() {
        assert_eq!(queue_of("$queue/jobs"), Some("jobs"));
        assert_eq!(queue_of("$queue/jobs/sub/topic"), Some("jobs"));
        assert_eq!(queue_of("$queue/a.b-c_1"), Some("a.b-c_1"));
        assert_eq!(queue_of("$queue/"), None);
        assert_eq!(queue_of("$queue/bad name"), None);
        assert_eq!(queue_of("$queue/+"), None);
        assert_eq!(queue_of(&format!("$queue/{}", "x".repeat(65))), None);
        assert_eq!(queue_of("queue/jobs"), None);
    }
}
