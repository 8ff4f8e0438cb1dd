//! Request-path normalisation: one canonical spelling of a path before anything keys, scopes,
//! routes or forwards on it, so `/libraries/lisbon/../barcelona/assets` can never be cached and
//! invalidated as lisbon while the origin serves barcelona.
//!
//! The rules (RFC 3986 §6.2.2 and §5.2.4, with the refusals of the strictest of nginx, Envoy and
//! Varnish, see docs/SECURITY.md):
//! - the target must be origin-form (`/…`); `*` and authority-form are refused;
//! - `%XX` escapes of unreserved characters (ALPHA DIGIT `-._~`) are decoded, every other escape
//!   is kept with upper-case hex digits; a `%` not followed by two hex digits is refused;
//! - an encoded slash (`%2F`) is refused (Envoy's `REJECT_REQUEST`): it would mean one segment
//!   to the gateway and two to an origin that decodes it; so is an encoded control character
//!   (`%00`–`%1F`, `%7F`), which is also what Pingora's parser makes of a raw one;
//! - `.` and `..` segments are removed (after decoding, so `%2E%2E` is `..` too); a `..` that
//!   would climb above the root is refused, as nginx does;
//! - empty segments are merged (`//` is `/`, nginx's `merge_slashes`); a trailing slash stays;
//! - a byte that must be percent-encoded in a path (controls, space, non-ASCII, `"<>\^`{|}`)
//!   is refused.
//!
//! Hand-written: no maintained crate implements this exact rule set (the `url` crate normalises
//! whole URLs and silently turns `\` into `/` and `%2e%2e` handling into its WHATWG rules, which
//! differ from what the origin sees).

use std::borrow::Cow;

/// Why a path was refused.
pub type Refusal = &'static str;

/// The canonical form of `path` (the path component only, no query). Borrows when `path` is
/// already canonical, which is the common case.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, Refusal> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err("request target must be an absolute path (origin-form)");
    }
    check_bytes(b)?;
    if is_normal(b) {
        return Ok(Cow::Borrowed(path));
    }
    let mut segments: Vec<String> = Vec::new();
    let raw_segments: Vec<&str> = path[1..].split('/').collect();
    let last = raw_segments.len() - 1;
    let mut trailing_slash = false;
    for (i, raw) in raw_segments.iter().enumerate() {
        let seg = decode_unreserved(raw)?;
        match seg.as_str() {
            "" => {
                if i == last {
                    trailing_slash = true;
                }
            }
            "." => {
                // `/a/.` is `/a/` (RFC 3986 §5.2.4 keeps the slash).
                if i == last {
                    trailing_slash = true;
                }
            }
            ".." => {
                if segments.pop().is_none() {
                    return Err("request path climbs above the root with \"..\"");
                }
                if i == last {
                    trailing_slash = true;
                }
            }
            _ => {
                segments.push(seg);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// True for bytes allowed unescaped in a path: unreserved, sub-delims, `:` `@`, `/` and the `%`
/// of an escape (RFC 3986 §3.3).
fn path_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&c)
}

fn check_bytes(b: &[u8]) -> Result<(), Refusal> {
    if b.iter().all(|&c| path_byte(c)) {
        Ok(())
    } else {
        Err("request path has a character that must be percent-encoded")
    }
}

fn unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-._~".contains(&c)
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// The fast check: no escapes to rewrite, no dot or empty segments.
fn is_normal(b: &[u8]) -> bool {
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let canonical = match (b.get(i + 1), b.get(i + 2)) {
                (Some(&h), Some(&l)) => match (hex(h), hex(l)) {
                    (Some(hv), Some(lv)) => {
                        let c = hv * 16 + lv;
                        !h.is_ascii_lowercase()
                            && !l.is_ascii_lowercase()
                            && !unreserved(c)
                            && c != b'/'
                            && !c.is_ascii_control()
                    }
                    _ => false,
                },
                _ => false,
            };
            if !canonical {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    // Segments between slashes (the first byte is the leading '/'); runs on every request, so
    // it allocates nothing.
    let body = &b[1..];
    if body.is_empty() {
        return true;
    }
    let mut segments = body.split(|&c| c == b'/').peekable();
    while let Some(s) = segments.next() {
        let last = segments.peek().is_none();
        if matches!(s, b"." | b"..") || (s.is_empty() && !last) {
            return false;
        }
    }
    true
}

/// One segment with unreserved escapes decoded and the others upper-cased; `%2F` and malformed
/// escapes refused.
fn decode_unreserved(seg: &str) -> Result<String, Refusal> {
    let b = seg.as_bytes();
    let mut out = String::with_capacity(seg.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            out.push(b[i] as char);
            i += 1;
            continue;
        }
        let (Some(h), Some(l)) = (
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) else {
            return Err("malformed percent-encoding in request path");
        };
        let c = h * 16 + l;
        if c == b'/' {
            return Err("request path has an encoded slash (%2F)");
        }
        if c.is_ascii_control() {
            // Also what Pingora's parser turns a raw control byte into: refused either way.
            return Err("request path has an encoded control character");
        }
        if unreserved(c) {
            out.push(c as char);
        } else {
            out.push('%');
            out.push(b[i + 1].to_ascii_uppercase() as char);
            out.push(b[i + 2].to_ascii_uppercase() as char);
        }
        i += 3;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(p: &str) -> Result<String, Refusal> {
        normalize(p).map(Cow::into_owned)
    }

    #[test]
    fn dot_segments_are_removed() {
        let lib = "/organizations/monogram-labs/libraries";
        assert_eq!(
            n(&format!("{lib}/lisbon/../barcelona/assets")).unwrap(),
            format!("{lib}/barcelona/assets")
        );
        assert_eq!(n("/a/./b").unwrap(), "/a/b");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a/b/.").unwrap(), "/a/b/");
        assert_eq!(n("/a/%2E%2e/b").unwrap(), "/b");
        assert_eq!(n("/a/.%2e/b").unwrap(), "/b");
        assert_eq!(n("/me/..").unwrap(), "/");
        assert_eq!(n("/a/..b/c").unwrap(), "/a/..b/c");
    }

    #[test]
    fn climbing_above_the_root_is_refused() {
        assert!(n("/..").is_err());
        assert!(n("/../me").is_err());
        assert!(n("/a/../../me").is_err());
        assert!(n("/%2e%2e/me").is_err());
    }

    #[test]
    fn escapes_are_normalised_and_encoded_slashes_refused() {
        assert_eq!(n("/libraries/%62arcelona").unwrap(), "/libraries/barcelona");
        assert_eq!(n("/a/%7e%2D").unwrap(), "/a/~-");
        assert_eq!(n("/a/b%2c%3a").unwrap(), "/a/b%2C%3A");
        assert_eq!(n("/a/%252F").unwrap(), "/a/%252F");
        assert!(n("/a%2Fb").is_err());
        assert!(n("/a%2fb").is_err());
        assert!(n("/a/%zz").is_err());
        assert!(n("/a/%4").is_err());
        assert!(n("/a/%").is_err());
        assert!(n("/me%00").is_err());
        assert!(n("/me%0a").is_err());
        assert!(n("/me%7F").is_err());
    }

    #[test]
    fn slashes_merge_and_trailing_slash_stays() {
        assert_eq!(n("//a///b").unwrap(), "/a/b");
        assert_eq!(n("/a/b/").unwrap(), "/a/b/");
        assert_eq!(n("/a/b//").unwrap(), "/a/b/");
        assert_eq!(n("/").unwrap(), "/");
        assert_eq!(n("//").unwrap(), "/");
    }

    #[test]
    fn other_targets_and_bytes_are_refused() {
        assert!(n("*").is_err());
        assert!(n("").is_err());
        assert!(n("edge:80").is_err());
        assert!(n("/a b").is_err());
        assert!(n("/a\\b").is_err());
        assert!(n("/caf\u{e9}").is_err());
        assert!(n("/a\u{1}").is_err());
        assert!(n("/a{b}").is_err());
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in [
            "/",
            "/me",
            "/me/",
            "/organizations/monogram-labs/libraries/barcelona/assets/bcn-0001",
            "/a/b;c=d/@x:y",
            "/a/b%2C%3A",
        ] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    fn path_strategy() -> impl Strategy<Value = String> {
        let seg = prop_oneof![
            Just("".to_string()),
            Just(".".to_string()),
            Just("..".to_string()),
            Just("%2e".to_string()),
            Just("%2E%2e".to_string()),
            Just("%62".to_string()),
            Just("%7E".to_string()),
            Just("%3a".to_string()),
            Just("%2F".to_string()),
            Just("%zz".to_string()),
            Just("%00".to_string()),
            "[a-z0-9._~-]{1,6}",
            "[a-zA-Z0-9%._~:@!$&'()*+,;=-]{1,8}",
        ];
        proptest::collection::vec(seg, 0..8).prop_map(|segs| format!("/{}", segs.join("/")))
    }

    proptest! {
        #[test]
        fn normalisation_is_idempotent_and_leaves_no_dot_segments(p in path_strategy()) {
            if let Ok(once) = normalize(&p) {
                let once = once.into_owned();
                let twice = normalize(&once).expect("a normal path stays acceptable");
                prop_assert_eq!(&once, &twice);
                // A normal path is returned unchanged (borrowed).
                prop_assert!(matches!(normalize(&once), Ok(Cow::Borrowed(_))));
                prop_assert!(once.starts_with('/'));
                prop_assert!(!once.contains("//"));
                for seg in once.split('/') {
                    prop_assert!(seg != "." && seg != "..", "{} has a dot segment", once);
                }
                // Only escapes of reserved or other characters remain, upper-cased.
                let b = once.as_bytes();
                for (i, c) in b.iter().enumerate() {
                    if *c == b'%' {
                        let e = &once[i + 1..i + 3];
                        prop_assert_eq!(e.to_ascii_uppercase(), e);
                        let v = u8::from_str_radix(e, 16).unwrap();
                        prop_assert!(!unreserved(v) && v != b'/' && !v.is_ascii_control());
                    }
                }
            }
        }
    }
}
