//! The rate-limit response headers: the IETF httpapi draft's `RateLimit-Policy` / `RateLimit`
//! structured fields, the widespread `X-RateLimit-*` trio, and `Retry-After`.

use std::fmt::Write;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::ratelimit::{MultiDecision, MultiLimit};

/// Which rate-limit headers the layer sends (on refusals always; on admitted responses when
/// [`headers_on_allowed`](super::Builder::headers_on_allowed) is set). `Retry-After` is sent on
/// every refusal whatever the style.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HeaderStyle {
    /// No rate-limit headers (only `Retry-After` on refusals).
    None,
    /// The IETF httpapi draft (draft-ietf-httpapi-ratelimit-headers-09 to -11): a
    /// `RateLimit-Policy` List with one Item per limit (`"<limiter name>";q=<quota>;w=<window
    /// seconds>`) and a `RateLimit` List with the current state of each (`"<limiter
    /// name>";r=<remaining>;t=<seconds>`). The draft is still changing; this style follows it.
    #[default]
    Ietf,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` (seconds from now until
    /// the limit is full again, not an epoch time: the only clock the layer trusts is the
    /// server's, and it reports durations), for the binding limit: the one that refused, or the
    /// one with the least remaining.
    XRateLimit,
    /// Both of the above.
    Both,
}

impl HeaderStyle {
    fn ietf(self) -> bool {
        matches!(self, HeaderStyle::Ietf | HeaderStyle::Both)
    }
    fn legacy(self) -> bool {
        matches!(self, HeaderStyle::XRateLimit | HeaderStyle::Both)
    }
}

pub(crate) static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub(crate) static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub(crate) static X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub(crate) static X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub(crate) static X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Whole seconds, rounded up: a client that waits this long has waited long enough.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

/// A Structured Field String of `name`: printable ASCII, `"` and `\` escaped; any other byte
/// becomes `_` (limiter names are free text, field strings are not).
fn sf_string(out: &mut String, name: &str) {
    out.push('"');
    for c in name.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('_'),
        }
    }
    out.push('"');
}

/// What the layer precomputes once: the names and the policy field.
#[derive(Debug)]
pub(crate) struct Headers {
    style: HeaderStyle,
    /// Each limiter's name as a Structured Field String.
    names: Vec<String>,
    policy: Option<HeaderValue>,
}

impl Headers {
    pub(crate) fn new(style: HeaderStyle, limits: &MultiLimit) -> Headers {
        let names: Vec<String> = limits
            .limiters()
            .iter()
            .map(|l| {
                let mut s = String::new();
                sf_string(&mut s, l.name());
                s
            })
            .collect();
        let mut policy = String::new();
        for (i, (l, name)) in limits.limiters().iter().zip(&names).enumerate() {
            if i > 0 {
                policy.push_str(", ");
            }
            let (quota, window) = l.limit().quota_window();
            let _ = write!(policy, "{name};q={quota};w={}", ceil_secs(window).max(1));
        }
        let policy = style.ietf().then(|| HeaderValue::from_str(&policy).ok()).flatten();
        Headers { style, names, policy }
    }

    /// The headers describing `d` (nothing for [`HeaderStyle::None`]).
    pub(crate) fn describe(&self, d: &MultiDecision, into: &mut HeaderMap) {
        if self.style.ietf() {
            let mut value = String::with_capacity(32 * self.names.len());
            for (i, (limit, name)) in d.limits.iter().zip(&self.names).enumerate() {
                if i > 0 {
                    value.push_str(", ");
                }
                // The effective window: until this limit would admit the request (when it
                // refused), else until it is full again.
                let t =
                    if limit.retry_after > Duration::ZERO { limit.retry_after } else { limit.reset_after };
                let _ = write!(value, "{name};r={};t={}", limit.remaining, ceil_secs(t));
            }
            if let Some(p) = &self.policy {
                into.append(RATELIMIT_POLICY.clone(), p.clone());
            }
            if let Ok(v) = HeaderValue::from_str(&value) {
                into.append(RATELIMIT.clone(), v);
            }
        }
        if self.style.legacy() {
            let binding = d
                .refused_by
                .and_then(|i| d.limits.get(i))
                .or_else(|| d.limits.iter().min_by_key(|l| l.remaining));
            if let Some(l) = binding {
                for (name, v) in
                    [(&X_LIMIT, l.limit), (&X_REMAINING, l.remaining), (&X_RESET, ceil_secs(l.reset_after))]
                {
                    if !into.contains_key(name) {
                        into.insert(name.clone(), HeaderValue::from(v));
                    }
                }
            }
        }
    }
}

/// `Retry-After` in whole seconds, rounded up, at least 1 (a refusal never says "now").
pub(crate) fn retry_after(into: &mut HeaderMap, after: Duration) {
    if !into.contains_key(http::header::RETRY_AFTER) {
        into.insert(http::header::RETRY_AFTER, HeaderValue::from(ceil_secs(after).max(1)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::{Decision, Gcra, RateLimiter, SlidingWindow};

    fn decision(remaining: u64, retry_ms: u64, reset_ms: u64) -> Decision {
        Decision {
            allowed: retry_ms == 0,
            limit: 10,
            remaining,
            retry_after: Duration::from_millis(retry_ms),
            reset_after: Duration::from_millis(reset_ms),
        }
    }

    #[test]
    fn ietf_fields_and_x_ratelimit() {
        let limits = MultiLimit::new()
            .with(
                RateLimiter::new(
                    "per \"user\"",
                    SlidingWindow::new(10, Duration::from_millis(1500)).unwrap(),
                )
                .unwrap(),
            )
            .with(
                RateLimiter::new(
                    "tenant",
                    Gcra::new(2, Duration::from_secs(1)).unwrap().with_burst(10).unwrap(),
                )
                .unwrap(),
            );
        let h = Headers::new(HeaderStyle::Both, &limits);
        let d = MultiDecision {
            allowed: false,
            refused_by: Some(1),
            retry_after: Duration::from_millis(2001),
            limits: vec![decision(4, 0, 900), decision(0, 2001, 5000)],
        };
        let mut map = HeaderMap::new();
        h.describe(&d, &mut map);
        retry_after(&mut map, d.retry_after);
        assert_eq!(map[&RATELIMIT_POLICY], r#""per \"user\"";q=10;w=2, "tenant";q=10;w=5"#);
        assert_eq!(map[&RATELIMIT], r#""per \"user\"";r=4;t=1, "tenant";r=0;t=3"#);
        assert_eq!(map[&X_LIMIT], "10");
        assert_eq!(map[&X_REMAINING], "0");
        assert_eq!(map[&X_RESET], "5");
        assert_eq!(map[http::header::RETRY_AFTER], "3");
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::MAX), u64::MAX);
        let mut s = String::new();
        sf_string(&mut s, "é\\x");
        assert_eq!(s, r#""_\\x""#);
    }
}
