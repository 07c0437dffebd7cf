//! CONNECT: checks, client identifiers, takeover and resumption, CONNACK; the end of a
//! connection whose credential expired.

use super::login::Login;
use super::*;

impl Core {
    /// Handles CONNECT from a client the runtime authenticated as `login` (its user,
    /// `None` for anonymous, the rules its credential carries, when it expires, and the
    /// user's own limits, which the session keeps from now on):
    /// CONNACK into `out`; on success the session is attached to a new link woken
    /// and closed through `notify` (see [`Wake`]).
    pub(crate) fn connect(
        &mut self,
        c: &Connect<'_>,
        login: impl Into<Login>,
        notify: Arc<dyn Wake>,
        now: Instant,
        out: &mut BytesMut,
        fx: &mut Effects,
    ) -> Option<Accepted> {
        let Login {
            user,
            grant,
            expires,
            limits,
        } = login.into();
        let protocol = c.protocol;
        let v5 = protocol.is_v5();
        let refuse = |out: &mut BytesMut, v3: u8, v5code: u8| {
            let code = if v5 { v5code } else { v3 };
            let ack = ConnAck {
                session_present: false,
                code,
                properties: Properties::default(),
            };
            write_packet(out, protocol, &Packet::ConnAck(ack));
            None
        };
        if c.client_id.is_empty() && !v5 && !c.clean_start {
            return refuse(out, reason::v3::IDENTIFIER_REJECTED, 0);
        }
        // `$queue/...` ids are the work queues' own sessions in the store.
        if c.client_id.len() > self.cfg.max_client_id_length
            || c.client_id.starts_with(queues::QUEUE_PREFIX)
            || c.client_id.starts_with(delayed::STORE_ID)
        {
            return refuse(
                out,
                reason::v3::IDENTIFIER_REJECTED,
                reason::CLIENT_IDENTIFIER_NOT_VALID,
            );
        }
        // `auth.client_id_patterns`: a user may use only the ids its patterns give it, so
        // that nobody takes over another's connection, session or `%c` rules with its
        // own valid credentials. The id asked for is checked (an empty one included).
        if !self.acl.client_id_allowed(user.as_deref(), c.client_id) {
            tracing::info!(
                client = c.client_id,
                user = user.as_deref().unwrap_or(""),
                "client id not allowed for this user"
            );
            return refuse(
                out,
                reason::v3::IDENTIFIER_REJECTED,
                reason::CLIENT_IDENTIFIER_NOT_VALID,
            );
        }
        if c.properties.authentication_method().is_some() {
            return refuse(
                out,
                reason::v3::NOT_AUTHORIZED,
                reason::BAD_AUTHENTICATION_METHOD,
            );
        }
        if let Some(w) = &c.will {
            if w.qos as u8 > self.cfg.max_qos {
                return refuse(out, reason::v3::NOT_AUTHORIZED, reason::QOS_NOT_SUPPORTED);
            }
            if w.retain && !self.cfg.retain_available {
                return refuse(
                    out,
                    reason::v3::NOT_AUTHORIZED,
                    reason::RETAIN_NOT_SUPPORTED,
                );
            }
            if w.topic.len() > self.cfg.max_topic_length || is_sys(w.topic) {
                return refuse(out, reason::v3::NOT_AUTHORIZED, reason::TOPIC_NAME_INVALID);
            }
        }
        let assigned = c.client_id.is_empty();
        let client_id: Arc<str> = if assigned {
            let id = format!("mote-{:x}-{}", std::process::id(), self.next_assigned);
            self.next_assigned += 1;
            Arc::from(id)
        } else {
            Arc::from(c.client_id)
        };

        // Takeover and session resumption.
        if let Some(old) = self.shards.get_mut(&client_id) {
            if let Some(link) = old.take_link() {
                let reason = reason::SESSION_TAKEN_OVER;
                link.kick().set(reason);
                fx.wake.push(link.notify);
                tracing::info!(client = %client_id, "session taken over");
                self.link_ended(&client_id, End::Abnormal, true, now, fx);
                // A session that lived only as long as its connection ends with it, before
                // the new CONNECT's Clean Start is looked at (MQTT 5 §3.1.4, 3.1.1 §3.1.2.4).
                if self
                    .shards
                    .get(&client_id)
                    .is_some_and(|s| s.expiry_interval() == 0)
                {
                    self.end_session(&client_id, now, fx);
                }
            }
        }
        let mut session_present = false;
        if let Some(old) = self.shards.get_mut(&client_id) {
            // A session belongs to the user that created it: another user's CONNECT
            // with this client id starts afresh instead of reading what was queued.
            let owner_differs = old.user().map(|u| &**u) != user.as_deref();
            if owner_differs && !c.clean_start {
                tracing::info!(client = %client_id, "session of another user not resumed");
            }
            if c.clean_start || owner_differs {
                self.end_session(&client_id, now, fx);
            } else {
                // Reconnecting before the will delay ran out cancels the will.
                old.set_will(None);
                session_present = true;
                self.timers.cancel(&Timer::Will(client_id.clone()));
                self.timers.cancel(&Timer::Expiry(client_id.clone()));
            }
        }

        let max_expiry = self.cfg.max_session_expiry;
        let requested_expiry = if v5 {
            c.properties.session_expiry_interval().unwrap_or(0)
        } else if c.clean_start {
            0
        } else {
            u32::MAX
        };
        let expiry = requested_expiry.min(max_expiry);

        let mut keep_alive = c.keep_alive;
        let mut server_keep_alive = None;
        let max_ka = self.cfg.max_keepalive;
        if v5 && max_ka > 0 && (keep_alive == 0 || keep_alive > max_ka) {
            keep_alive = max_ka;
            server_keep_alive = Some(max_ka);
        }

        let conn_id = self.next_conn_id;
        self.next_conn_id += 1;
        let link = Link {
            conn_id,
            notify,
            credential_expires: expires,
            protocol,
            client_receive_max: c.properties.receive_maximum().unwrap_or(u16::MAX),
            client_max_packet: c.properties.maximum_packet_size().unwrap_or(u32::MAX),
            client_alias_max: c.properties.topic_alias_maximum().unwrap_or(0),
            aliases: Aliases::default(),
        };
        let will = c.will.as_ref().map(|w| {
            let publish = Publish {
                dup: false,
                qos: w.qos,
                retain: w.retain,
                topic: w.topic,
                packet_id: 0,
                properties: w.properties,
                payload: w.payload,
            };
            let mid = self.next_mid;
            self.next_mid += 1;
            let mut msg = Message::from_publish(
                mid,
                &publish,
                Arc::from(w.topic),
                Some(client_id.clone()),
                now,
            );
            msg.expires_at = None;
            WillState {
                msg: Arc::new(msg),
                delay: if v5 {
                    w.properties.will_delay_interval().unwrap_or(0)
                } else {
                    0
                },
                expiry: w.properties.message_expiry_interval(),
            }
        });

        let session = self
            .shards
            .of_mut(&client_id)
            .sessions
            .entry(client_id.clone())
            .or_insert_with(|| Box::new(Session::new(client_id.clone(), self.mem.clone())));
        let old_expiry = session.expiry_interval();
        let was_persisted = session.persisted();
        session.set_expiry_interval(expiry);
        session.attach(link);
        session.set_user(user.clone());
        session.set_limits(limits);
        let old_grant = session.set_grant(grant.clone());
        session.set_will(will.clone());
        session.set_persisted(expiry > 0);
        if self.journal.is_some() {
            let id = client_id.to_string();
            match (was_persisted, expiry > 0) {
                (false, true) => {
                    self.log(
                        Record::SessionOpen {
                            client: id.clone(),
                            expiry,
                            user: user.as_deref().map(str::to_owned),
                        },
                        Why::Connack,
                    );
                }
                (true, true) if old_expiry != expiry => {
                    self.log(
                        Record::SessionExpiry {
                            client: id.clone(),
                            expiry,
                        },
                        Why::Connack,
                    );
                }
                (true, false) => {
                    // Resumed with Session Expiry 0: the session now ends with this
                    // connection, so the store lets go of it.
                    self.log(Record::SessionEnd { client: id.clone() }, Why::NoPromise);
                }
                _ => {}
            }
            if was_persisted && expiry > 0 && session_present {
                self.log(Record::WillClear { client: id.clone() }, Why::NoPromise);
            }
            if let (Some(w), true) = (&will, expiry > 0) {
                self.hold_msg(&w.msg, w.expiry, now);
                self.log(
                    Record::Will {
                        client: id,
                        mid: w.msg.mid,
                        delay: w.delay,
                    },
                    Why::NoPromise,
                );
            }
        }
        // A resumed session's subscriptions were decided under the grant it had (none
        // after a restart): under another one they are decided again before anything
        // more is delivered.
        if session_present && old_grant != grant {
            self.decide_subscriptions(Some(&client_id), now);
        }
        // The connection ends when its credential expires: one timer, no scan.
        match expires {
            Some(at) => self.timers.set(Timer::Credential(client_id.clone()), at),
            None => {
                self.timers.cancel(&Timer::Credential(client_id.clone()));
            }
        }
        let session = self.shards.get_mut(&client_id)?;

        let mut props = PropValues::default();
        if v5 {
            let cfg = &self.cfg;
            props.receive_maximum = Some(cfg.receive_maximum);
            props.maximum_packet_size = Some(cfg.max_packet_size);
            props.topic_alias_maximum = Some(cfg.topic_alias_maximum);
            if cfg.max_qos < 2 {
                props.maximum_qos = Some(cfg.max_qos);
            }
            props.retain_available = Some(cfg.retain_available);
            props.wildcard_subscription_available = Some(cfg.wildcard_subscriptions);
            props.subscription_identifier_available = Some(cfg.subscription_identifiers);
            props.shared_subscription_available = Some(cfg.shared_subscriptions);
            props.server_keep_alive = server_keep_alive;
            if expiry != requested_expiry {
                props.session_expiry_interval = Some(expiry);
            }
            if assigned {
                props.assigned_client_identifier = Some(&client_id);
            }
        }
        let ack = ConnAck {
            session_present,
            code: 0,
            properties: Properties::from(&props),
        };
        write_packet(out, protocol, &Packet::ConnAck(ack));
        tracing::debug!(client = %client_id, ?protocol, session_present, "connected");

        let mut events = Vec::new();
        if session_present {
            session.resend_inflight(out, now, &self.cfg.event_topics, &mut |e| events.push(e));
        }
        self.log_events(&client_id, events);
        // Work queues it consumes may send to it again.
        self.consumer_online(&client_id);
        self.stream_member_online(&client_id);
        self.drain_session(&client_id, out, None, now);
        Some(Accepted {
            client_id,
            conn_id,
            keep_alive,
            protocol,
        })
    }

    /// The credential of `client`'s connection expired (its timer fired): the connection
    /// is asked to close (MQTT 5: DISCONNECT 0xA0 Maximum connect time), keeping its
    /// session, as a connection lost does.
    pub(super) fn credential_expired(&mut self, client: &Arc<str>, now: Instant, fx: &mut Effects) {
        let Some(link) = self.shards.get(client).and_then(|s| s.link()) else {
            return;
        };
        if link.credential_expires.is_some_and(|at| at <= now) && link.kick().get() == 0 {
            tracing::info!(client = %client, "credential expired; disconnecting");
            link.kick().set(reason::MAXIMUM_CONNECT_TIME);
            fx.wake(&link.notify);
        }
    }
}
