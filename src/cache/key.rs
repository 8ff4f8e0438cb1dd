//! Cache keys. The primary key is an unambiguous framing (every component length-prefixed) of:
//! format version, upstream authority, path and query, the effective `Api-Version`, the
//! partition (the key id in `per-key` mode, `shared` otherwise) and the generations that
//! invalidation bumps (own scope, every path prefix's tree generation, the URL's generation).
//! pingora-cache hashes it with blake2b; the moka store is keyed by that 16-byte hash.
//!
//! The secondary key (variance) comes from the stored response's `Vary`: one value per named
//! request header. Headers that are already part of the primary key (`Api-Version`, and
//! `Authorization` whose key id is the partition) add nothing, so the common Raster response
//! (`Vary: Api-Version`) needs no secondary slot at all.

use pingora::cache::key::HashBinary;
use pingora::cache::VarianceBuilder;
use pingora::http::{RequestHeader, ResponseHeader};

use crate::edge::KeyId;

/// Bumped when the framing changes, so old and new layouts can never collide.
const FORMAT: &[u8] = b"raster-edge/1";

/// Who a stored response belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partition {
    Key(KeyId),
    /// Anonymous requests in `per-key` mode share one partition (they carry no credentials).
    Anonymous,
    /// `share = "shared"`: one RFC 9111 shared cache.
    Shared,
}

impl Partition {
    fn bytes(&self) -> &[u8] {
        match self {
            Partition::Key(k) => k.as_bytes(),
            Partition::Anonymous => b"anonymous",
            Partition::Shared => b"shared",
        }
    }
}

/// The inputs of a primary key; `generations` come from [`super::invalidation`].
pub struct KeyParts<'a> {
    pub authority: &'a str,
    pub path_and_query: &'a str,
    pub api_version: &'a [u8],
    pub partition: Partition,
    pub generations: &'a [u64],
}

fn frame(buf: &mut Vec<u8>, part: &[u8]) {
    // u32 length prefix: a component can never be mistaken for the start of the next one.
    buf.extend_from_slice(&(part.len() as u32).to_le_bytes());
    buf.extend_from_slice(part);
}

/// The primary key bytes (hashed by pingora-cache into the storage key).
pub fn primary(parts: &KeyParts<'_>) -> Vec<u8> {
    let mut buf = Vec::with_capacity(
        64 + parts.authority.len() + parts.path_and_query.len() + parts.generations.len() * 8,
    );
    frame(&mut buf, FORMAT);
    frame(&mut buf, parts.authority.as_bytes());
    frame(&mut buf, parts.path_and_query.as_bytes());
    frame(&mut buf, parts.api_version);
    frame(&mut buf, parts.partition.bytes());
    buf.extend_from_slice(&(parts.generations.len() as u32).to_le_bytes());
    for g in parts.generations {
        buf.extend_from_slice(&g.to_le_bytes());
    }
    buf
}

/// Header names whose value is already in the primary key.
fn in_primary(name: &str) -> bool {
    name.eq_ignore_ascii_case("api-version") || name.eq_ignore_ascii_case("authorization")
}

/// True when the response says `Vary: *` (never stored: no request can match it).
pub fn vary_star(resp: &ResponseHeader) -> bool {
    resp.headers
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|n| n.trim() == "*")
}

/// The variance of `req` against a stored response's `Vary`. `None` when nothing varies
/// beyond the primary key. In `shared` mode `Authorization` varies by key id (never the raw
/// key, which must not be hashed into anything stored).
pub fn variance(
    stored: &ResponseHeader,
    req: &RequestHeader,
    partition: Partition,
) -> Option<HashBinary> {
    let mut vb = VarianceBuilder::new();
    for value in stored.headers.get_all(http::header::VARY) {
        let Ok(value) = value.to_str() else { continue };
        for name in value.split(',') {
            let name = name.trim().to_ascii_lowercase();
            if name.is_empty() || name == "*" {
                continue;
            }
            if in_primary(&name) {
                if name == "authorization" && partition == Partition::Shared {
                    // Shared mode: responses stored for one credential are still told apart
                    // by it when the origin asked to vary on it.
                    let v = req
                        .headers
                        .get(http::header::AUTHORIZATION)
                        .map(|v| pingora::cache::key::hash_key(v.as_bytes()).to_vec())
                        .unwrap_or_default();
                    vb.add_owned_name_value(name, v);
                }
                continue;
            }
            let normal = normalise_selecting(&name, req);
            vb.add_owned_name_value(name, normal);
        }
    }
    vb.finalize()
}

/// Selecting fields whose members are case-insensitive tokens and whose order carries no
/// meaning (preference is in the `q` weights).
const UNORDERED_CASELESS: &[&str] = &["accept-encoding", "accept-language", "accept-charset"];

/// A selecting header's value in a normal form (RFC 9111 §4.1 allows normalising values known
/// to have identical semantics), so trivially different requests share a variant: several
/// lines are joined (RFC 9110 §5.3); members lose the whitespace around them and around `;`
/// and `=`; for [`UNORDERED_CASELESS`] fields they are lowercased and sorted, for `Accept`
/// sorted (media-type parameters can be case-sensitive). Other fields keep member order and
/// case.
fn normalise_selecting(name: &str, req: &RequestHeader) -> Vec<u8> {
    let mut members: Vec<String> = Vec::new();
    for v in req.headers.get_all(name) {
        let v = String::from_utf8_lossy(v.as_bytes());
        for m in v.split(',') {
            let m: String = m
                .split(';')
                .map(|p| p.split('=').map(str::trim).collect::<Vec<_>>().join("="))
                .collect::<Vec<_>>()
                .join(";");
            if !m.is_empty() {
                members.push(m);
            }
        }
    }
    if UNORDERED_CASELESS.contains(&name) {
        members.iter_mut().for_each(|m| m.make_ascii_lowercase());
        members.sort();
    } else if name == "accept" {
        members.sort();
    }
    members.join(",").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selecting_values_are_normalised() {
        let req = |lines: &[(&'static str, &str)]| {
            let mut r = RequestHeader::build("GET", b"/", None).unwrap();
            for (k, v) in lines {
                r.append_header(*k, *v).unwrap();
            }
            r
        };
        let mut vary = ResponseHeader::build(200, None).unwrap();
        vary.insert_header("vary", "Accept-Encoding, Accept-Language, X-Custom")
            .unwrap();
        let v = |r: &RequestHeader| variance(&vary, r, Partition::Shared);
        let a = v(&req(&[
            ("accept-encoding", "gzip, br;q=0.5"),
            ("accept-language", "en-GB,fr"),
            ("x-custom", "A, B"),
        ]));
        let b = v(&req(&[
            ("accept-encoding", "BR ; q=0.5"),
            ("accept-encoding", "GZIP"),
            ("accept-language", "fr ,  EN-gb"),
            ("x-custom", "A,B"),
        ]));
        assert_eq!(a, b);
        // Order and case of an unknown field are kept.
        let c = v(&req(&[
            ("accept-encoding", "gzip, br;q=0.5"),
            ("accept-language", "en-GB,fr"),
            ("x-custom", "B, A"),
        ]));
        assert_ne!(a, c);
        let d = v(&req(&[
            ("accept-encoding", "gzip"),
            ("accept-language", "en-GB,fr"),
            ("x-custom", "A, B"),
        ]));
        assert_ne!(a, d);
    }

    fn parts<'a>(pq: &'a str, v: &'a [u8], p: Partition, g: &'a [u64]) -> KeyParts<'a> {
        KeyParts {
            authority: "api.raster.app",
            path_and_query: pq,
            api_version: v,
            partition: p,
            generations: g,
        }
    }

    #[test]
    fn every_component_changes_the_key() {
        let k1 = Partition::Key(KeyId([1; 16]));
        let k2 = Partition::Key(KeyId([2; 16]));
        let base = primary(&parts("/me", b"v1", k1, &[0, 0]));
        assert_eq!(base, primary(&parts("/me", b"v1", k1, &[0, 0])));
        assert_ne!(base, primary(&parts("/me?a", b"v1", k1, &[0, 0])));
        assert_ne!(base, primary(&parts("/me", b"v2", k1, &[0, 0])));
        assert_ne!(base, primary(&parts("/me", b"v1", k2, &[0, 0])));
        assert_ne!(base, primary(&parts("/me", b"v1", k1, &[0, 1])));
        assert_ne!(
            base,
            primary(&parts("/me", b"v1", Partition::Shared, &[0, 0]))
        );
    }

    #[test]
    fn framing_is_unambiguous() {
        let p = Partition::Shared;
        assert_ne!(
            primary(&parts("/ab", b"c", p, &[])),
            primary(&parts("/a", b"bc", p, &[]))
        );
    }

    #[test]
    fn variance_ignores_primary_headers_and_uses_named_ones() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("vary", "Api-Version").unwrap();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("api-version", "x").unwrap();
        let p = Partition::Key(KeyId([1; 16]));
        assert_eq!(variance(&resp, &req, p), None);

        resp.insert_header("vary", "Api-Version, Accept-Language")
            .unwrap();
        let a = variance(&resp, &req, p);
        assert!(a.is_some());
        req.insert_header("accept-language", "fr").unwrap();
        let b = variance(&resp, &req, p);
        assert_ne!(a, b);
    }

    #[test]
    fn vary_star_detected() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        assert!(!vary_star(&resp));
        resp.insert_header("vary", "Accept, *").unwrap();
        assert!(vary_star(&resp));
    }
}
