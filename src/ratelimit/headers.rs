//! IETF RateLimit header fields, draft-ietf-httpapi-ratelimit-headers (-08 onward, current
//! syntax), as Structured Fields (RFC 9651):
//!
//! ```text
//! RateLimit-Policy: "default";q=100;w=2     policy name (sf-string); q = quota (the burst);
//!                                           w = window in seconds (burst / rate, rounded up, ≥ 1)
//! RateLimit: "default";r=57;t=1             r = remaining requests right now;
//!                                           t = seconds until the full quota is back (rounded up)
//! Retry-After: 1                            only on refusals: seconds until one request would
//!                                           be admitted, rounded up, at least 1 (RFC 9110)
//! ```

use std::fmt::Write;
use std::time::Duration;

pub const RATELIMIT_POLICY: &str = "RateLimit-Policy";
pub const RATELIMIT: &str = "RateLimit";
pub const RETRY_AFTER: &str = "Retry-After";

/// Whole seconds, rounded up.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// An sf-string: quoted, with `"` and `\` escaped; characters outside printable ASCII (not
/// allowed in an sf-string) become `_`.
fn push_sf_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
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

/// `RateLimit-Policy` value.
pub fn policy(name: &str, quota: u32, window: Duration) -> String {
    let mut out = String::with_capacity(name.len() + 24);
    push_sf_string(&mut out, name);
    let _ = write!(out, ";q={quota};w={}", ceil_secs(window).max(1));
    out
}

/// `RateLimit` value.
pub fn ratelimit(name: &str, remaining: u32, reset: Duration) -> String {
    let mut out = String::with_capacity(name.len() + 24);
    push_sf_string(&mut out, name);
    let _ = write!(out, ";r={remaining};t={}", ceil_secs(reset));
    out
}

/// `Retry-After` value (delay-seconds, at least 1).
pub fn retry_after(d: Duration) -> String {
    ceil_secs(d).max(1).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_values() {
        assert_eq!(
            policy("default", 100, Duration::from_secs(2)),
            "\"default\";q=100;w=2"
        );
        assert_eq!(
            policy("slow", 1, Duration::from_millis(1)),
            "\"slow\";q=1;w=1"
        );
        assert_eq!(
            ratelimit("default", 57, Duration::from_millis(860)),
            "\"default\";r=57;t=1"
        );
        assert_eq!(
            ratelimit("gold", 0, Duration::from_millis(2_001)),
            "\"gold\";r=0;t=3"
        );
        assert_eq!(ratelimit("x", 5, Duration::ZERO), "\"x\";r=5;t=0");
        assert_eq!(retry_after(Duration::from_millis(20)), "1");
        assert_eq!(retry_after(Duration::ZERO), "1");
        assert_eq!(retry_after(Duration::from_millis(2_500)), "3");
    }

    #[test]
    fn names_are_valid_sf_strings() {
        assert_eq!(
            policy("a\"b\\c\u{e9}", 1, Duration::from_secs(1)),
            "\"a\\\"b\\\\c_\";q=1;w=1"
        );
    }
}
