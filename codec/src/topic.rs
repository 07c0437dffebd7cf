//! Topic names and topic filters (MQTT 3.1.1 §4.7, MQTT 5 §4.7).
//!
//! - A topic name is non-empty and holds neither `+` nor `#`.
//! - A filter is non-empty; `#` stands only as the whole last level, `+` only as a whole
//!   level. `sport/#` also matches `sport`; `+` matches an empty level.
//! - Topics starting with `$` are not matched by a filter starting with a wildcard.

/// True when `name` is a valid topic name to publish to.
pub fn is_valid_name(name: &str) -> bool {
    // A fold without an early exit: vectorised where there are vectors.
    let wild = name
        .bytes()
        .fold(false, |w, b| w | (b == b'+') | (b == b'#'));
    !name.is_empty() && !wild
}

/// True when `filter` is a syntactically valid topic filter.
pub fn is_valid_filter(filter: &str) -> bool {
    // Byte by byte (no `split`, which is larger code): a wildcard must fill its level,
    // and `#` must also be the last character.
    let b = filter.as_bytes();
    if b.is_empty() {
        return false;
    }
    for (i, &c) in b.iter().enumerate() {
        if c == b'+' || c == b'#' {
            let starts = i == 0 || b.get(i - 1) == Some(&b'/');
            let next = b.get(i + 1);
            if !starts || next.is_some_and(|&n| n != b'/') || (c == b'#' && next.is_some()) {
                return false;
            }
        }
    }
    true
}

/// True when `filter` holds a wildcard level.
pub fn has_wildcard(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

/// Splits `$share/{group}/{filter}` into its group and filter; `None` when `filter` is
/// not a shared subscription, `Some(Err(()))` when it is one but malformed (empty group,
/// wildcards in the group, or no filter).
pub fn split_shared(filter: &str) -> Option<Result<(&str, &str), ()>> {
    let rest = filter.strip_prefix("$share/")?;
    Some(match rest.split_once('/') {
        Some((group, inner))
            if !group.is_empty() && !has_wildcard(group) && is_valid_filter(inner) =>
        {
            Ok((group, inner))
        }
        _ => Err(()),
    })
}

/// True when the topic name `topic` matches the (valid) filter `filter`.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_validated() {
        for ok in [
            "#",
            "+",
            "a/#",
            "a/+/b",
            "+/+",
            "/",
            "//",
            "a//#",
            "$SYS/#",
            "$share/g/a",
        ] {
            assert!(is_valid_filter(ok), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "#/a", "a+", "a/b+/c", "++", "a/##"] {
            assert!(!is_valid_filter(bad), "{bad}");
        }
    }

    /// The byte loop agrees with the level-by-level definition on every string of up
    /// to 7 characters over `a / + #`.
    #[test]
    fn filter_check_matches_the_level_definition() {
        fn by_levels(filter: &str) -> bool {
            let mut levels = filter.split('/').peekable();
            !filter.is_empty()
                && core::iter::from_fn(|| levels.next().map(|l| (l, levels.peek().is_none()))).all(
                    |(level, last)| match level {
                        "#" => last,
                        "+" => true,
                        l => !l.contains(['+', '#']),
                    },
                )
        }
        let mut buf = [0u8; 7];
        for len in 0..=buf.len() {
            for mut n in 0..4usize.pow(len as u32) {
                for b in buf.iter_mut().take(len) {
                    *b = b"a/+#"[n % 4];
                    n /= 4;
                }
                let f = core::str::from_utf8(&buf[..len]).expect("ASCII");
                assert_eq!(is_valid_filter(f), by_levels(f), "{f}");
            }
        }
    }

    #[test]
    fn names_validated() {
        assert!(is_valid_name("a/b"));
        assert!(is_valid_name("/"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a/+"));
        assert!(!is_valid_name("#"));
    }

    #[test]
    fn matching_rules() {
        let rows = [
            ("sport/#", "sport", true),
            ("sport/#", "sport/a/b", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("+", "", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("a/+", "a/b/c", false),
            ("a/b", "a/b", true),
        ];
        for (f, t, m) in rows {
            assert_eq!(matches(f, t), m, "{f} vs {t}");
        }
    }

    #[test]
    fn shared_split() {
        assert_eq!(split_shared("$share/g/a/#"), Some(Ok(("g", "a/#"))));
        assert_eq!(split_shared("$share//a"), Some(Err(())));
        assert_eq!(split_shared("$share/g"), Some(Err(())));
        assert_eq!(split_shared("$share/g+/a"), Some(Err(())));
        assert_eq!(split_shared("a/b"), None);
    }
}
