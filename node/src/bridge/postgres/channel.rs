//! PostgreSQL channel names for topics.
//!
//! The channel of topic `T` is `<prefix>T` when that name is at most 63 bytes (PostgreSQL's
//! identifier limit: `LISTEN` would silently truncate a longer one and `pg_notify` refuses
//! it), so `auditlog:<uuid>` (45 bytes) is its own channel. A longer name, and a name that
//! already has the shape of a mapped one, is *mapped*:
//!
//! ```text
//! head(name) + "~" + first 32 hex digits (lower case) of SHA-256(name)
//! ```
//!
//! where `head(name)` is the longest prefix of `name` of at most 30 bytes that ends on a
//! character boundary. A mapped name is at most 63 bytes and ends in `~` plus 32 hex digits;
//! because such names are always mapped, two different topics never share a channel (short
//! of a SHA-256 collision). docs/postgres.md gives the same rule in SQL and Python, so an
//! application's `pg_notify` can target any topic.

use sha2::{Digest as _, Sha256};

/// PostgreSQL's longest identifier, in bytes (`NAMEDATALEN - 1`).
pub const MAX_CHANNEL_BYTES: usize = 63;
/// Bytes of the original name a mapped name keeps.
pub const HEAD_BYTES: usize = 30;
/// Hex digits of the hash a mapped name ends with.
pub const HASH_DIGITS: usize = 32;

/// The channel of `topic` with `prefix` (see the module doc).
#[must_use]
pub fn channel_name(prefix: &str, topic: &str) -> String {
    let name = format!("{prefix}{topic}");
    if name.len() <= MAX_CHANNEL_BYTES && !is_mapped(&name) {
        return name;
    }
    let mut head = HEAD_BYTES.min(name.len());
    while !name.is_char_boundary(head) {
        head -= 1;
    }
    let digest = Sha256::digest(name.as_bytes());
    let mut mapped = String::with_capacity(head + 1 + HASH_DIGITS);
    mapped.push_str(&name[..head]);
    mapped.push('~');
    for byte in &digest[..HASH_DIGITS / 2] {
        mapped.push(char::from(HEX[usize::from(byte >> 4)]));
        mapped.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    mapped
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Whether `name` has the shape of a mapped name: it ends in `~` and 32 lower-case hex digits.
#[must_use]
pub fn is_mapped(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() > HASH_DIGITS
        && bytes[bytes.len() - HASH_DIGITS - 1] == b'~'
        && bytes[bytes.len() - HASH_DIGITS..]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// `name` as a quoted SQL identifier, for `LISTEN` and `UNLISTEN`: in double quotes, with
/// every `"` doubled. (Names never hold NUL: topics have no control characters.)
#[must_use]
pub fn quote_ident(name: &str) -> String {
    let mut quoted = String::with_capacity(name.len() + 2);
    quoted.push('"');
    for c in name.chars() {
        if c == '"' {
            quoted.push('"');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_their_own_channel() {
        let topic = "auditlog:123e4567-e89b-12d3-a456-426614174000";
        assert_eq!(topic.len(), 45);
        assert_eq!(channel_name("", topic), topic);
        assert_eq!(channel_name("sb:", "room:1"), "sb:room:1");
        let exactly = "a".repeat(MAX_CHANNEL_BYTES);
        assert_eq!(channel_name("", &exactly), exactly);
    }

    #[test]
    fn long_names_are_mapped_to_head_and_hash() {
        // The example docs/postgres.md shows (the e2e tests check its SQL function agrees).
        let topic = format!("reports:{}", "x".repeat(60));
        let mapped = channel_name("", &topic);
        assert_eq!(
            mapped,
            "reports:xxxxxxxxxxxxxxxxxxxxxx~f483685e949ad176f362ab1933f66264"
        );
        assert_eq!(mapped.len(), MAX_CHANNEL_BYTES);
        assert!(is_mapped(&mapped));
        assert_eq!(channel_name("", &"a".repeat(64)).len(), 63);
        assert_ne!(
            channel_name("", &"a".repeat(64)),
            channel_name("", &"a".repeat(65))
        );
        // The prefix is part of the hashed name.
        assert_eq!(
            channel_name("p:", &topic),
            channel_name("", &format!("p:{topic}"))
        );
    }

    #[test]
    fn the_head_ends_on_a_character_boundary() {
        // 29 ASCII bytes, then a 3-byte character straddling byte 30.
        let topic = format!("{}€{}", "a".repeat(29), "b".repeat(40));
        let mapped = channel_name("", &topic);
        assert!(
            mapped.starts_with(&format!("{}~", "a".repeat(29))),
            "{mapped}"
        );
        assert_eq!(mapped.len(), 29 + 1 + HASH_DIGITS);
    }

    #[test]
    fn names_shaped_like_mapped_ones_are_mapped_too() {
        let long = channel_name("", &"z".repeat(100));
        assert_eq!(long.len(), 63);
        // A topic spelled exactly like another topic's mapped channel gets its own channel.
        let imposter = channel_name("", &long);
        assert_ne!(imposter, long);
        assert!(is_mapped(&imposter));
        assert!(!is_mapped("room~0123"));
        assert!(
            !is_mapped(&format!("~{}", "A".repeat(32))),
            "upper case is not a hash"
        );
    }

    #[test]
    fn identifiers_are_quoted_with_inner_quotes_doubled() {
        assert_eq!(quote_ident("auditlog:1"), r#""auditlog:1""#);
        assert_eq!(quote_ident(r#"a"b""#), r#""a""b""""#);
        assert_eq!(quote_ident("é €"), "\"é €\"");
    }
}
