//! Invalidation by generations: nothing is searched or deleted, keys move on.
//!
//! Model:
//! - **Scopes** are path prefixes named by the invalidation rules' scope templates, e.g.
//!   `/organizations/{org}/libraries/{library}`, `/organizations/{org}`, `/me`.
//! - Every read has exactly one **own scope**: the most specific scope pattern that matches a
//!   prefix of its path (reads under a library → that library; the library list and search →
//!   the org; `/me` → `/me`; anything else → none). Its cache key carries that scope's
//!   generation, so a write to `barcelona` (which bumps `barcelona` and the org) never touches
//!   `lisbon` reads, while it does refresh the org's library list and search.
//! - The key also carries the **tree generation** of every prefix of the path (`/`, `/a`,
//!   `/a/b`, …). Only an admin purge bumps those, so purging `/organizations/o` invalidates
//!   everything below it, whatever the configured scopes.
//! - And the **URL generation** of its exact path and query (RFC 9111 §4.4: a successful
//!   unsafe request invalidates its target URI and its `Location` / `Content-Location`), bumped
//!   for every key id at once since the key id is not part of it.
//!
//! Generation values come from one process-wide counter, so a value is never reused. Each map
//! is bounded (moka); a name that falls out of a map reads as the map's **floor**, which is
//! raised to every value evicted by size or age. An evicted name therefore reads a value at
//! least as new as the one it had: eviction can only over-invalidate, never resurrect.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use http::Method;
use moka::notification::RemovalCause;

use crate::config::InvalidationRule;
use crate::metrics::{InvalidationReason, METRICS};
use crate::routes::{Captures, PathPattern, Piece};

/// Names remembered per generation map before the floor takes over.
const GENERATION_CAPACITY: u64 = 200_000;

/// Values with this bit are provisional: made by this instance for a bump whose fleet-wide
/// generation (a Redis sequence number, always below it) is not known yet. They are unique to
/// the process, so a key carrying one is never shared with another instance.
pub const PROVISIONAL: u64 = 1 << 62;

/// One name's generation: the newest fleet value known, and this instance's own bump while it
/// is not confirmed by Redis (it wins until then: the fleet value may predate the write).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Gen {
    fleet: u64,
    provisional: u64,
}

impl Gen {
    fn value(self) -> u64 {
        if self.provisional != 0 {
            self.provisional
        } else {
            self.fleet
        }
    }
}

/// A bounded map of name → generation with a floor for forgotten names.
pub struct GenMap {
    map: moka::sync::Cache<String, Gen>,
    floor: Arc<AtomicU64>,
    /// Set on the first bump: until then every read is the floor (0) without a lookup.
    used: AtomicBool,
}

impl GenMap {
    fn new(capacity: u64) -> Self {
        let floor = Arc::new(AtomicU64::new(0));
        let f = floor.clone();
        let map = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .eviction_listener(move |_k, v: Gen, cause| {
                // Replaced values are superseded by a newer one for the same name; only a
                // name that is really forgotten moves the floor.
                if matches!(cause, RemovalCause::Size | RemovalCause::Expired) {
                    f.fetch_max(v.value(), Ordering::AcqRel);
                }
            })
            .build();
        Self {
            map,
            floor,
            used: AtomicBool::new(false),
        }
    }

    pub fn get(&self, name: &str) -> u64 {
        if !self.used.load(Ordering::Acquire) {
            return 0;
        }
        self.map
            .get(name)
            .map(Gen::value)
            .unwrap_or_else(|| self.floor.load(Ordering::Acquire))
    }

    fn floor(&self) -> u64 {
        self.floor.load(Ordering::Acquire)
    }

    /// This instance's own bump: `generation` is provisional until [`Self::confirm`].
    fn set(&self, name: String, generation: u64) {
        self.used.store(true, Ordering::Release);
        let floor = self.floor();
        self.map.entry(name).and_upsert_with(|old| {
            let fleet = old.map_or(floor, |e| e.into_value().fleet);
            Gen {
                fleet,
                provisional: generation,
            }
        });
    }

    /// A fleet generation for `name` (another instance's bump, or a reconciliation): kept if
    /// newer. Returns whether the name now reads a different value.
    fn apply_fleet(&self, name: &str, generation: u64) -> bool {
        self.used.store(true, Ordering::Release);
        let floor = self.floor();
        let mut changed = false;
        self.map.entry_by_ref(name).and_upsert_with(|old| {
            let old = old.map_or(
                Gen {
                    fleet: floor,
                    provisional: 0,
                },
                |e| e.into_value(),
            );
            let new = Gen {
                fleet: old.fleet.max(generation),
                provisional: old.provisional,
            };
            changed = new.value() != old.value();
            new
        });
        changed
    }

    /// Redis gave `generation` to the bump this instance made as `provisional`.
    fn confirm(&self, name: &str, provisional: u64, generation: u64) {
        self.used.store(true, Ordering::Release);
        let floor = self.floor();
        self.map.entry_by_ref(name).and_upsert_with(|old| {
            let old = old.map_or(
                Gen {
                    fleet: floor,
                    provisional: 0,
                },
                |e| e.into_value(),
            );
            Gen {
                fleet: old.fleet.max(generation),
                // A newer own bump stays provisional until its own confirmation.
                provisional: if old.provisional == provisional {
                    0
                } else {
                    old.provisional
                },
            }
        });
    }

    /// Names the fleet forgot read at least `floor`.
    fn raise_floor(&self, floor: u64) {
        if floor > 0 {
            self.used.store(true, Ordering::Release);
            self.floor.fetch_max(floor, Ordering::AcqRel);
        }
    }
}

/// Which generation map a name lives in (and which Redis sorted set mirrors it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GenKind {
    Scope,
    Tree,
    Url,
}

impl GenKind {
    pub const ALL: [GenKind; 3] = [GenKind::Scope, GenKind::Tree, GenKind::Url];

    pub fn as_str(self) -> &'static str {
        match self {
            GenKind::Scope => "scope",
            GenKind::Tree => "tree",
            GenKind::Url => "url",
        }
    }
}

/// What rendering a template gave.
#[derive(Debug, PartialEq, Eq)]
enum Rendered {
    /// A concrete scope path.
    Scope(String),
    /// A piece could not be resolved (no such capture, body missing or not a plain segment):
    /// the prefix before it is purged as a whole tree, which is always safe.
    Tree(String),
}

fn plain_segment(v: &str) -> bool {
    !v.is_empty() && v != "." && v != ".." && !v.contains(['/', '?', '#'])
}

fn render(t: &PathPattern, caps: &Captures<'_>, body: Option<&serde_json::Value>) -> Rendered {
    let mut out = String::new();
    for p in t.pieces() {
        let number;
        let v = match p {
            Piece::Literal(l) => Some(l),
            Piece::Param(n) => caps.get(n),
            Piece::Body(f) => match body.and_then(|b| b.get(f)) {
                Some(serde_json::Value::String(s)) => Some(s.as_str()),
                Some(serde_json::Value::Number(n)) => {
                    number = n.to_string();
                    Some(number.as_str())
                }
                _ => None,
            },
        };
        match v {
            Some(v) if plain_segment(v) => {
                out.push('/');
                if matches!(p, Piece::Body(_)) {
                    // A body field is data, not path text: the library `%2E%2E` is read at
                    // `/libraries/%252E%252E`, and must not become `..` when the scope is
                    // normalised (found by the `write_body` fuzz target's property).
                    push_segment_encoded(&mut out, v);
                } else {
                    out.push_str(v);
                }
            }
            _ => return Rendered::Tree(if out.is_empty() { "/".into() } else { out }),
        }
    }
    Rendered::Scope(if out.is_empty() { "/".into() } else { out })
}

/// Appends `v` as one path segment: unreserved characters, sub-delims, `:` and `@` as they
/// are (RFC 3986 `pchar`), every other byte (`%` included) as an upper-case `%XX` escape, which
/// is the spelling the edge's path canonicaliser leaves in a read's path.
fn push_segment_encoded(out: &mut String, v: &str) {
    for &b in v.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// Normalises a path to `/a/b` form (no empty segments, no trailing slash, percent-encoded
/// unreserved characters decoded per RFC 3986 §6.2.2.2), so `/…/libraries/%62arcelona` and
/// `/…/libraries/barcelona/` name the same scope.
pub fn normalize(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        push_decoded_unreserved(&mut out, seg);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Appends `seg` with `%XX` escapes of unreserved characters (ALPHA, DIGIT, `-._~`) decoded;
/// other escapes are kept as they are (they may be significant).
pub fn push_decoded_unreserved(out: &mut String, seg: &str) {
    if !seg.contains('%') {
        out.push_str(seg);
        return;
    }
    let b = seg.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                let c = (h * 16 + l) as u8;
                if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                    out.push(c as char);
                    i += 3;
                    continue;
                }
            }
        }
        // Copy one whole UTF-8 character.
        let ch_len = seg[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&seg[i..i + ch_len]);
        i += ch_len;
    }
}

pub struct Invalidation {
    counter: AtomicU64,
    scopes: GenMap,
    trees: GenMap,
    urls: GenMap,
}

/// The configured write rules and the read-side scope patterns derived from them: the part of
/// invalidation a config reload replaces (the generations stay, in [`Invalidation`]).
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<InvalidationRule>,
    /// Read-side scope patterns, most specific (longest) first.
    scope_patterns: Vec<PathPattern>,
}

impl Rules {
    /// Built from the configured rules only: the embedded default configuration carries
    /// Raster's write routes, and a file that lists no rules (`invalidation = []`) gets none,
    /// leaving the target URI and `Location` invalidation.
    pub fn new(configured: &[InvalidationRule]) -> Self {
        let rules = configured.to_vec();
        // Scope templates match reads like route templates: `{body.x}` is one segment.
        let mut scope_patterns: Vec<PathPattern> = Vec::new();
        for t in rules.iter().flat_map(|r| r.scopes.iter()) {
            if !scope_patterns.iter().any(|q| q.same_shape(t)) {
                scope_patterns.push(t.clone());
            }
        }
        scope_patterns.sort_by_key(|p| std::cmp::Reverse(p.depth()));
        Self {
            rules,
            scope_patterns,
        }
    }
}

/// What a write invalidated, for logs and tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Bumped {
    pub scopes: Vec<String>,
    pub trees: Vec<String>,
    pub urls: Vec<String>,
    /// The provisional values set, in the order scopes, trees, urls.
    pub provisional: Vec<u64>,
}

impl Default for Invalidation {
    fn default() -> Self {
        Self::new()
    }
}

impl Invalidation {
    /// Empty generation tables; the rules come with each call ([`Rules`]).
    pub fn new() -> Self {
        Self {
            counter: AtomicU64::new(0),
            scopes: GenMap::new(GENERATION_CAPACITY),
            trees: GenMap::new(GENERATION_CAPACITY),
            urls: GenMap::new(GENERATION_CAPACITY),
        }
    }

    /// A fresh provisional value (see [`PROVISIONAL`]): never reused in this process.
    fn next(&self) -> u64 {
        PROVISIONAL | (self.counter.fetch_add(1, Ordering::AcqRel) + 1)
    }

    fn map(&self, kind: GenKind) -> &GenMap {
        match kind {
            GenKind::Scope => &self.scopes,
            GenKind::Tree => &self.trees,
            GenKind::Url => &self.urls,
        }
    }

    /// The name as its map keys it (scopes and trees are normalised paths).
    pub fn normalized(kind: GenKind, name: &str) -> String {
        match kind {
            GenKind::Scope | GenKind::Tree => normalize(name),
            GenKind::Url => name.to_string(),
        }
    }

    /// A fleet generation for `name` (see [`GenMap`]); true when reads of it change.
    pub fn apply_fleet(&self, kind: GenKind, name: &str, generation: u64) -> bool {
        self.map(kind)
            .apply_fleet(&Self::normalized(kind, name), generation)
    }

    /// Redis numbered this instance's bump `provisional` of `name` as `generation`.
    pub fn confirm(&self, kind: GenKind, name: &str, provisional: u64, generation: u64) {
        self.map(kind)
            .confirm(&Self::normalized(kind, name), provisional, generation);
    }

    /// Names the fleet no longer remembers read at least `floor`.
    pub fn raise_floor(&self, kind: GenKind, floor: u64) {
        self.map(kind).raise_floor(floor);
    }

    /// The generation `name` reads now.
    pub fn current(&self, kind: GenKind, name: &str) -> u64 {
        self.map(kind).get(&Self::normalized(kind, name))
    }

    /// The most specific configured scope that is a prefix of `path`, normalised.
    pub fn own_scope(&self, rules: &Rules, path: &str) -> Option<String> {
        // Runs on every cacheable request: try the prefixes as slices of `path` (longest
        // first) and allocate only for the one returned. `PathPattern::matches` ignores empty
        // segments, so a slice ending anywhere inside a run of '/' behaves like its normal form.
        let mut ends: Vec<usize> = Vec::with_capacity(8);
        let bytes = path.as_bytes();
        for (i, b) in bytes.iter().enumerate() {
            if *b == b'/' && i > 0 && bytes[i - 1] != b'/' {
                ends.push(i);
            }
        }
        if bytes.last().is_some_and(|b| *b != b'/') {
            ends.push(bytes.len());
        }
        for &end in ends.iter().rev() {
            let prefix = &path[..end];
            if rules.scope_patterns.iter().any(|p| p.matches(prefix)) {
                return Some(normalize(prefix));
            }
        }
        rules
            .scope_patterns
            .iter()
            .any(|p| p.matches("/"))
            .then(|| "/".to_string())
    }

    /// The generations a read's key carries: own scope, every prefix's tree, the exact URL.
    pub fn generations(&self, rules: &Rules, path: &str, path_and_query: &str, out: &mut Vec<u64>) {
        out.push(
            self.own_scope(rules, path)
                .map_or(0, |s| self.scopes.get(&s)),
        );
        // One tree generation per prefix, always (the key layout must not change when the
        // first purge happens); the lookups are skipped while no purge ever happened.
        out.push(self.trees.get("/"));
        if self.trees.used.load(Ordering::Acquire) {
            let mut prefix = String::with_capacity(path.len());
            for seg in path.split('/').filter(|s| !s.is_empty()) {
                prefix.push('/');
                push_decoded_unreserved(&mut prefix, seg);
                out.push(self.trees.get(&prefix));
            }
        } else {
            out.extend(path.split('/').filter(|s| !s.is_empty()).map(|_| 0));
        }
        out.push(self.urls.get(path_and_query));
    }

    /// Bumps return the provisional value they set, for the fleet link to confirm.
    pub fn bump_scope(&self, scope: &str) -> u64 {
        let g = self.next();
        self.scopes.set(normalize(scope), g);
        g
    }

    pub fn bump_tree(&self, prefix: &str) -> u64 {
        let g = self.next();
        self.trees.set(normalize(prefix), g);
        g
    }

    pub fn bump_url(&self, path_and_query: &str) -> u64 {
        let g = self.next();
        self.urls.set(path_and_query.to_string(), g);
        g
    }

    /// Applies a successful write: the scopes of the first matching rule (or, with no rule,
    /// the write path's own scope), its target URI and the given `Location`-style URIs.
    pub fn on_write(
        &self,
        rules: &Rules,
        method: &Method,
        path: &str,
        path_and_query: &str,
        body: Option<&[u8]>,
        locations: &[String],
    ) -> Bumped {
        let mut bumped = Bumped::default();
        let rule = rules.rules.iter().find_map(|r| {
            if r.method.as_ref().is_some_and(|m| m != method) {
                return None;
            }
            r.pattern.captures(path).map(|c| (r, c))
        });
        match rule {
            Some((rule, caps)) => {
                let needs_body = rule
                    .scopes
                    .iter()
                    .any(|t| t.pieces().any(|p| matches!(p, Piece::Body(_))));
                let json = if needs_body {
                    body.and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                } else {
                    None
                };
                for t in &rule.scopes {
                    match render(t, &caps, json.as_ref()) {
                        Rendered::Scope(s) => bumped.scopes.push(s),
                        Rendered::Tree(s) => bumped.trees.push(s),
                    }
                }
            }
            None => {
                if let Some(s) = self.own_scope(rules, path) {
                    bumped.scopes.push(s);
                }
            }
        }
        bumped.scopes.dedup();
        for s in &bumped.scopes {
            bumped.provisional.push(self.bump_scope(s));
            METRICS
                .cache_invalidations
                .with_label_values(&[InvalidationReason::Write.as_str()])
                .inc();
        }
        for t in &bumped.trees {
            bumped.provisional.push(self.bump_tree(t));
            METRICS
                .cache_invalidations
                .with_label_values(&[InvalidationReason::Write.as_str()])
                .inc();
        }
        bumped.urls.push(path_and_query.to_string());
        bumped.urls.extend(locations.iter().cloned());
        bumped.urls.dedup();
        for u in &bumped.urls {
            bumped.provisional.push(self.bump_url(u));
            METRICS
                .cache_invalidations
                .with_label_values(&[InvalidationReason::Location.as_str()])
                .inc();
        }
        bumped
    }
}

/// What a GraphQL mutation touches, as [`crate::graphql`] read it from the request.
#[derive(Debug, Clone, Copy)]
pub struct GraphqlWrite<'a> {
    /// The writing key's organization, when known.
    pub org: Option<&'a str>,
    /// The libraries it names; `None` when that cannot be told.
    pub libraries: Option<&'a [String]>,
    /// `graphql.library_scopes` (`{org}`, `{library}`).
    pub library_scopes: &'a [PathPattern],
    /// `graphql.organization_scopes` (`{org}`), invalidated as trees.
    pub organization_scopes: &'a [PathPattern],
}

/// A template rendered from GraphQL data: every parameter is data (encoded as one segment,
/// like a `{body.field}`), and one that is missing or not a plain segment leaves the prefix
/// before it as a tree.
fn render_data(t: &PathPattern, values: &[(&str, &str)]) -> Rendered {
    let mut out = String::new();
    for p in t.pieces() {
        match p {
            Piece::Literal(l) => {
                out.push('/');
                out.push_str(l);
            }
            Piece::Param(n) | Piece::Body(n) => {
                match values.iter().find(|(k, _)| *k == n).map(|(_, v)| *v) {
                    Some(v) if plain_segment(v) => {
                        out.push('/');
                        push_segment_encoded(&mut out, v);
                    }
                    _ => return Rendered::Tree(if out.is_empty() { "/".into() } else { out }),
                }
            }
        }
    }
    Rendered::Scope(if out.is_empty() { "/".into() } else { out })
}

impl Invalidation {
    /// Applies a successful GraphQL mutation, for every key: the library scopes of each named
    /// library (and the organization's), or, when no library can be told, the organization's
    /// trees; with the organization unknown, everything (the tree `/`).
    pub fn on_graphql(&self, w: &GraphqlWrite<'_>) -> Bumped {
        let mut bumped = Bumped::default();
        match (w.org, w.libraries) {
            (None, _) => bumped.trees.push("/".to_string()),
            (Some(org), Some(libs)) if !libs.is_empty() => {
                for lib in libs {
                    for t in w.library_scopes {
                        match render_data(t, &[("org", org), ("library", lib)]) {
                            Rendered::Scope(s) => bumped.scopes.push(s),
                            Rendered::Tree(s) => bumped.trees.push(s),
                        }
                    }
                }
            }
            (Some(org), _) => {
                for t in w.organization_scopes {
                    let (Rendered::Scope(s) | Rendered::Tree(s)) = render_data(t, &[("org", org)]);
                    bumped.trees.push(s);
                }
            }
        }
        bumped.scopes.sort();
        bumped.scopes.dedup();
        bumped.trees.sort();
        bumped.trees.dedup();
        for s in &bumped.scopes {
            bumped.provisional.push(self.bump_scope(s));
        }
        for t in &bumped.trees {
            bumped.provisional.push(self.bump_tree(t));
        }
        METRICS
            .cache_invalidations
            .with_label_values(&[InvalidationReason::Graphql.as_str()])
            .inc_by((bumped.scopes.len() + bumped.trees.len()) as u64);
        bumped
    }
}

/// The path and query of a `Location` / `Content-Location` value when it names the same
/// origin (RFC 9111 §4.4 forbids invalidating other hosts' URIs on their behalf).
pub fn same_origin_target(value: &str, authority: &str, base_path: &str) -> Option<String> {
    let value = value.trim();
    if value.starts_with("//") {
        return None;
    }
    if value.starts_with('/') {
        return Some(value.split('#').next().unwrap_or(value).to_string());
    }
    if let Ok(u) = url::Url::parse(value) {
        let host = match u.port() {
            Some(p) => format!("{}:{p}", u.host_str()?),
            None => u.host_str()?.to_string(),
        };
        if !host.eq_ignore_ascii_case(authority) {
            return None;
        }
        let mut out = u.path().to_string();
        if let Some(q) = u.query() {
            out.push('?');
            out.push_str(q);
        }
        return Some(out);
    }
    // A relative reference: resolve against the request path.
    let base = url::Url::parse("http://x").ok()?.join(base_path).ok()?;
    let u = base.join(value).ok()?;
    let mut out = u.path().to_string();
    if let Some(q) = u.query() {
        out.push('?');
        out.push_str(q);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generations with their rules, as the cache holds them for one request.
    struct Inv {
        gens: Invalidation,
        rules: Rules,
    }

    impl Inv {
        fn new(rules: &[InvalidationRule]) -> Self {
            Self {
                gens: Invalidation::new(),
                rules: Rules::new(rules),
            }
        }
        fn own_scope(&self, path: &str) -> Option<String> {
            self.gens.own_scope(&self.rules, path)
        }
        fn on_write(
            &self,
            method: &Method,
            path: &str,
            pq: &str,
            body: Option<&[u8]>,
            locations: &[String],
        ) -> Bumped {
            self.gens
                .on_write(&self.rules, method, path, pq, body, locations)
        }
        fn bump_tree(&self, prefix: &str) {
            self.gens.bump_tree(prefix);
        }
        fn on_graphql(&self, w: &GraphqlWrite<'_>) -> Bumped {
            self.gens.on_graphql(w)
        }
        fn bump_url(&self, pq: &str) {
            self.gens.bump_url(pq);
        }
    }

    /// The rules of the embedded default configuration: Raster's write routes.
    fn inv() -> Inv {
        let file = crate::config::parse("", "test", &[]).unwrap();
        let settings = crate::config::validate(file).unwrap();
        Inv::new(&settings.cache.invalidation)
    }

    fn gens(i: &Inv, path: &str) -> Vec<u64> {
        let mut v = Vec::new();
        i.gens.generations(&i.rules, path, path, &mut v);
        v
    }

    const BCN: &str = "/organizations/o/libraries/barcelona/assets";
    const LIS: &str = "/organizations/o/libraries/lisbon/assets";
    const LIST: &str = "/organizations/o/libraries";
    const SEARCH: &str = "/organizations/o/search/assets";

    #[test]
    fn own_scopes() {
        let i = inv();
        assert_eq!(
            i.own_scope(BCN).as_deref(),
            Some("/organizations/o/libraries/barcelona")
        );
        assert_eq!(i.own_scope(LIST).as_deref(), Some("/organizations/o"));
        assert_eq!(i.own_scope(SEARCH).as_deref(), Some("/organizations/o"));
        assert_eq!(i.own_scope("/me").as_deref(), Some("/me"));
        assert_eq!(i.own_scope("/other"), None);
        // Redundant slashes name the same scope.
        assert_eq!(
            i.own_scope("//organizations//o/libraries/barcelona/assets/")
                .as_deref(),
            Some("/organizations/o/libraries/barcelona")
        );
        assert_eq!(i.own_scope("/me/").as_deref(), Some("/me"));
        // Percent-encoded unreserved characters name the same scope.
        assert_eq!(
            i.own_scope("/organizations/o/libraries/%62arcelona/assets")
                .as_deref(),
            Some("/organizations/o/libraries/barcelona")
        );
    }

    #[test]
    fn no_rules_leave_only_the_target_uri_and_locations() {
        // `cache.invalidation = []`: no scopes at all, so nothing but the written URL and
        // its Location are invalidated (RFC 9111 §4.4).
        let i = Inv::new(&[]);
        assert_eq!(i.own_scope(BCN), None);
        let (b, list) = (gens(&i, BCN), gens(&i, LIST));
        let w = i.on_write(
            &Method::POST,
            BCN,
            BCN,
            None,
            &["/organizations/o/libraries/barcelona/assets/a9".to_string()],
        );
        assert!(w.scopes.is_empty() && w.trees.is_empty(), "{w:?}");
        assert_eq!(
            w.urls,
            vec![BCN, "/organizations/o/libraries/barcelona/assets/a9"]
        );
        assert_eq!(gens(&i, LIST), list);
        let after = gens(&i, BCN);
        assert_ne!(after, b);
        // Only the URL generation (the last one) moved.
        assert_eq!(after[..after.len() - 1], b[..b.len() - 1]);
    }

    #[test]
    fn normalize_decodes_only_unreserved_escapes() {
        assert_eq!(normalize("/a/%62%2Dc/"), "/a/b-c");
        assert_eq!(normalize("/a/%2F/x"), "/a/%2F/x");
        assert_eq!(normalize("/a/%zz/%4"), "/a/%zz/%4");
        assert_eq!(normalize("/ä/%41"), "/ä/A");
    }

    #[test]
    fn asset_write_touches_its_library_and_org_only() {
        let i = inv();
        let (b, l, list, me) = (
            gens(&i, BCN),
            gens(&i, LIS),
            gens(&i, LIST),
            gens(&i, "/me"),
        );
        let w = i.on_write(
            &Method::POST,
            "/organizations/o/libraries/barcelona/assets/tag",
            "/organizations/o/libraries/barcelona/assets/tag",
            None,
            &[],
        );
        assert_eq!(
            w.scopes,
            vec!["/organizations/o/libraries/barcelona", "/organizations/o"]
        );
        assert_ne!(gens(&i, BCN), b);
        assert_eq!(gens(&i, LIS), l);
        assert_ne!(gens(&i, LIST), list);
        assert_eq!(gens(&i, "/me"), me);
    }

    #[test]
    fn transfer_touches_both_libraries() {
        let i = inv();
        let l = gens(&i, LIS);
        let w = i.on_write(
            &Method::POST,
            "/organizations/o/libraries/barcelona/assets/transfer",
            "/organizations/o/libraries/barcelona/assets/transfer",
            Some(br#"{"targetLibraryId":"lisbon","assetIds":["a"]}"#),
            &[],
        );
        assert!(w
            .scopes
            .contains(&"/organizations/o/libraries/lisbon".to_string()));
        assert_ne!(gens(&i, LIS), l);
    }

    #[test]
    fn body_fields_are_encoded_as_one_segment() {
        // Fuzz regression (write_body): `%2E%2E` in a body rendered a scope that normalised to
        // `/organizations/o/libraries/..`, which no read can have.
        let i = inv();
        let odd = "/organizations/o/libraries/%252E%252E/assets";
        let (l, o) = (gens(&i, LIS), gens(&i, odd));
        let w = i.on_write(
            &Method::POST,
            "/organizations/o/libraries/barcelona/assets/transfer",
            "/organizations/o/libraries/barcelona/assets/transfer",
            Some(br#"{"targetLibraryId":"%2E%2E"}"#),
            &[],
        );
        assert!(w
            .scopes
            .contains(&"/organizations/o/libraries/%252E%252E".to_string()));
        assert_ne!(gens(&i, odd), o, "the library named %2E%2E is invalidated");
        assert_eq!(gens(&i, LIS), l, "no other library is");
        for s in &w.scopes {
            assert!(normalize(s).split('/').all(|seg| seg != ".." && seg != "."));
        }
    }

    #[test]
    fn transfer_without_readable_body_purges_the_org_libraries_tree() {
        let i = inv();
        let l = gens(&i, LIS);
        let w = i.on_write(
            &Method::POST,
            "/organizations/o/libraries/barcelona/assets/transfer",
            "/organizations/o/libraries/barcelona/assets/transfer",
            Some(b"not json"),
            &[],
        );
        assert_eq!(w.trees, vec!["/organizations/o/libraries"]);
        assert_ne!(gens(&i, LIS), l);
    }

    #[test]
    fn library_create_touches_me_and_org() {
        let i = inv();
        let (me, list, b) = (gens(&i, "/me"), gens(&i, LIST), gens(&i, BCN));
        i.on_write(&Method::POST, LIST, LIST, None, &[]);
        assert_ne!(gens(&i, "/me"), me);
        assert_ne!(gens(&i, LIST), list);
        assert_eq!(gens(&i, BCN), b);
    }

    #[test]
    fn tree_purge_invalidates_everything_below() {
        let i = inv();
        let (b, l, me) = (gens(&i, BCN), gens(&i, LIS), gens(&i, "/me"));
        i.bump_tree("/organizations/o/");
        assert_ne!(gens(&i, BCN), b);
        assert_ne!(gens(&i, LIS), l);
        assert_eq!(gens(&i, "/me")[0], me[0]);
    }

    #[test]
    fn url_generation_and_locations() {
        let i = inv();
        let before = gens(&i, "/x/y");
        i.bump_url("/x/y");
        assert_ne!(gens(&i, "/x/y"), before);
        assert_eq!(
            same_origin_target("https://api.raster.app/a/b?c=1", "api.raster.app", "/"),
            Some("/a/b?c=1".into())
        );
        assert_eq!(
            same_origin_target("https://evil/a", "api.raster.app", "/"),
            None
        );
        assert_eq!(
            same_origin_target("c", "h", "/a/b").as_deref(),
            Some("/a/c")
        );
    }

    #[test]
    fn own_bump_stays_provisional_until_redis_numbers_it() {
        let m = GenMap::new(100);
        assert!(m.apply_fleet("s", 10));
        assert_eq!(m.get("s"), 10);
        m.set("s".into(), PROVISIONAL | 1);
        assert_eq!(m.get("s"), PROVISIONAL | 1);
        // Another instance's later bump arrives before our confirmation: still ours (the
        // fleet value might predate our write), but remembered.
        m.apply_fleet("s", 12);
        assert_eq!(m.get("s"), PROVISIONAL | 1);
        // Our confirmation (an earlier number) leaves the newest fleet value.
        m.confirm("s", PROVISIONAL | 1, 11);
        assert_eq!(m.get("s"), 12);
        // Older fleet values never move a name back.
        assert!(!m.apply_fleet("s", 5));
        assert_eq!(m.get("s"), 12);
        // A confirmation of an older own bump keeps a newer provisional one.
        m.set("s".into(), PROVISIONAL | 2);
        m.set("s".into(), PROVISIONAL | 3);
        m.confirm("s", PROVISIONAL | 2, 13);
        assert_eq!(m.get("s"), PROVISIONAL | 3);
        m.confirm("s", PROVISIONAL | 3, 14);
        assert_eq!(m.get("s"), 14);
    }

    #[test]
    fn fleet_floor_applies_to_unknown_names_only_upwards() {
        let m = GenMap::new(100);
        m.apply_fleet("known", 50);
        m.raise_floor(40);
        assert_eq!(m.get("unknown"), 40);
        assert_eq!(m.get("known"), 50);
        // A fleet value below the floor for an unknown name reads the floor.
        m.apply_fleet("other", 30);
        assert_eq!(m.get("other"), 40);
        m.raise_floor(20);
        assert_eq!(m.get("unknown"), 40);
    }

    #[test]
    fn graphql_mutations_bump_library_org_or_everything() {
        let i = inv();
        let lib = [
            PathPattern::parse("/organizations/{org}/libraries/{library}").unwrap(),
            PathPattern::parse("/organizations/{org}").unwrap(),
        ];
        let org = [
            PathPattern::parse("/organizations/{org}").unwrap(),
            PathPattern::parse("/me").unwrap(),
        ];
        let w = |o: Option<&'static str>, l: Option<&'static [String]>| GraphqlWrite {
            org: o,
            libraries: l,
            library_scopes: &lib,
            organization_scopes: &org,
        };
        let (b, l, list, me) = (
            gens(&i, BCN),
            gens(&i, LIS),
            gens(&i, LIST),
            gens(&i, "/me"),
        );
        let bcn: &'static [String] = Box::leak(Box::new(["barcelona".to_string()]));
        let got = i.on_graphql(&w(Some("o"), Some(bcn)));
        assert_eq!(
            got.scopes,
            vec!["/organizations/o", "/organizations/o/libraries/barcelona"]
        );
        assert_ne!(gens(&i, BCN), b);
        assert_eq!(gens(&i, LIS), l);
        assert_ne!(gens(&i, LIST), list);
        assert_eq!(gens(&i, "/me"), me);
        let l = gens(&i, LIS);
        let got = i.on_graphql(&w(Some("o"), None));
        assert_eq!(got.trees, vec!["/me", "/organizations/o"]);
        assert_ne!(gens(&i, LIS), l);
        assert_ne!(gens(&i, "/me"), me);
        let other = gens(&i, "/organizations/p/libraries/x/assets");
        i.on_graphql(&w(Some("o"), None));
        assert_eq!(gens(&i, "/organizations/p/libraries/x/assets"), other);
        i.on_graphql(&w(None, Some(bcn)));
        assert_ne!(gens(&i, "/organizations/p/libraries/x/assets"), other);
        // A library id is data: one that is not a plain segment purges the libraries tree
        // instead of naming another path; an escape stays one segment.
        let odd: &'static [String] =
            Box::leak(Box::new(["../x".to_string(), "%2E%2E".to_string()]));
        let got = i.on_graphql(&w(Some("o"), Some(odd)));
        assert_eq!(got.trees, vec!["/organizations/o/libraries"], "{got:?}");
        assert!(got
            .scopes
            .contains(&"/organizations/o/libraries/%252E%252E".to_string()));
    }

    #[test]
    fn evicted_names_never_resurrect_an_old_generation() {
        let m = GenMap::new(4);
        for i in 0..100u64 {
            m.set(format!("n{i}"), i + 1);
            m.map.run_pending_tasks();
        }
        m.map.run_pending_tasks();
        // Whatever was forgotten reads at least its last value.
        for i in 0..100u64 {
            assert!(
                m.get(&format!("n{i}")) > i,
                "n{i} reads an older generation"
            );
        }
    }
}
