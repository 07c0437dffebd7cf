//! What the runtime's authentication hands the core with a CONNECT ([`Login`]), which
//! client ids a user may use ([`ClientIds`], `auth.client_id_patterns`), and the limits
//! a user has instead of `[mqtt]`'s ([`LimitsByUser`], `auth.limits`).
//!
//! The core never checks a credential: the runtime did (`runtime/auth.rs`), off the
//! core's lock. The core keeps what the credential said for as long as the connection
//! lives: the user name, the rules a token carries (looked at before the rules file's,
//! see [`acl`](super::acl)), and when the credential expires (the connection is closed
//! then, by a timer of the core, never by a scan).
//!
//! # Client id patterns
//!
//! A pattern is literal text in which `%u` stands for the user name and `*` for any run
//! of characters (the empty one too). `%u` is replaced by the user name as it is, never
//! read as a pattern: a user named `a*` matches the id `a*-1` of `%u-*`, not `ab-1`. A
//! client without a user name matches no pattern that holds `%u`. Any other `%` is an
//! error, so a pattern means one thing.
//!
//! | patterns | user | client id | allowed |
//! | --- | --- | --- | --- |
//! | `%u-*` | `dev1` | `dev1-a`, `dev1-` | yes |
//! | `%u-*` | `dev1` | `dev1`, `dev10-a`, `dev2-a` | no |
//! | `%u`, `%u/*` | `dev1` | `dev1`, `dev1/x` | yes |
//! | `%u-*` | (none) | anything | no |
//! | `http-*` | anyone | `http-publish-1` | yes |
//!
//! # Per-user limits
//!
//! `[[auth.limits]]` entries list user names, `*` standing for any run of characters
//! (the rest literal; no `%u` here). The first entry listing the user decides, once, at
//! CONNECT: its [`Limits`] travel in the [`Login`] (an `Arc` shared by every client of
//! the entry) and stay with the session and the connection. A limit the entry leaves
//! out, a user no entry lists, and an anonymous client: `[mqtt]`'s, and no `Limits` at
//! all (`None`), so a broker without entries pays nothing per packet.
//!
//! | entries | user | limits |
//! | --- | --- | --- |
//! | `["backend"]`, then `["*"]` | `backend` | the first entry's |
//! | `["backend"]`, then `["*"]` | `dev1` | the second entry's |
//! | `["ingest-*"]` | `ingest-7`, `ingest-` | the entry's |
//! | `["ingest-*"]` | `ingest`, `x-ingest-7` | `[mqtt]`'s |
//! | `["*"]` | (none) | `[mqtt]`'s |

use std::sync::Arc;
use std::time::Instant;

use super::acl::Grant;
use super::session::QueueLimits;
use crate::config::{MqttConfig, UserLimits};

/// Who the runtime authenticated a CONNECT as, and what its credential says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Login {
    /// The user name (`None`: anonymous).
    pub(crate) user: Option<Arc<str>>,
    /// Rules the credential carries (a token's `acl` claim): looked at before the rules
    /// file's, and what none allows is denied.
    pub(crate) grant: Option<Arc<Grant>>,
    /// When the credential stops being valid (a token's `exp`): the connection is closed
    /// then (MQTT 5: DISCONNECT 0xA0 Maximum connect time). `None`: never.
    pub(crate) expires: Option<Instant>,
    /// The user's own limits (`auth.limits`); `None`: `[mqtt]`'s.
    pub(crate) limits: Option<Arc<Limits>>,
}

impl Login {
    /// The PUBLISH rates its connection is held to, messages and bytes per second
    /// (`0`: no limit): its own limits', else `[mqtt]`'s.
    pub(crate) fn publish_rates(&self, cfg: &MqttConfig) -> (u32, u64) {
        let l = self.limits.as_deref();
        (
            l.and_then(|l| l.max_publish_rate)
                .unwrap_or(cfg.max_publish_rate),
            l.and_then(|l| l.max_publish_bytes_rate)
                .unwrap_or(cfg.max_publish_bytes_rate),
        )
    }
}

/// A user's own per-client limits (one `[[auth.limits]]` entry): each `None` is
/// `[mqtt]`'s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    /// PUBLISH packets per second (`0`: no limit); enforced by the connection.
    pub(crate) max_publish_rate: Option<u32>,
    /// PUBLISH bytes per second (`0`: no limit); enforced by the connection.
    pub(crate) max_publish_bytes_rate: Option<u64>,
    /// Most subscriptions the session holds.
    pub(crate) max_subscriptions: Option<usize>,
    /// Most deliveries the session queues.
    pub(crate) max_queued_messages: Option<usize>,
    /// Most bytes the session queues.
    pub(crate) max_queued_bytes: Option<usize>,
}

impl Limits {
    /// `base` (`[mqtt]`'s queue limits) with the ones these set.
    pub(crate) fn queue(&self, base: QueueLimits) -> QueueLimits {
        QueueLimits {
            max_messages: self.max_queued_messages.unwrap_or(base.max_messages),
            max_bytes: self.max_queued_bytes.unwrap_or(base.max_bytes),
            ..base
        }
    }
}

impl From<&UserLimits> for Limits {
    fn from(c: &UserLimits) -> Limits {
        Limits {
            max_publish_rate: c.max_publish_rate,
            max_publish_bytes_rate: c.max_publish_bytes_rate,
            max_subscriptions: c.max_subscriptions_per_client,
            max_queued_messages: c.max_queued_messages,
            max_queued_bytes: c.max_queued_bytes,
        }
    }
}

/// Which users have limits of their own (`auth.limits`, module documentation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LimitsByUser {
    /// In order: the user name patterns of an entry (each of `Lit` and `Star` parts),
    /// and its limits.
    entries: Vec<(Vec<Vec<Part>>, Arc<Limits>)>,
}

impl LimitsByUser {
    /// The entries of `auth.limits`.
    ///
    /// # Errors
    /// An entry without user names, or an empty name.
    pub(crate) fn new(entries: &[UserLimits]) -> Result<LimitsByUser, String> {
        let entries = entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                if e.users.is_empty() {
                    return Err(format!("auth.limits[{i}].users is empty"));
                }
                let users = e
                    .users
                    .iter()
                    .map(|u| parse_user_pattern(u))
                    .collect::<Result<_, _>>()
                    .map_err(|why| format!("auth.limits[{i}].users: {why}"))?;
                Ok((users, Arc::new(Limits::from(e))))
            })
            .collect::<Result<_, _>>()?;
        Ok(LimitsByUser { entries })
    }

    /// The limits of `user` (`None`: anonymous): the first entry that lists it, or
    /// `None` for `[mqtt]`'s. Called once per CONNECT, never per packet.
    pub(crate) fn of(&self, user: Option<&str>) -> Option<Arc<Limits>> {
        let user = user?;
        self.entries.iter().find_map(|(patterns, limits)| {
            patterns
                .iter()
                .any(|p| {
                    let pieces: Vec<Piece<'_>> = p
                        .iter()
                        .map(|part| match part {
                            Part::Lit(s) => Piece::Lit(s),
                            Part::Star => Piece::Star,
                            // Not in a user name pattern (`parse_user_pattern`).
                            Part::User => Piece::Lit("%u"),
                        })
                        .collect();
                    glob(&pieces, user)
                })
                .then(|| limits.clone())
        })
    }
}

/// A user name pattern of `auth.limits`: literal text and `*`.
fn parse_user_pattern(p: &str) -> Result<Vec<Part>, String> {
    if p.is_empty() {
        return Err("empty user name".into());
    }
    let mut parts = Vec::new();
    for (i, lit) in p.split('*').enumerate() {
        // `**` means what `*` does.
        if i > 0 && parts.last() != Some(&Part::Star) {
            parts.push(Part::Star);
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit.into()));
        }
    }
    Ok(parts)
}

impl From<Option<Arc<str>>> for Login {
    /// A login by user name only (a password, a certificate, or no credential).
    fn from(user: Option<Arc<str>>) -> Login {
        Login {
            user,
            ..Login::default()
        }
    }
}

/// One piece of a client id pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// Literal text.
    Lit(Box<str>),
    /// `%u`.
    User,
    /// `*`.
    Star,
}

/// The client ids users may use: any of a list of patterns (module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientIds {
    patterns: Vec<Vec<Part>>,
}

impl ClientIds {
    /// Parses patterns (at least one).
    ///
    /// # Errors
    /// An empty list, an empty pattern, or a `%` not followed by `u`.
    pub(crate) fn parse(patterns: &[String]) -> Result<ClientIds, String> {
        if patterns.is_empty() {
            return Err("no pattern".into());
        }
        let patterns = patterns
            .iter()
            .map(|p| parse_pattern(p))
            .collect::<Result<_, _>>()?;
        Ok(ClientIds { patterns })
    }

    /// May `user` (`None`: anonymous) use the client id `id`?
    pub(crate) fn allows(&self, user: Option<&str>, id: &str) -> bool {
        self.patterns.iter().any(|p| {
            // Substitute `%u` first: the user name is literal text, never a pattern.
            let mut parts: Vec<Piece<'_>> = Vec::with_capacity(p.len());
            for part in p {
                parts.push(match part {
                    Part::Lit(s) => Piece::Lit(s),
                    Part::User => match user {
                        Some(u) => Piece::Lit(u),
                        None => return false,
                    },
                    Part::Star => Piece::Star,
                });
            }
            glob(&parts, id)
        })
    }
}

fn parse_pattern(p: &str) -> Result<Vec<Part>, String> {
    if p.is_empty() {
        return Err("empty pattern".into());
    }
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        let special = match c {
            '*' => Part::Star,
            '%' => match chars.next() {
                Some('u') => Part::User,
                _ => return Err(format!("{p:?}: `%` must be followed by `u` (`%u`)")),
            },
            c => {
                lit.push(c);
                continue;
            }
        };
        if !lit.is_empty() {
            parts.push(Part::Lit(std::mem::take(&mut lit).into()));
        }
        // `**` means what `*` does.
        if !(special == Part::Star && parts.last() == Some(&Part::Star)) {
            parts.push(special);
        }
    }
    if !lit.is_empty() {
        parts.push(Part::Lit(lit.into()));
    }
    Ok(parts)
}

/// A pattern piece once `%u` is substituted.
#[derive(Debug, Clone, Copy)]
enum Piece<'a> {
    Lit(&'a str),
    Star,
}

/// Does `id` match the pieces? Greedy with one backtrack point (the last `*`), which is
/// enough for `*` alone and keeps it O(pieces × id length).
fn glob(pieces: &[Piece<'_>], id: &str) -> bool {
    let mut p = 0;
    let mut at = 0;
    // Where to resume after the last `*`: (piece after it, position in `id` it took).
    let mut resume: Option<(usize, usize)> = None;
    loop {
        match pieces.get(p) {
            Some(Piece::Star) => {
                p += 1;
                resume = Some((p, at));
                continue;
            }
            Some(Piece::Lit(lit)) if id[at..].starts_with(lit) => {
                p += 1;
                at += lit.len();
                continue;
            }
            None if at == id.len() => return true,
            // A trailing `*` takes the rest.
            None if matches!(pieces.last(), Some(Piece::Star)) => return true,
            _ => {}
        }
        // No match here: let the last `*` take one more character.
        let Some((after, took)) = resume else {
            return false;
        };
        let Some(c) = id[took..].chars().next() else {
            return false;
        };
        let next = took + c.len_utf8();
        resume = Some((after, next));
        p = after;
        at = next;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(p: &[&str]) -> ClientIds {
        ClientIds::parse(&p.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn the_table_of_the_module_documentation() {
        let dash = ids(&["%u-*"]);
        for id in ["dev1-a", "dev1-", "dev1-a-b"] {
            assert!(dash.allows(Some("dev1"), id), "{id}");
        }
        for id in ["dev1", "dev10-a", "dev2-a", "xdev1-a", ""] {
            assert!(!dash.allows(Some("dev1"), id), "{id}");
        }
        let two = ids(&["%u", "%u/*"]);
        assert!(two.allows(Some("dev1"), "dev1"));
        assert!(two.allows(Some("dev1"), "dev1/x"));
        assert!(!two.allows(Some("dev1"), "dev1x"));
        assert!(!dash.allows(None, "dev1-a"));
        assert!(!dash.allows(None, "-a"));
        let http = ids(&["http-*"]);
        assert!(http.allows(None, "http-publish-1"));
        assert!(http.allows(Some("x"), "http-"));
    }

    #[test]
    fn a_user_name_is_literal_text() {
        let dash = ids(&["%u-*"]);
        assert!(dash.allows(Some("a*"), "a*-1"));
        assert!(!dash.allows(Some("a*"), "ab-1"));
        assert!(!dash.allows(Some("*"), "x-1"));
    }

    #[test]
    fn stars_anywhere() {
        let p = ids(&["*-%u-*"]);
        assert!(p.allows(Some("u"), "x-u-y"));
        assert!(p.allows(Some("u"), "-u-"));
        assert!(p.allows(Some("u"), "a-b-u-c"));
        assert!(!p.allows(Some("u"), "x-v-y"));
        let any = ids(&["*"]);
        assert!(any.allows(None, ""));
        assert!(any.allows(None, "é"));
        let end = ids(&["*ab"]);
        assert!(end.allows(None, "aab"));
        assert!(end.allows(None, "abab"));
        assert!(!end.allows(None, "aba"));
        assert!(ids(&["a**b"]).allows(None, "axyb"));
    }

    fn limits(entries: &[(&[&str], u32)]) -> LimitsByUser {
        let entries: Vec<UserLimits> = entries
            .iter()
            .map(|(users, rate)| UserLimits {
                users: users.iter().map(|u| (*u).to_owned()).collect(),
                max_publish_rate: Some(*rate),
                ..UserLimits::default()
            })
            .collect();
        LimitsByUser::new(&entries).unwrap()
    }

    fn rate(t: &LimitsByUser, user: Option<&str>) -> Option<u32> {
        t.of(user).and_then(|l| l.max_publish_rate)
    }

    #[test]
    fn limits_the_table_of_the_module_documentation() {
        let t = limits(&[(&["backend"], 1), (&["*"], 2)]);
        assert_eq!(rate(&t, Some("backend")), Some(1));
        assert_eq!(rate(&t, Some("dev1")), Some(2));
        assert_eq!(rate(&t, None), None, "anonymous: [mqtt]'s");
        let t = limits(&[(&["ingest-*"], 3)]);
        assert_eq!(rate(&t, Some("ingest-7")), Some(3));
        assert_eq!(rate(&t, Some("ingest-")), Some(3));
        assert_eq!(rate(&t, Some("ingest")), None);
        assert_eq!(rate(&t, Some("x-ingest-7")), None);
    }

    #[test]
    fn limits_first_matching_entry_wins_and_names_are_literal() {
        let t = limits(&[(&["a", "b*"], 1), (&["b1", "%u"], 2), (&["a*b"], 3)]);
        assert_eq!(rate(&t, Some("b1")), Some(1));
        assert_eq!(rate(&t, Some("%u")), Some(2));
        assert_eq!(rate(&t, Some("axxb")), Some(3));
        assert_eq!(rate(&t, Some("a")), Some(1));
        assert_eq!(rate(&t, Some("c")), None);
        // Entries share one `Arc` among their users.
        assert!(Arc::ptr_eq(
            &t.of(Some("a")).unwrap(),
            &t.of(Some("b2")).unwrap()
        ));
        assert!(LimitsByUser::default().of(Some("a")).is_none());
        assert!(LimitsByUser::new(&[UserLimits::default()]).is_err());
    }

    #[test]
    fn limits_fall_back_to_mqtt_field_by_field() {
        let cfg = MqttConfig {
            max_publish_rate: 10,
            max_publish_bytes_rate: 1000,
            ..MqttConfig::default()
        };
        let base = Login::from(Some(Arc::from("u")));
        assert_eq!(base.publish_rates(&cfg), (10, 1000));
        let own = Login {
            limits: Some(Arc::new(Limits {
                max_publish_rate: Some(0),
                max_queued_messages: Some(5),
                ..Limits::default()
            })),
            ..base
        };
        assert_eq!(own.publish_rates(&cfg), (0, 1000));
        let q = QueueLimits {
            max_messages: 100,
            max_bytes: 200,
            max_inflight: 7,
        };
        let got = own.limits.as_ref().unwrap().queue(q);
        assert_eq!(
            (got.max_messages, got.max_bytes, got.max_inflight),
            (5, 200, 7)
        );
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(ClientIds::parse(&[]).is_err());
        for p in ["", "%", "%c-*", "a%"] {
            assert!(ClientIds::parse(&[p.to_owned()]).is_err(), "{p:?}");
        }
    }

    /// The same match by brute force: every way to split `id` among the pieces.
    fn brute(pieces: &[Piece<'_>], id: &str) -> bool {
        match pieces.split_first() {
            None => id.is_empty(),
            Some((Piece::Lit(l), rest)) => id.strip_prefix(l).is_some_and(|r| brute(rest, r)),
            Some((Piece::Star, rest)) => id
                .char_indices()
                .map(|(i, _)| i)
                .chain([id.len()])
                .any(|i| brute(rest, &id[i..])),
        }
    }

    proptest! {
        #[test]
        fn glob_agrees_with_brute_force(
            pattern in proptest::collection::vec(
                prop_oneof![Just("a"), Just("b"), Just("ab"), Just("*")], 0..5),
            id in "[ab]{0,6}",
        ) {
            let pieces: Vec<Piece<'_>> = pattern
                .iter()
                .map(|p| if *p == "*" { Piece::Star } else { Piece::Lit(p) })
                .collect();
            prop_assert_eq!(glob(&pieces, &id), brute(&pieces, &id), "{:?} {}", pattern, id);
        }
    }
}
