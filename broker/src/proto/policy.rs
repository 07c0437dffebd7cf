//! A new access policy applied to the live state: subscriptions re-decided, users that
//! are gone disconnected. The runtime calls this at start (after recovery) and on every
//! reload; the rules themselves live in [`acl`].

use super::*;

/// What applying a policy changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Applied {
    /// Subscriptions removed because the rules no longer allow them.
    pub(crate) removed: usize,
    /// Subscriptions now checked per message (the rules allow them in part).
    pub(crate) checked: usize,
    /// Connections closed because their user is gone.
    pub(crate) disconnected: usize,
}

impl Core {
    /// Puts `acl` in force. Every subscription is decided again: those the rules refuse
    /// are removed (and the store told), those they allow in part are checked per
    /// message from now on. Connected clients whose user `user_gone` says no longer
    /// exists are disconnected (MQTT 5: DISCONNECT 0x87 Not authorized); a token's user
    /// is not asked about (the token, not a file, vouched for it).
    pub(crate) fn set_acl(
        &mut self,
        acl: Arc<acl::Acl>,
        user_gone: &dyn Fn(&str) -> bool,
        now: Instant,
        fx: &mut Effects,
    ) -> Applied {
        self.acl = acl;
        let mut applied = Applied::default();
        for (client, s) in self.shards.iter() {
            if let (Some(user), Some(link)) = (s.user(), s.link()) {
                let by_token = link.credential_expires.is_some();
                if !by_token && link.kick().get() == 0 && user_gone(user) {
                    tracing::info!(client = %client, user = %user, "user removed; disconnecting");
                    link.kick().set(reason::NOT_AUTHORIZED);
                    fx.wake(&link.notify);
                    applied.disconnected += 1;
                }
            }
        }
        (applied.removed, applied.checked) = self.decide_subscriptions(None, now);
        applied
    }

    /// Decides the subscriptions of `only` (`None`: of every session) again under the
    /// rules in force and each session's grant: those refused are removed (and the store
    /// told), the others checked per message or not, as the rules now say. Returns how
    /// many were removed and how many are checked.
    pub(super) fn decide_subscriptions(
        &mut self,
        only: Option<&Arc<str>>,
        now: Instant,
    ) -> (usize, usize) {
        let mut checked_count = 0;
        let mut refused: Vec<(Arc<str>, Arc<str>)> = Vec::new();
        let mut entries: Vec<(Arc<str>, Arc<str>, SubEntry)> = Vec::new();
        let rules = &self.acl;
        let mut decide = |client: &Arc<str>, s: &Session| {
            let who = acl::Who {
                user: s.user().map(|u| &**u),
                client,
                grant: s.grant().map(|g| &**g),
            };
            for (full, sub) in s.subscriptions() {
                let (_, inner) = subscribe::held_filter(full);
                let checked = match rules.subscription(who, inner) {
                    acl::FilterVerdict::Denied => {
                        refused.push((client.clone(), full.clone()));
                        continue;
                    }
                    acl::FilterVerdict::Allowed => false,
                    acl::FilterVerdict::AllowedChecked => true,
                };
                checked_count += usize::from(checked);
                if queues::queue_of(inner).is_none() {
                    let entry = SubEntry {
                        qos: sub.options.qos,
                        no_local: sub.options.no_local,
                        retain_as_published: sub.options.retain_as_published,
                        id: sub.id,
                        checked,
                    };
                    entries.push((client.clone(), full.clone(), entry));
                }
            }
        };
        match only {
            Some(client) => {
                if let Some(s) = self.shards.get(client) {
                    decide(client, s);
                }
            }
            None => {
                for (client, s) in self.shards.iter() {
                    // The work queues' own sessions are the broker's.
                    if !client.starts_with(queues::QUEUE_PREFIX) {
                        decide(client, s);
                    }
                }
            }
        }
        // Re-inserting replaces the entry in place, with the flag decided now.
        for (client, full, entry) in entries {
            let (key, inner) = subscribe::trie_key(&client, &full);
            self.subs.insert(inner, key, entry);
        }
        let removed = refused.len();
        for (client, full) in refused {
            tracing::info!(client = %client, filter = %full, "subscription removed: no longer allowed");
            self.stats.subscribe_denied += 1;
            let Some(s) = self.shards.get_mut(&client) else {
                continue;
            };
            s.unsubscribe(&full);
            let persisted = s.persisted();
            if let Some(name) = queues::queue_of(&full) {
                self.remove_consumer(name, &client, now);
            }
            self.remove_trie_entry(&client, &full);
            if persisted {
                self.log(
                    Record::SubDel {
                        client: client.to_string(),
                        filter: full.to_string(),
                    },
                    Why::Subscription,
                );
            }
        }
        (removed, checked_count)
    }
}
