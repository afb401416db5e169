//! Validation and normalization of client input, at the edge. Every function names the field it
//! checks in its error, so that the client learns what to fix; none of them panics.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{Error, Result};

/// Input limits; the server fills them from configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest memory or message content, in bytes.
    pub max_content_bytes: usize,
    /// Most ids in one Forget.
    pub max_batch_ids: usize,
    /// Most messages in one Ingest.
    pub max_batch_messages: usize,
    /// Largest page of ListMemories.
    pub max_page_size: usize,
    /// Largest query text, in bytes.
    pub max_query_bytes: usize,
    /// Most items Recall returns.
    pub max_k: usize,
    /// Largest token budget for packing.
    pub max_token_budget: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_content_bytes: 16 * 1024,
            max_batch_ids: 1000,
            max_batch_messages: 100,
            max_page_size: 500,
            max_query_bytes: 4096,
            max_k: 100,
            max_token_budget: 32_000,
        }
    }
}

/// Longest user, session or subject identifier, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Longest namespace, in bytes.
pub const MAX_NAMESPACE_BYTES: usize = 64;
/// Longest slot, in bytes.
pub const MAX_SLOT_BYTES: usize = 128;
/// Most tags on a memory.
pub const MAX_TAGS: usize = 32;
/// Longest tag, in bytes.
pub const MAX_TAG_BYTES: usize = 64;
/// Longest free-text note (reasons), in bytes.
pub const MAX_REASON_BYTES: usize = 512;
/// The namespace used when a request names none.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Default page size of list calls.
pub const DEFAULT_PAGE_SIZE: usize = 50;

/// Rejects text Postgres cannot store (NUL) and other control characters except tab and newlines.
fn check_chars(field: &str, s: &str) -> Result<()> {
    match s
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        Some(c) => Err(Error::invalid(
            field,
            format!("contains the control character U+{:04X}", c as u32),
        )),
        None => Ok(()),
    }
}

/// A required identifier such as `user_id` or `session_id`: non-empty, at most 256 bytes, no
/// control characters, no leading or trailing white space.
pub fn required_id(field: &str, s: &str) -> Result<String> {
    if s.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    if s.len() > MAX_ID_BYTES {
        return Err(Error::invalid(
            field,
            format!("is {} bytes; the limit is {MAX_ID_BYTES}", s.len()),
        ));
    }
    if s.trim() != s {
        return Err(Error::invalid(field, "has leading or trailing white space"));
    }
    check_chars(field, s)?;
    Ok(s.to_owned())
}

/// A namespace: empty means `default`; otherwise 1..64 characters of ASCII letters, digits,
/// `-`, `_`, `.` and `:`.
pub fn namespace(field: &str, s: &str) -> Result<String> {
    if s.is_empty() {
        return Ok(DEFAULT_NAMESPACE.to_owned());
    }
    if s.len() > MAX_NAMESPACE_BYTES {
        return Err(Error::invalid(
            field,
            format!("is {} bytes; the limit is {MAX_NAMESPACE_BYTES}", s.len()),
        ));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
    {
        return Err(Error::invalid(
            field,
            "may contain only ASCII letters, digits, '-', '_', '.' and ':'",
        ));
    }
    Ok(s.to_owned())
}

/// A list of namespaces: empty means `["default"]`; duplicates removed, sorted.
pub fn namespaces(field: &str, list: &[String]) -> Result<Vec<String>> {
    if list.is_empty() {
        return Ok(vec![DEFAULT_NAMESPACE.to_owned()]);
    }
    if list.len() > 32 {
        return Err(Error::invalid(field, "names more than 32 namespaces"));
    }
    let mut out = list
        .iter()
        .enumerate()
        .map(|(i, n)| {
            if n.is_empty() {
                Err(Error::invalid(format!("{field}[{i}]"), "is empty"))
            } else {
                namespace(&format!("{field}[{i}]"), n)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

/// Required content: not blank, at most `max_bytes`, no control characters.
pub fn content(field: &str, s: &str, max_bytes: usize) -> Result<String> {
    if s.trim().is_empty() {
        return Err(Error::invalid(field, "is required and must not be blank"));
    }
    if s.len() > max_bytes {
        return Err(Error::invalid(
            field,
            format!("is {} bytes; the limit is {max_bytes}", s.len()),
        ));
    }
    check_chars(field, s)?;
    Ok(s.trim().to_owned())
}

/// Optional short text (subject, reason, names): blank means absent.
pub fn optional_text(field: &str, s: Option<&str>, max_bytes: usize) -> Result<Option<String>> {
    let Some(s) = s.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    if s.len() > max_bytes {
        return Err(Error::invalid(
            field,
            format!("is {} bytes; the limit is {max_bytes}", s.len()),
        ));
    }
    check_chars(field, s)?;
    Ok(Some(s.to_owned()))
}

/// Whether `c` may stand in a slot segment: a letter or digit of any script, `_`, or a symbol
/// such as an emoji — not white space, a control character, `.` (the separator) nor ASCII
/// punctuation.
pub fn slot_char(c: char) -> bool {
    c == '_' || !(c.is_whitespace() || c.is_control() || c.is_ascii_punctuation())
}

/// Text in the form slots compare: NFKC-normalized (so that full-width "ＡＢ" and "AB", or a
/// composed and a decomposed "é", are one key) and lowercased.
pub fn slot_form(s: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    s.nfkc().collect::<String>().to_lowercase()
}

/// A slot, normalized: NFKC, lowercase, spaces and `-` become `_`; then it must read
/// `subject.attribute` (two or more dot-separated segments of letters and digits of any script,
/// `_`, or symbols such as emoji), at most [`MAX_SLOT_BYTES`] bytes.
pub fn slot(field: &str, s: &str) -> Result<String> {
    let normalized: String = slot_form(s.trim())
        .chars()
        .map(|c| match c {
            ' ' | '-' => '_',
            c => c,
        })
        .collect();
    if normalized.is_empty() {
        return Err(Error::invalid(
            field,
            "is empty; leave it unset for no slot",
        ));
    }
    if normalized.len() > MAX_SLOT_BYTES {
        return Err(Error::invalid(
            field,
            format!(
                "is {} bytes; the limit is {MAX_SLOT_BYTES}",
                normalized.len()
            ),
        ));
    }
    let parts: Vec<&str> = normalized.split('.').collect();
    let well_formed = parts.len() >= 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(slot_char));
    if !well_formed {
        return Err(Error::invalid(
            field,
            format!(
                "'{s}' is not a `subject.attribute` key such as `user.home_city` \
                 (letters and digits of any script, '_', dot-separated)"
            ),
        ));
    }
    Ok(normalized)
}

/// Tags: trimmed, lowercase, unique, sorted; at most 32 of at most 64 bytes each.
pub fn tags(field: &str, list: &[String]) -> Result<Vec<String>> {
    if list.len() > MAX_TAGS {
        return Err(Error::invalid(
            field,
            format!("has {} tags; the limit is {MAX_TAGS}", list.len()),
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let t = t.trim().to_lowercase();
        if t.is_empty() {
            return Err(Error::invalid(f, "is empty"));
        }
        if t.len() > MAX_TAG_BYTES {
            return Err(Error::invalid(
                f,
                format!("is {} bytes; the limit is {MAX_TAG_BYTES}", t.len()),
            ));
        }
        check_chars(&f, &t)?;
        out.push(t);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// A score in 0..=1.
pub fn unit_interval(field: &str, v: f32) -> Result<f32> {
    if v.is_finite() && (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(Error::invalid(
            field,
            format!("is {v}; it must be between 0 and 1"),
        ))
    }
}

/// A UUID in canonical text form.
pub fn uuid(field: &str, s: &str) -> Result<Uuid> {
    if s.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    Uuid::parse_str(s)
        .map_err(|_| Error::invalid(field, format!("'{}' is not a UUID", truncate(s, 64))))
}

/// An expiry time, which must lie in the future.
pub fn future_time(field: &str, t: DateTime<Utc>, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    if t <= now {
        return Err(Error::invalid(
            field,
            format!("{} is not in the future", t.to_rfc3339()),
        ));
    }
    Ok(t)
}

/// A page size: 0 means the default; negative or above `max` is an error.
pub fn page_size(field: &str, v: i32, max: usize) -> Result<usize> {
    let v = usize::try_from(v)
        .map_err(|_| Error::invalid(field, format!("is {v}; it must not be negative")))?;
    count_or_default(field, v, DEFAULT_PAGE_SIZE, max)
}

/// A count where 0 means `default`; above `max` is an error.
pub fn count_or_default(field: &str, v: usize, default: usize, max: usize) -> Result<usize> {
    match v {
        0 => Ok(default.min(max)),
        n if n > max => Err(Error::invalid(field, format!("is {n}; the limit is {max}"))),
        n => Ok(n),
    }
}

/// The key under which two contents count as the same statement: lowercase, white space
/// collapsed, surrounding quotes and trailing sentence punctuation removed.
pub fn content_key(content: &str) -> String {
    let collapsed = content
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    collapsed
        .trim_matches(|c: char| matches!(c, '"' | '\'' | '“' | '”'))
        .trim_end_matches(['.', '!', '?', ';', ' '])
        .to_owned()
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(e: Error) -> String {
        match e {
            Error::InvalidArgument { field, .. } => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn slots_are_normalized_and_checked() {
        assert_eq!(slot("slot", " User.Home-City ").unwrap(), "user.home_city");
        assert_eq!(
            slot("slot", "user.diet.allergy").unwrap(),
            "user.diet.allergy"
        );
        for bad in [
            "user",
            "user.",
            ".city",
            "user..city",
            "user.city!",
            "",
            "user.a\u{7}b",
        ] {
            assert_eq!(field_of(slot("slot", bad).unwrap_err()), "slot", "{bad}");
        }
    }

    #[test]
    fn slots_in_any_script_keep_different_words_apart() {
        let taste = |w: &str| slot("slot", &format!("user.taste.{w}")).unwrap();
        let words = [
            "寿司",
            "焼肉",
            "花生",
            "小麦",
            "борщ",
            "пельмени",
            "كبسة",
            "فلافل",
            "crème_brûlée",
            "creme_brulee",
            "🍣",
            "🍕",
            "café",
        ];
        let slots: Vec<String> = words.iter().map(|w| taste(w)).collect();
        let mut unique = slots.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), words.len(), "{slots:?}");
        assert_eq!(taste("Борщ"), taste("борщ"), "lowercase");
        // NFKC: full-width letters and a decomposed é are the same key as their plain forms.
        assert_eq!(taste("ＳＵＳＨＩ"), "user.taste.sushi");
        assert_eq!(taste("cafe\u{301}"), taste("café"));
        let long = format!("user.{}", "寿".repeat(50));
        assert_eq!(
            field_of(slot("slot", &long).unwrap_err()),
            "slot",
            "bytes, not characters"
        );
    }

    #[test]
    fn tags_are_lowercased_sorted_unique_and_bounded() {
        let t = tags("tags", &["Work".into(), "home".into(), "work ".into()]).unwrap();
        assert_eq!(t, vec!["home", "work"]);
        assert_eq!(
            field_of(tags("tags", &["ok".into(), " ".into()]).unwrap_err()),
            "tags[1]"
        );
        let many: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
        assert_eq!(field_of(tags("tags", &many).unwrap_err()), "tags");
    }

    #[test]
    fn content_rejects_blank_oversized_and_nul() {
        assert_eq!(content("content", "  hi  ", 10).unwrap(), "hi");
        assert!(content("content", "   ", 10).is_err());
        assert!(content("content", "0123456789A", 10).is_err());
        assert!(content("content", "a\0b", 10).is_err());
        assert!(content("content", "line\nnext\tok", 100).is_ok());
    }

    #[test]
    fn ids_and_namespaces() {
        assert!(required_id("user_id", "").is_err());
        assert!(required_id("user_id", " u").is_err());
        assert!(required_id("user_id", &"x".repeat(257)).is_err());
        assert_eq!(namespace("namespace", "").unwrap(), "default");
        assert!(namespace("namespace", "a b").is_err());
        assert_eq!(namespaces("namespaces", &[]).unwrap(), vec!["default"]);
        assert_eq!(
            field_of(namespaces("namespaces", &["ok".into(), "".into()]).unwrap_err()),
            "namespaces[1]"
        );
        assert!(uuid("memory_id", "nope").is_err());
    }

    #[test]
    fn page_sizes() {
        assert_eq!(page_size("page_size", 0, 500).unwrap(), 50);
        assert_eq!(page_size("page_size", 7, 500).unwrap(), 7);
        assert!(page_size("page_size", -1, 500).is_err());
        assert!(page_size("page_size", 501, 500).is_err());
    }

    #[test]
    fn unit_interval_rejects_nan_and_out_of_range() {
        assert!(unit_interval("importance", f32::NAN).is_err());
        assert!(unit_interval("importance", 1.01).is_err());
        assert!(unit_interval("importance", -0.1).is_err());
        assert_eq!(unit_interval("importance", 0.3).unwrap(), 0.3);
    }

    #[test]
    fn content_keys_ignore_case_space_and_final_punctuation() {
        assert_eq!(
            content_key("Lives in  Dallas."),
            content_key("lives in dallas")
        );
        assert_ne!(
            content_key("lives in Dallas"),
            content_key("lives in Austin")
        );
    }
}
