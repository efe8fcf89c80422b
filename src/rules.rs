//! The rules every area applies to its arguments before anything is sent, in one place: names
//! and hash tags, durations on the wire and their bound, counts, tokens, deadlines.
//!
//! Key layouts are `<area>:{<tag>}…`: the tag is the part of the key Redis Cluster hashes, so all
//! keys of one call share a slot. A tag may not contain `}`: the first `}` ends the hash tag, so
//! a `}` inside would both move the slot and let two different (tag, rest) pairs spell the same
//! key. With that rule every layout of this crate is injective: one key, one meaning.

use std::time::{Duration, Instant};

use crate::{Error, Result};

/// The largest count (limit, permits, maximum length) and the longest duration in milliseconds
/// (about 31.7 years) this crate sends: every value stays exact as a Lua double, and sums and
/// products of two of them stay below 2^53.
pub const MAX: u64 = 1_000_000_000_000;

/// The longest name or hash tag, in bytes.
pub const MAX_NAME: usize = 1024;

/// Owner tokens (locks, leases) are 1..=256 bytes, as the scripts take them.
pub const MAX_TOKEN: usize = 256;

/// A hash-tag part of a key (a lock's resource, a rate limit's subject, a cache segment, a
/// stream name): 1..=1024 bytes, no `}`.
pub(crate) fn tag(what: &'static str, s: &str) -> Result<()> {
    name(what, s)?;
    if s.contains('}') {
        return Err(Error::invalid(what, "must not contain `}` (it would end the key's hash tag)"));
    }
    Ok(())
}

/// [`tag`], taking the name by value: what a constructor keeps.
pub(crate) fn owned_tag(what: &'static str, s: impl Into<String>) -> Result<String> {
    let s = s.into();
    tag(what, &s)?;
    Ok(s)
}

/// [`owned_tag`] and the area's base key `<prefix>:{<name>}` built on it (the name is the hash
/// tag, so every key derived from the base key shares its cluster slot).
pub(crate) fn tagged_key(what: &'static str, prefix: &str, s: impl Into<String>) -> Result<(String, String)> {
    let s = owned_tag(what, s)?;
    let key = format!("{prefix}:{{{s}}}");
    Ok((s, key))
}

/// Any other name (a limiter's name, a consumer group, a consumer): 1..=1024 bytes.
pub(crate) fn name(what: &'static str, s: &str) -> Result<()> {
    if s.is_empty() || s.len() > MAX_NAME {
        return Err(Error::invalid(what, format!("must be 1..={MAX_NAME} bytes (got {})", s.len())));
    }
    Ok(())
}

/// A duration sent to a script: whole milliseconds, 1 ms..=[`MAX`] ms. Sub-millisecond parts
/// are refused rather than rounded, so a lease is never longer or shorter than asked.
pub(crate) fn millis(what: &'static str, d: Duration) -> Result<u64> {
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return Err(Error::invalid(what, format!("must be whole milliseconds (got {d:?})")));
    }
    match u64::try_from(d.as_millis()) {
        Ok(ms @ 1..=MAX) => Ok(ms),
        _ => Err(Error::invalid(what, format!("must be 1 ms ..= {MAX} ms (got {d:?})"))),
    }
}

/// A count sent to a script: 1..=[`MAX`].
pub(crate) fn count(what: &'static str, n: u64) -> Result<u64> {
    if !(1..=MAX).contains(&n) {
        return Err(Error::invalid(what, format!("must be 1..={MAX} (got {n})")));
    }
    Ok(n)
}

/// A fresh owner token: 128 random bits as 32 hex digits, unguessable, so no other client
/// releases or extends by accident.
pub(crate) fn token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A token given by the caller: 1..=256 bytes.
pub(crate) fn check_token(t: &str) -> Result<()> {
    if t.is_empty() || t.len() > MAX_TOKEN {
        return Err(Error::invalid("token", format!("must be 1..={MAX_TOKEN} bytes")));
    }
    Ok(())
}

/// `at + d`, saturating: `Instant + Duration` panics on overflow, and callers may pass
/// `Duration::MAX` to mean "no limit". Capped at a century ahead (no wait of this crate is
/// meant to last longer, and the cap keeps every later addition in range).
pub(crate) fn later(at: Instant, d: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
    at.checked_add(d.min(CENTURY)).unwrap_or(at)
}

/// The deadline `d` from now (see [`later`]).
pub(crate) fn deadline(d: Duration) -> Instant {
    later(Instant::now(), d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_names() {
        assert!(tag("t", "orders").is_ok());
        assert!(tag("t", "a{b").is_ok());
        assert!(tag("t", "").is_err());
        assert!(tag("t", "}x").is_err());
        assert!(tag("t", "a}b").is_err());
        assert!(tag("t", &"x".repeat(MAX_NAME + 1)).is_err());
        assert!(name("n", "a}b").is_ok());
    }

    #[test]
    fn durations_on_the_wire() {
        assert_eq!(millis("d", Duration::from_millis(7)).unwrap(), 7);
        assert!(millis("d", Duration::ZERO).is_err());
        assert!(millis("d", Duration::from_micros(1500)).is_err());
        assert!(millis("d", Duration::MAX).is_err());
        assert!(millis("d", Duration::from_millis(MAX + 1)).is_err());
        assert_eq!(millis("d", Duration::from_millis(MAX)).unwrap(), MAX);
    }

    #[test]
    fn counts_tokens_deadlines() {
        assert!(count("c", 0).is_err() && count("c", MAX + 1).is_err() && count("c", u64::MAX).is_err());
        assert_eq!(token().len(), 32);
        assert_ne!(token(), token());
        assert!(check_token("").is_err() && check_token(&"x".repeat(257)).is_err());
        let now = Instant::now();
        assert!(later(now, Duration::MAX) > now);
        let _ = deadline(Duration::MAX);
    }
}
