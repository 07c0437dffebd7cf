//! Access control: which topics a client may publish to (write) and read from
//! (subscribe to, and receive).
//!
//! # The rules file
//!
//! One rule or one section header per line; `#` starts a comment line.
//!
//! ```text
//! # Rules before any header apply to everyone.
//! read $SYS/broker/uptime
//! user alice            # rules for the user name alice
//! readwrite chat/#
//! client sensor-7       # rules for the client id sensor-7
//! write sensors/%c/#
//! anonymous             # rules for clients that gave no user name
//! read public/#
//! everyone              # back to rules for everyone
//! readwrite devices/%u/%c/#
//! deny write $queue/#
//! ```
//!
//! A rule is `RIGHT FILTER`. RIGHT is `read`, `write`, `readwrite` (both), `deny` (both
//! denied), `deny read` or `deny write`. FILTER is an MQTT topic filter whose levels may
//! be `%u` (the client's user name) or `%c` (its client id): a whole level, never part
//! of one, so a user name holding `/`, `+` or `#` matches nothing rather than widening
//! the rule.
//!
//! # Which rule decides
//!
//! The rules of the client's id are looked at first, then those of its user name (or
//! the anonymous ones), then the rules for everyone, each in file order: **the first
//! rule that applies decides** (a rule applies when it names the access asked for, and
//! its filter matches the topic). No rule applies: denied. So a specific section can
//! grant or refuse what the general rules say otherwise, and within a section the order
//! of the lines is the order of precedence.
//!
//! For a SUBSCRIBE the filter asked for is checked: the first rule whose filter covers
//! it (matches every topic it matches) decides. A rule that matches only some of its
//! topics before that one does not refuse the subscription, but then every message is
//! checked on delivery: a wildcard subscription never receives what its user may not
//! read (`#` with `deny read secret/#` before `read #` gets everything but `secret/`).
//! A subscription wider than every rule that would allow it (`sensors/#` with only
//! `read sensors/a/#`) is refused, as Mosquitto does.
//!
//! Without a rules file everything is allowed, except what `mqtt.deny_subscribe` lists:
//! those filters become `deny read` rules for everyone, placed first.
//!
//! # Rules a credential carries
//!
//! A token may carry rules of its own (a [`Grant`], from its `acl` claim): they are looked
//! at right after `mqtt.deny_subscribe` and before the file's, and a client holding a
//! grant is denied what no rule allows, with or without a rules file.

use std::collections::HashMap;
use std::fmt;

use super::login::ClientIds;

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Subscribe to it and receive its messages.
    Read,
    /// Publish to it (a will and a retained message included).
    Write,
}

/// One level of a rule's filter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    /// A literal level.
    Lit(Box<str>),
    /// `+`.
    Plus,
    /// `#` (the last level).
    Hash,
    /// `%u`: the user name.
    User,
    /// `%c`: the client id.
    Client,
}

/// One line of the rules: what it says about reading and writing the topics its filter
/// matches (`None`: it does not speak of that access).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    read: Option<bool>,
    write: Option<bool>,
    levels: Vec<Level>,
}

impl Rule {
    fn decides(&self, access: Access) -> Option<bool> {
        match access {
            Access::Read => self.read,
            Access::Write => self.write,
        }
    }
}

/// Who is asking.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Who<'a> {
    /// The user name it authenticated as (`None`: anonymous).
    pub(crate) user: Option<&'a str>,
    /// Its client id.
    pub(crate) client: &'a str,
    /// The rules its credential carries, if any.
    pub(crate) grant: Option<&'a Grant>,
}

/// Rules a credential carries (a token's `acl` claim): what the client may read, write,
/// or both; every one allows, none denies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    rules: Vec<Rule>,
}

impl Grant {
    /// Rules allowing reading of `read`, writing of `write` and both of `both`: topic
    /// filters whose levels may be `%u` and `%c`, as in the rules file.
    ///
    /// # Errors
    /// The first filter that is not one.
    pub(crate) fn new(read: &[&str], write: &[&str], both: &[&str]) -> Result<Grant, String> {
        let mut rules = Vec::with_capacity(read.len() + write.len() + both.len());
        for (filters, read, write) in [
            (both, Some(true), Some(true)),
            (read, Some(true), None),
            (write, None, Some(true)),
        ] {
            for f in filters {
                let levels = parse_filter(f)?;
                rules.push(Rule {
                    read,
                    write,
                    levels,
                });
            }
        }
        Ok(Grant { rules })
    }

    /// Number of rules.
    pub(crate) fn len(&self) -> usize {
        self.rules.len()
    }
}

/// The answer for a SUBSCRIBE filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FilterVerdict {
    /// Refused.
    Denied,
    /// Allowed, and every topic it matches may be read.
    Allowed,
    /// Allowed, but some of its topics may not be read: check each message on delivery.
    AllowedChecked,
}

/// Access rules (see the module documentation).
#[derive(Clone, Default)]
pub(crate) struct Acl {
    /// Rules that come before everything (`mqtt.deny_subscribe`).
    first: Vec<Rule>,
    everyone: Vec<Rule>,
    anonymous: Vec<Rule>,
    users: HashMap<Box<str>, Vec<Rule>>,
    clients: HashMap<Box<str>, Vec<Rule>>,
    /// What holds when no rule applies: true without a rules file (and no grant).
    default_allow: bool,
    /// The client ids users may use (`auth.client_id_patterns`); `None`: any.
    client_ids: Option<ClientIds>,
}

impl fmt::Debug for Acl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acl")
            .field("rules", &self.rule_count())
            .field("users", &self.users.len())
            .field("clients", &self.clients.len())
            .field("default_allow", &self.default_allow)
            .field("client_ids", &self.client_ids.is_some())
            .finish_non_exhaustive()
    }
}

/// A rules file that could not be read: the line and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AclError {
    pub(crate) line: usize,
    pub(crate) why: String,
}

impl fmt::Display for AclError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.why)
    }
}

impl std::error::Error for AclError {}

/// Which section the lines being read belong to.
enum Section {
    Everyone,
    Anonymous,
    User(Box<str>),
    Client(Box<str>),
}

impl Acl {
    /// Everything allowed except subscribing to what `deny_subscribe` lists (no rules
    /// file).
    pub(crate) fn allow_all(deny_subscribe: &[String]) -> Acl {
        Acl {
            first: deny_rules(deny_subscribe),
            default_allow: true,
            ..Acl::default()
        }
    }

    /// Parses a rules file; `deny_subscribe` comes first, as in [`Acl::allow_all`].
    ///
    /// # Errors
    /// The first line that is not a header, a rule or a comment.
    pub(crate) fn parse(text: &str, deny_subscribe: &[String]) -> Result<Acl, AclError> {
        let mut acl = Acl {
            first: deny_rules(deny_subscribe),
            default_allow: false,
            ..Acl::default()
        };
        let mut section = Section::Everyone;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |why: String| AclError { line, why };
            let text = raw.trim();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = text.split_whitespace().collect();
            let (read, write, filter) = match words.as_slice() {
                ["everyone"] => {
                    section = Section::Everyone;
                    continue;
                }
                ["anonymous"] => {
                    section = Section::Anonymous;
                    continue;
                }
                ["user", name] => {
                    section = Section::User((*name).into());
                    continue;
                }
                ["client", id] => {
                    section = Section::Client((*id).into());
                    continue;
                }
                ["read", f] => (Some(true), None, *f),
                ["write", f] => (None, Some(true), *f),
                ["readwrite", f] => (Some(true), Some(true), *f),
                ["deny", f] => (Some(false), Some(false), *f),
                ["deny", "read", f] => (Some(false), None, *f),
                ["deny", "write", f] => (None, Some(false), *f),
                _ => {
                    return Err(err(format!(
                        "expected `user NAME`, `client ID`, `anonymous`, `everyone` or \
                         `read|write|readwrite|deny [read|write] FILTER`, got {text:?}"
                    )))
                }
            };
            let levels = parse_filter(filter).map_err(err)?;
            let rule = Rule {
                read,
                write,
                levels,
            };
            match &section {
                Section::Everyone => acl.everyone.push(rule),
                Section::Anonymous => acl.anonymous.push(rule),
                Section::User(u) => acl.users.entry(u.clone()).or_default().push(rule),
                Section::Client(c) => acl.clients.entry(c.clone()).or_default().push(rule),
            }
        }
        Ok(acl)
    }

    /// Number of rules.
    pub(crate) fn rule_count(&self) -> usize {
        self.first.len()
            + self.everyone.len()
            + self.anonymous.len()
            + self.users.values().map(Vec::len).sum::<usize>()
            + self.clients.values().map(Vec::len).sum::<usize>()
    }

    /// These rules with the client ids users may use limited to `ids`.
    pub(crate) fn with_client_ids(self, ids: Option<ClientIds>) -> Acl {
        Acl {
            client_ids: ids,
            ..self
        }
    }

    /// May `user` (`None`: anonymous) connect with the client id `id`?
    pub(crate) fn client_id_allowed(&self, user: Option<&str>, id: &str) -> bool {
        self.client_ids
            .as_ref()
            .map_or(true, |ids| ids.allows(user, id))
    }

    /// True when a client with `grant` needs its accesses checked (there are rules
    /// that may refuse it). Asked on every PUBLISH, so it is O(1).
    pub(crate) fn checks(&self, grant: Option<&Grant>) -> bool {
        grant.is_some() || !self.is_open()
    }

    /// True when this allows everything (no rules file, nothing denied): no check is
    /// needed at all (unless a client holds a grant). Asked on every PUBLISH, so it is
    /// O(1).
    pub(crate) fn is_open(&self) -> bool {
        self.default_allow
            && self.first.is_empty()
            && self.everyone.is_empty()
            && self.anonymous.is_empty()
            && self.users.is_empty()
            && self.clients.is_empty()
    }

    /// The rules that apply to `who`, in the order they are looked at.
    fn rules_for<'s>(&'s self, who: Who<'s>) -> impl Iterator<Item = &'s Rule> {
        let client = self.clients.get(who.client).into_iter().flatten();
        let user = match who.user {
            Some(u) => self.users.get(u).map_or(&[][..], Vec::as_slice),
            None => &self.anonymous[..],
        };
        let grant = who.grant.map_or(&[][..], |g| g.rules.as_slice());
        self.first
            .iter()
            .chain(grant)
            .chain(client)
            .chain(user)
            .chain(self.everyone.iter())
    }

    /// What holds for `who` when no rule applies: a client holding a grant is held to it.
    fn default_for(&self, who: Who<'_>) -> bool {
        self.default_allow && who.grant.is_none()
    }

    /// May `who` have `access` to the topic name `topic`?
    pub(crate) fn allows(&self, who: Who<'_>, access: Access, topic: &str) -> bool {
        for rule in self.rules_for(who) {
            if let Some(verdict) = rule.decides(access) {
                if matches(&rule.levels, topic, who) {
                    return verdict;
                }
            }
        }
        self.default_for(who)
    }

    /// May `who` subscribe to `filter` (the filter without any `$share/GROUP/`)?
    pub(crate) fn subscription(&self, who: Who<'_>, filter: &str) -> FilterVerdict {
        let mut partial = false;
        for rule in self.rules_for(who) {
            let Some(verdict) = rule.decides(Access::Read) else {
                continue;
            };
            if covers(&rule.levels, filter, who) {
                return match (verdict, partial) {
                    (false, _) => FilterVerdict::Denied,
                    (true, false) => FilterVerdict::Allowed,
                    (true, true) => FilterVerdict::AllowedChecked,
                };
            }
            if intersects(&rule.levels, filter, who) {
                partial = true;
            }
        }
        match (self.default_for(who), partial) {
            (false, _) => FilterVerdict::Denied,
            (true, false) => FilterVerdict::Allowed,
            (true, true) => FilterVerdict::AllowedChecked,
        }
    }
}

/// `deny read` rules for everyone, one per filter.
fn deny_rules(filters: &[String]) -> Vec<Rule> {
    filters
        .iter()
        .filter_map(|f| parse_filter(f).ok())
        .map(|levels| Rule {
            read: Some(false),
            write: None,
            levels,
        })
        .collect()
}

/// Splits a rule's filter into levels.
fn parse_filter(filter: &str) -> Result<Vec<Level>, String> {
    if filter.is_empty() {
        return Err("empty filter".into());
    }
    let parts: Vec<&str> = filter.split('/').collect();
    let last = parts.len() - 1;
    parts
        .iter()
        .enumerate()
        .map(|(i, p)| match *p {
            "#" if i == last => Ok(Level::Hash),
            "+" => Ok(Level::Plus),
            "%u" => Ok(Level::User),
            "%c" => Ok(Level::Client),
            p if p.contains(['+', '#']) => Err(format!(
                "{filter:?}: a wildcard must be a whole level, and `#` the last"
            )),
            p => Ok(Level::Lit(p.into())),
        })
        .collect()
}

/// A rule level resolved for `who`: `None` when it can match nothing (`%u` of an
/// anonymous client).
enum Resolved<'a> {
    Lit(&'a str),
    Plus,
    Hash,
}

fn resolve<'a>(level: &'a Level, who: Who<'a>) -> Option<Resolved<'a>> {
    Some(match level {
        Level::Lit(s) => Resolved::Lit(s),
        Level::Plus => Resolved::Plus,
        Level::Hash => Resolved::Hash,
        Level::User => Resolved::Lit(who.user?),
        Level::Client => Resolved::Lit(who.client),
    })
}

/// True when a substituted `%u`/`%c` level equals `level`. A value holding a separator
/// or a wildcard character never equals one level.
fn lit_eq(lit: &str, level: &str) -> bool {
    lit == level && !lit.contains(['/', '+', '#'])
}

/// Does the rule filter match the topic name (MQTT matching: a wildcard first level
/// does not match a `$` topic)?
fn matches(rule: &[Level], topic: &str, who: Who<'_>) -> bool {
    let mut levels = topic.split('/');
    for (i, l) in rule.iter().enumerate() {
        let Some(r) = resolve(l, who) else {
            return false;
        };
        let t = levels.next();
        if i == 0 && topic.starts_with('$') && !matches!(r, Resolved::Lit(_)) {
            return false;
        }
        match (r, t) {
            // `a/#` also matches `a`.
            (Resolved::Hash, _) => return true,
            (_, None) => return false,
            (Resolved::Plus, Some(_)) => {}
            (Resolved::Lit(lit), Some(t)) => {
                if !lit_eq(lit, t) {
                    return false;
                }
            }
        }
    }
    levels.next().is_none()
}

/// Does the rule filter match every topic the subscription filter matches?
fn covers(rule: &[Level], filter: &str, who: Who<'_>) -> bool {
    let sub: Vec<&str> = filter.split('/').collect();
    for (i, l) in rule.iter().enumerate() {
        let Some(r) = resolve(l, who) else {
            return false;
        };
        let s = sub.get(i).copied();
        // A wildcard first rule level covers no `$` topic, so nothing under a `$`
        // first level of the subscription.
        if i == 0 && s.is_some_and(|s| s.starts_with('$')) && !matches!(r, Resolved::Lit(_)) {
            return false;
        }
        match (r, s) {
            // The subscription also reaches `$` topics only if its first level is
            // literal: `#` covers `#` (which matches no `$` topic either).
            (Resolved::Hash, _) => return true,
            (_, None) => return false,
            (_, Some("#")) => return false,
            (Resolved::Plus, Some(_)) => {}
            (Resolved::Lit(lit), Some(s)) => {
                if s == "+" || !lit_eq(lit, s) {
                    return false;
                }
            }
        }
    }
    sub.len() == rule.len()
}

/// Is there a topic both filters match?
fn intersects(rule: &[Level], filter: &str, who: Who<'_>) -> bool {
    let sub: Vec<&str> = filter.split('/').collect();
    for (i, l) in rule.iter().enumerate() {
        let Some(r) = resolve(l, who) else {
            return false;
        };
        let s = sub.get(i).copied();
        if i == 0 {
            // A `$` topic is matched only by a literal first level.
            let rule_dollar = matches!(r, Resolved::Lit(lit) if lit.starts_with('$'));
            let sub_dollar = s.is_some_and(|s| s.starts_with('$'));
            let rule_wild = !matches!(r, Resolved::Lit(_));
            let sub_wild = matches!(s, Some("+") | Some("#"));
            if (rule_dollar && sub_wild) || (sub_dollar && rule_wild) {
                return false;
            }
        }
        match (r, s) {
            (Resolved::Hash, _) | (_, Some("#")) => return true,
            (_, None) => return false,
            (Resolved::Plus, Some(_)) | (Resolved::Lit(_), Some("+")) => {}
            (Resolved::Lit(lit), Some(s)) => {
                if !lit_eq(lit, s) {
                    return false;
                }
            }
        }
    }
    // The rule ended: the subscription must end too, or go on with only `#`.
    sub.len() == rule.len() || (sub.len() == rule.len() + 1 && sub[rule.len()] == "#")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALICE: Who<'static> = Who {
        user: Some("alice"),
        client: "dev-1",
        grant: None,
    };
    const ANON: Who<'static> = Who {
        user: None,
        client: "anon-1",
        grant: None,
    };

    fn acl(text: &str) -> Acl {
        Acl::parse(text, &[]).unwrap()
    }

    #[test]
    fn no_rule_is_denied_with_a_file_and_allowed_without() {
        let a = acl("");
        assert!(!a.allows(ALICE, Access::Write, "a"));
        assert_eq!(a.subscription(ALICE, "a"), FilterVerdict::Denied);
        let open = Acl::allow_all(&[]);
        assert!(open.is_open());
        assert!(open.allows(ALICE, Access::Write, "a"));
        assert_eq!(open.subscription(ALICE, "#"), FilterVerdict::Allowed);
    }

    #[test]
    fn rights_speak_of_their_access_only() {
        let a = acl("read r/#\nwrite w/#\nreadwrite rw/#\n");
        assert!(a.allows(ALICE, Access::Read, "r/x"));
        assert!(!a.allows(ALICE, Access::Write, "r/x"));
        assert!(a.allows(ALICE, Access::Write, "w/x"));
        assert!(!a.allows(ALICE, Access::Read, "w/x"));
        assert!(a.allows(ALICE, Access::Read, "rw"));
        assert!(a.allows(ALICE, Access::Write, "rw/x/y"));
    }

    #[test]
    fn sections_client_then_user_then_everyone_first_match_wins() {
        let text =
            "deny write a/#\nuser alice\nwrite a/alice\nclient dev-1\ndeny a/alice\nread a/#\n";
        let a = acl(text);
        // The client section comes first: its deny wins over the user's write.
        assert!(!a.allows(ALICE, Access::Write, "a/alice"));
        // Another client of alice gets the user's write before everyone's deny.
        let other = Who {
            user: Some("alice"),
            client: "dev-2",
            grant: None,
        };
        assert!(a.allows(other, Access::Write, "a/alice"));
        assert!(!a.allows(other, Access::Write, "a/bob"));
        // Within a section, file order: dev-1's `read a/#` comes after its deny.
        assert!(!a.allows(ALICE, Access::Read, "a/alice"));
        assert!(a.allows(ALICE, Access::Read, "a/x"));
    }

    #[test]
    fn anonymous_rules_apply_only_without_a_user_name() {
        let a = acl("anonymous\nread public/#\n");
        assert!(a.allows(ANON, Access::Read, "public/x"));
        assert!(!a.allows(ALICE, Access::Read, "public/x"));
    }

    #[test]
    fn substitutions_are_whole_levels_and_cannot_widen() {
        let a = acl("readwrite dev/%u/%c/#\n");
        assert!(a.allows(ALICE, Access::Write, "dev/alice/dev-1/t"));
        assert!(!a.allows(ALICE, Access::Write, "dev/alice/dev-2/t"));
        // Anonymous: %u matches nothing.
        assert!(!a.allows(ANON, Access::Write, "dev/anon-1/anon-1/t"));
        // A user name with wildcard or separator characters matches nothing.
        for user in ["+", "#", "a/b"] {
            let who = Who {
                user: Some(user),
                client: "c",
                grant: None,
            };
            assert!(!a.allows(who, Access::Write, "dev/+/c/t"));
            assert!(!a.allows(who, Access::Write, "dev/a/b/c/t"));
            assert_eq!(a.subscription(who, "dev/+/c/#"), FilterVerdict::Denied);
        }
        assert_eq!(
            a.subscription(ALICE, "dev/alice/dev-1/#"),
            FilterVerdict::Allowed
        );
        assert_eq!(
            a.subscription(ALICE, "dev/+/dev-1/#"),
            FilterVerdict::Denied
        );
    }

    #[test]
    fn dollar_topics_need_a_literal_first_level() {
        let a = acl("read #\nread $SYS/broker/#\n");
        assert!(!a.allows(ALICE, Access::Read, "$SYS/x"));
        assert!(a.allows(ALICE, Access::Read, "$SYS/broker/uptime"));
        assert_eq!(a.subscription(ALICE, "$SYS/#"), FilterVerdict::Denied);
        assert_eq!(
            a.subscription(ALICE, "$SYS/broker/#"),
            FilterVerdict::Allowed
        );
        assert_eq!(a.subscription(ALICE, "#"), FilterVerdict::Allowed);
    }

    #[test]
    fn a_subscription_partly_denied_is_checked_on_delivery() {
        let a = acl("deny read secret/#\nread #\n");
        assert_eq!(a.subscription(ALICE, "#"), FilterVerdict::AllowedChecked);
        assert_eq!(a.subscription(ALICE, "+/x"), FilterVerdict::AllowedChecked);
        assert_eq!(a.subscription(ALICE, "public/#"), FilterVerdict::Allowed);
        assert_eq!(a.subscription(ALICE, "secret/x"), FilterVerdict::Denied);
        assert!(!a.allows(ALICE, Access::Read, "secret/x"));
        // Wider than the only allowing rule: refused.
        let narrow = acl("read sensors/a/#\n");
        assert_eq!(
            narrow.subscription(ALICE, "sensors/#"),
            FilterVerdict::Denied
        );
        assert_eq!(
            narrow.subscription(ALICE, "sensors/a/+"),
            FilterVerdict::Allowed
        );
    }

    #[test]
    fn deny_subscribe_comes_first_and_speaks_of_reading_only() {
        let deny = vec!["test/nosubscribe".to_owned(), "secret/#".to_owned()];
        let a = Acl::allow_all(&deny);
        assert!(!a.is_open());
        assert_eq!(
            a.subscription(ALICE, "test/nosubscribe"),
            FilterVerdict::Denied
        );
        assert_eq!(a.subscription(ALICE, "secret/+"), FilterVerdict::Denied);
        assert_eq!(a.subscription(ALICE, "#"), FilterVerdict::AllowedChecked);
        assert!(a.allows(ALICE, Access::Write, "secret/x"));
        let f = Acl::parse("readwrite #\n", &deny).unwrap();
        assert_eq!(f.subscription(ALICE, "secret/a"), FilterVerdict::Denied);
    }

    #[test]
    fn a_grant_comes_before_the_file_and_denies_the_rest() {
        let g = Grant::new(&["cmd/%u/#"], &["sensors/%c/#"], &["both/#"]).unwrap();
        assert_eq!(g.len(), 3);
        let who = Who {
            grant: Some(&g),
            ..ALICE
        };
        for a in [Acl::allow_all(&[]), acl("")] {
            assert!(a.checks(Some(&g)));
            assert!(a.allows(who, Access::Write, "sensors/dev-1/t"));
            assert!(!a.allows(who, Access::Write, "sensors/dev-2/t"));
            assert!(!a.allows(who, Access::Read, "sensors/dev-1/t"));
            assert!(a.allows(who, Access::Read, "cmd/alice/x"));
            assert!(!a.allows(who, Access::Write, "cmd/alice/x"));
            assert!(a.allows(who, Access::Read, "both/x") && a.allows(who, Access::Write, "both"));
            assert!(!a.allows(who, Access::Write, "other"));
            assert_eq!(a.subscription(who, "cmd/alice/#"), FilterVerdict::Allowed);
            assert_eq!(a.subscription(who, "cmd/#"), FilterVerdict::Denied);
            assert_eq!(a.subscription(who, "#"), FilterVerdict::Denied);
        }
        // The file's rules still apply after the grant's; its denies do not take back
        // what the grant allows.
        let f = acl("deny write sensors/#\nread public/#\n");
        assert!(f.allows(who, Access::Write, "sensors/dev-1/t"));
        assert!(f.allows(who, Access::Read, "public/x"));
        assert!(!f.allows(ALICE, Access::Write, "sensors/dev-1/t"));
        // `mqtt.deny_subscribe` comes first, even before a grant.
        let deny = Acl::allow_all(&["both/secret".to_owned()]);
        assert_eq!(deny.subscription(who, "both/secret"), FilterVerdict::Denied);
        assert_eq!(
            deny.subscription(who, "both/#"),
            FilterVerdict::AllowedChecked
        );
        assert!(Grant::new(&["a/#/b"], &[], &[]).is_err());
        assert!(!Acl::allow_all(&[]).checks(None));
    }

    #[test]
    fn client_ids_are_limited_only_when_patterns_are_set() {
        let a = Acl::allow_all(&[]);
        assert!(a.client_id_allowed(Some("u"), "anything"));
        let ids = ClientIds::parse(&["%u-*".to_owned()]).unwrap();
        let a = a.with_client_ids(Some(ids));
        assert!(a.client_id_allowed(Some("u"), "u-1"));
        assert!(!a.client_id_allowed(Some("u"), "v-1"));
        assert!(!a.client_id_allowed(None, "u-1"));
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        for (text, line) in [
            ("read a/#\nwrite\n", 2),
            ("grant a\n", 1),
            ("\n\nread a/#/b\n", 3),
            ("read a+/b\n", 1),
            ("user\n", 1),
        ] {
            assert_eq!(Acl::parse(text, &[]).unwrap_err().line, line, "{text:?}");
        }
    }

    /// Topics and filters over a small alphabet, so that they meet often.
    fn topic() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![Just("a"), Just("b"), Just("$s"), Just("alice")],
            1..4,
        )
        .prop_map(|v| v.join("/"))
    }

    fn filter() -> impl Strategy<Value = String> {
        (
            proptest::collection::vec(
                prop_oneof![
                    Just("a"),
                    Just("b"),
                    Just("$s"),
                    Just("+"),
                    Just("%u"),
                    Just("alice")
                ],
                0..4,
            ),
            any::<bool>(),
        )
            .prop_map(|(mut v, hash)| {
                if hash || v.is_empty() {
                    v.push("#");
                }
                v.join("/")
            })
    }

    /// Every topic of up to 4 levels over the alphabet.
    fn all_topics() -> Vec<String> {
        let alpha = ["a", "b", "$s", "alice", "z"];
        let mut out: Vec<String> = Vec::new();
        let mut layer: Vec<String> = alpha.iter().map(|s| (*s).to_owned()).collect();
        for _ in 0..4 {
            out.extend(layer.iter().cloned());
            layer = layer
                .iter()
                .flat_map(|t| alpha.iter().map(move |a| format!("{t}/{a}")))
                .collect();
        }
        out
    }

    proptest! {
        /// A rule's matching agrees with MQTT matching once `%u` is substituted.
        #[test]
        fn matching_agrees_with_mqtt(rule in filter(), t in topic()) {
            let levels = parse_filter(&rule).unwrap();
            let plain = rule.replace("%u", "alice");
            prop_assert_eq!(matches(&levels, &t, ALICE), mote_codec::topic::matches(&plain, &t));
        }

        /// `covers` and `intersects` agree with brute force over every short topic.
        #[test]
        fn covers_and_intersects_agree_with_brute_force(rule in filter(), sub in filter()) {
            prop_assume!(!sub.contains("%u"));
            let levels = parse_filter(&rule).unwrap();
            let topics = all_topics();
            let in_sub: Vec<&String> = topics
                .iter()
                .filter(|t| mote_codec::topic::matches(&sub, t))
                .collect();
            let both = in_sub.iter().any(|t| matches(&levels, t, ALICE));
            let all = in_sub.iter().all(|t| matches(&levels, t, ALICE));
            prop_assert_eq!(intersects(&levels, &sub, ALICE), both, "intersects {} {}", rule, sub);
            // Covering is checked on topics of up to 4 levels, which a `#` rule or
            // subscription reaches beyond: brute force can only refute it.
            if covers(&levels, &sub, ALICE) {
                prop_assert!(all, "covers {} {}", rule, sub);
            }
            if all && sub.split('/').count() < 4 && !sub.ends_with('#') {
                prop_assert!(covers(&levels, &sub, ALICE), "should cover {} {}", rule, sub);
            }
        }
    }
}
