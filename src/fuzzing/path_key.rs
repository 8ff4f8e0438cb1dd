//! Path normalisation and key derivation. The first line is a request path for the edge's
//! canonicaliser (`edge::path::normalize`): it never panics, its output is rooted, has no dot
//! segments, no empty segments and is its own normal form (normalising twice equals once, and
//! the second pass borrows). The rest feeds `cache::key`: two sets of key parts (`\x1f`-separated
//! fields) whose primary keys must be equal exactly when the parts are, and `variance` over a
//! stored `Vary` and request header lines.

use super::header_lines;
use crate::cache::key::{self, KeyParts, Partition};
use crate::edge::path;
use crate::edge::KeyId;
use pingora::http::{RequestHeader, ResponseHeader};

fn check_path(p: &str) {
    let Ok(n) = path::normalize(p) else {
        return;
    };
    assert!(n.starts_with('/'), "{p:?} -> {n:?}");
    let inner = n.strip_prefix('/').unwrap_or(&n);
    let inner = inner.strip_suffix('/').unwrap_or(inner);
    if !inner.is_empty() {
        for seg in inner.split('/') {
            assert!(
                seg != "." && seg != ".." && !seg.is_empty(),
                "{p:?} -> {n:?}"
            );
        }
    }
    match path::normalize(&n) {
        Ok(std::borrow::Cow::Borrowed(again)) => assert_eq!(again, &*n, "{p:?}"),
        other => panic!("{p:?} -> {n:?} -> {other:?}"),
    }
}

struct Parts<'a> {
    authority: &'a str,
    path_and_query: &'a str,
    api_version: &'a str,
    partition: Partition,
    generations: Vec<u64>,
}

fn parts(s: &str) -> Parts<'_> {
    let mut f = s.split('\x1f');
    let authority = f.next().unwrap_or("");
    let path_and_query = f.next().unwrap_or("");
    let api_version = f.next().unwrap_or("");
    let partition = match f.next().unwrap_or("") {
        "" => Partition::Shared,
        "a" => Partition::Anonymous,
        k => {
            let mut id = [0u8; 16];
            for (d, b) in id.iter_mut().zip(k.bytes()) {
                *d = b;
            }
            Partition::Key(KeyId(id))
        }
    };
    let generations = f.next().unwrap_or("").bytes().map(u64::from).collect();
    Parts {
        authority,
        path_and_query,
        api_version,
        partition,
        generations,
    }
}

fn primary(p: &Parts<'_>) -> Vec<u8> {
    key::primary(&KeyParts {
        authority: p.authority,
        path_and_query: p.path_and_query,
        api_version: p.api_version.as_bytes(),
        partition: p.partition,
        generations: &p.generations,
    })
}

/// One fuzz input (`fuzz/fuzz_targets/path_key.rs`; replayed by `tests/fuzz_corpus.rs`).
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(4, '\n');
    let p = lines.next().unwrap_or("");
    check_path(p);
    // The same path as raw bytes (not lossily decoded) must not panic either.
    if let Some(raw) = data.split(|b| *b == b'\n').next() {
        if let Ok(raw) = std::str::from_utf8(raw) {
            check_path(raw);
        }
    }

    let a = parts(lines.next().unwrap_or(""));
    let b = parts(lines.next().unwrap_or(""));
    let same = a.authority == b.authority
        && a.path_and_query == b.path_and_query
        && a.api_version == b.api_version
        && a.partition == b.partition
        && a.generations == b.generations;
    assert_eq!(same, primary(&a) == primary(&b));

    let rest = lines.next().unwrap_or("");
    let (vary, req_lines) = rest.split_once('\n').unwrap_or((rest, ""));
    let Ok(mut stored) = ResponseHeader::build(200, None) else {
        return;
    };
    let _ = stored.append_header("vary", vary);
    let Ok(mut req) = RequestHeader::build("GET", b"/", None) else {
        return;
    };
    for (n, v) in header_lines(req_lines) {
        let _ = req.append_header(n.to_string(), v);
    }
    for partition in [Partition::Shared, Partition::Anonymous, a.partition] {
        let v1 = key::variance(&stored, &req, partition);
        // Deterministic: the same request gives the same variance.
        assert_eq!(v1, key::variance(&stored, &req, partition));
    }
}
