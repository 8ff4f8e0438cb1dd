//! Path templates and the named route table: the one parser and matcher of the template syntax
//! every part of the gateway uses. Raster's routes are written like
//! `/organizations/{org}/libraries/{library}/assets`: a `{name}` matches exactly one non-empty
//! path segment and captures it. Invalidation scope templates add `{body.field}` (a top-level
//! field of a write's JSON body), which matches one segment like any parameter when a read is
//! checked against the scope. Route rules (TTLs and metric names), anonymous routes,
//! invalidation rules and their scopes all parse here, so a template means the same thing
//! everywhere.
//!
//! Hand-written rather than a router crate such as `matchit`: the tables are first-match-wins
//! lists a handful of rules long (a radix router picks the most specific route, not the first,
//! and has no "next match" for a rule whose method differs), redundant slashes must match
//! without normalising (allocating) the path first, and scopes match prefixes of a path. The
//! linear walk over a path split once is on par with `matchit` on the default table
//! (docs/BENCHMARKS.md, micro-benchmarks).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `{name}`: one segment of the path, captured.
    Param(String),
    /// `{body.field}` (scope templates only): one segment, taken from the write's JSON body.
    Body(String),
}

/// One piece of a template, as [`PathPattern::pieces`] yields it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    Literal(&'a str),
    Param(&'a str),
    Body(&'a str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    source: String,
    segments: Vec<Segment>,
}

/// Values captured by `{name}` segments, in pattern order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Captures<'a> {
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Captures<'a> {
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }
}

impl PathPattern {
    /// A route template: literals and `{name}` parameters.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        Self::parse_with(pattern, false)
    }

    /// An invalidation scope template: like [`Self::parse`], plus `{body.field}`.
    pub fn scope(template: &str) -> Result<Self, String> {
        Self::parse_with(template, true)
    }

    fn parse_with(pattern: &str, body: bool) -> Result<Self, String> {
        if !pattern.starts_with('/') {
            return Err(format!("{pattern:?} must start with '/'"));
        }
        let mut segments = Vec::new();
        for seg in split(pattern) {
            if let Some(inner) = seg.strip_prefix('{') {
                let name = inner
                    .strip_suffix('}')
                    .filter(|n| !n.is_empty() && !n.contains(['{', '}']))
                    .ok_or_else(|| format!("{pattern:?}: bad parameter segment {seg:?}"))?;
                segments.push(match name.strip_prefix("body.") {
                    None => Segment::Param(name.to_string()),
                    Some(_) if !body => {
                        return Err(format!(
                            "{pattern:?}: {seg} is only meaningful in invalidation scopes"
                        ))
                    }
                    Some("") => return Err(format!("{pattern:?}: empty body field in {seg}")),
                    Some(field) => Segment::Body(field.to_string()),
                });
            } else if seg.contains(['{', '}']) {
                return Err(format!("{pattern:?}: braces must enclose a whole segment"));
            } else {
                segments.push(Segment::Literal(seg.to_string()));
            }
        }
        Ok(Self {
            source: pattern.to_string(),
            segments,
        })
    }

    /// Matches a request path (without query). Empty segments (a trailing or doubled slash)
    /// are ignored.
    pub fn captures<'p, 's>(&'p self, path: &'s str) -> Option<Captures<'s>>
    where
        'p: 's,
    {
        let mut caps = Captures::default();
        let mut parts = split(path);
        for seg in &self.segments {
            let part = parts.next()?;
            match seg {
                Segment::Literal(lit) if lit == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => caps.pairs.push((name.as_str(), part)),
                Segment::Body(_) => {}
            }
        }
        if parts.next().is_some() {
            return None;
        }
        Some(caps)
    }

    /// Like [`Self::captures`] without collecting them: runs for every request, so it
    /// allocates nothing.
    pub fn matches(&self, path: &str) -> bool {
        let mut parts = split(path);
        for seg in &self.segments {
            match (seg, parts.next()) {
                (_, None) => return false,
                (Segment::Literal(lit), Some(part)) if lit != part => return false,
                _ => {}
            }
        }
        parts.next().is_none()
    }

    /// [`Self::matches`] against a path already split into its non-empty segments.
    fn matches_segments(&self, parts: &[&str]) -> bool {
        self.segments.len() == parts.len()
            && self.segments.iter().zip(parts).all(|(s, p)| match s {
                Segment::Literal(lit) => lit == p,
                Segment::Param(_) | Segment::Body(_) => true,
            })
    }

    pub fn pieces(&self) -> impl Iterator<Item = Piece<'_>> {
        self.segments.iter().map(|s| match s {
            Segment::Literal(l) => Piece::Literal(l),
            Segment::Param(n) => Piece::Param(n),
            Segment::Body(f) => Piece::Body(f),
        })
    }

    /// Number of segments: a deeper template is a more specific scope.
    pub fn depth(&self) -> usize {
        self.segments.len()
    }

    /// Whether both match exactly the same paths (parameter names aside).
    pub fn same_shape(&self, other: &Self) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(a, b)| match (a, b) {
                    (Segment::Literal(x), Segment::Literal(y)) => x == y,
                    (Segment::Literal(_), _) | (_, Segment::Literal(_)) => false,
                    _ => true,
                })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn split(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

/// The path of a request target without its query string.
pub fn path_only(target: &str) -> &str {
    target.split_once('?').map_or(target, |(p, _)| p)
}

/// Route names for metrics and logs: the cache route table's names, first match wins, `other`
/// for everything else. Names are a bounded set fixed at start, so they are safe as labels.
pub struct RouteNames {
    routes: Vec<(PathPattern, &'static str)>,
}

pub const OTHER_ROUTE: &str = "other";

fn intern(name: &str) -> &'static str {
    static NAMES: parking_lot::Mutex<Vec<&'static str>> = parking_lot::Mutex::new(Vec::new());
    let mut names = NAMES.lock();
    if let Some(n) = names.iter().find(|n| **n == name) {
        return n;
    }
    let n: &'static str = Box::leak(name.to_string().into_boxed_str());
    names.push(n);
    n
}

/// Segments a path is split into on the stack for a lookup; longer paths take the plain walk.
const MAX_SEGMENTS: usize = 16;

impl RouteNames {
    pub fn new<'a>(routes: impl IntoIterator<Item = (&'a PathPattern, &'a str)>) -> Self {
        let routes = routes
            .into_iter()
            // Leaked once per distinct name: a handful of config-sized strings that live as long
            // as the process, so every request can carry a `&'static str` label without
            // allocating (a config reload reuses the names it already has).
            .map(|(p, n)| (p.clone(), intern(n)))
            .collect();
        Self { routes }
    }

    /// The index of the first route matching `path` (the same index as in the table the
    /// names were built from) and its name.
    pub fn lookup(&self, path: &str) -> (Option<usize>, &'static str) {
        // Split once onto the stack, then each rule is a length check and a few compares
        // (rather than re-splitting the path for every rule it is tried against).
        let mut buf = [""; MAX_SEGMENTS];
        let mut n = 0;
        for seg in split(path) {
            if n == MAX_SEGMENTS {
                return self.found(self.routes.iter().position(|(p, _)| p.matches(path)));
            }
            buf[n] = seg;
            n += 1;
        }
        let parts = &buf[..n];
        self.found(
            self.routes
                .iter()
                .position(|(p, _)| p.matches_segments(parts)),
        )
    }

    fn found(&self, index: Option<usize>) -> (Option<usize>, &'static str) {
        match index {
            Some(i) => (Some(i), self.routes[i].1),
            None => (None, OTHER_ROUTE),
        }
    }

    pub fn name_for(&self, path: &str) -> &'static str {
        self.lookup(path).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn param_segments_capture_one_segment() {
        let p = PathPattern::parse("/organizations/{org}/libraries/{library}/assets").unwrap();
        let c = p
            .captures("/organizations/monogram-labs/libraries/barcelona/assets")
            .unwrap();
        assert_eq!(c.get("org"), Some("monogram-labs"));
        assert_eq!(c.get("library"), Some("barcelona"));
        assert!(p.matches("/organizations/o/libraries/l/assets/"));
        assert!(!p.matches("/organizations/o/libraries/l/assets/a1"));
        assert!(!p.matches("/organizations/o/libraries/l"));
        assert!(!p.matches("/organizations//libraries/l/assets"));
    }

    #[test]
    fn matches_agrees_with_captures() {
        let patterns = [
            "/me",
            "/organizations/{org}/libraries",
            "/organizations/{org}/libraries/{library}/assets/{asset}",
            "/a/{b}/c",
        ];
        let paths = [
            "/",
            "/me",
            "/me/",
            "/organizations/o/libraries",
            "/organizations/o/libraries/l/assets/a",
            "/organizations/o/libraries/l/assets",
            "/a/x/c",
            "/a/x/d",
            "/a//c",
            "/a/x/c/d",
        ];
        for p in patterns {
            let pat = PathPattern::parse(p).unwrap();
            for path in paths {
                assert_eq!(
                    pat.matches(path),
                    pat.captures(path).is_some(),
                    "{p} vs {path}"
                );
            }
        }
    }

    #[test]
    fn route_lookup_gives_first_match_index_and_name() {
        let a = PathPattern::parse("/organizations/{org}/libraries").unwrap();
        let b = PathPattern::parse("/organizations/{org}/{any}").unwrap();
        let names = RouteNames::new([(&a, "libraries"), (&b, "catch")]);
        assert_eq!(
            names.lookup("/organizations/o/libraries"),
            (Some(0), "libraries")
        );
        assert_eq!(names.lookup("/organizations/o/search"), (Some(1), "catch"));
        assert_eq!(names.lookup("/nope"), (None, OTHER_ROUTE));
    }

    #[test]
    fn lookup_agrees_with_matches_on_short_and_long_paths() {
        let long = format!("/a{}", "/x".repeat(20));
        let patterns = [
            PathPattern::parse("/a/{b}/c").unwrap(),
            PathPattern::parse("/me").unwrap(),
            PathPattern::parse(&format!("/a{}", "/{x}".repeat(20))).unwrap(),
        ];
        let names = RouteNames::new(patterns.iter().map(|p| (p, "r")));
        for path in [
            "/a/x/c",
            "//a//x/c/",
            "/me",
            "/me/x",
            "/",
            &long,
            &format!("{long}/y"),
        ] {
            assert_eq!(
                names.lookup(path).0,
                patterns.iter().position(|p| p.matches(path)),
                "{path}"
            );
        }
        assert_eq!(names.lookup(&long).0, Some(2));
    }

    #[test]
    fn literals_must_match_exactly() {
        let p = PathPattern::parse("/me").unwrap();
        assert!(p.matches("/me"));
        assert!(!p.matches("/mee"));
        assert!(!p.matches("/"));
    }

    #[test]
    fn malformed_patterns_are_rejected() {
        assert!(PathPattern::parse("me").is_err());
        assert!(PathPattern::parse("/a/{}/b").is_err());
        assert!(PathPattern::parse("/a/x{y}").is_err());
        assert!(PathPattern::parse("/a/{b{c}").is_err());
        assert!(PathPattern::scope("me").is_err());
        assert!(PathPattern::scope("/a/{body.}").is_err());
        assert!(PathPattern::scope("/a/{}").is_err());
    }

    #[test]
    fn body_fields_only_in_scopes_and_match_one_segment() {
        assert!(PathPattern::parse("/a/{body.id}").is_err());
        let s =
            PathPattern::scope("/organizations/{org}/libraries/{body.targetLibraryId}").unwrap();
        assert_eq!(
            s.pieces().collect::<Vec<_>>(),
            vec![
                Piece::Literal("organizations"),
                Piece::Param("org"),
                Piece::Literal("libraries"),
                Piece::Body("targetLibraryId"),
            ]
        );
        assert!(s.matches("/organizations/o/libraries/lisbon"));
        assert!(!s.matches("/organizations/o/libraries"));
        assert!(!s.matches("/organizations/o/libraries/lisbon/assets"));
        let c = s.captures("/organizations/o/libraries/lisbon").unwrap();
        assert_eq!(c.get("org"), Some("o"));
        assert_eq!(c.get("targetLibraryId"), None);
        let p = PathPattern::parse("/organizations/{x}/libraries/{library}").unwrap();
        assert!(s.same_shape(&p) && p.same_shape(&s));
        assert!(!s.same_shape(&PathPattern::parse("/organizations/{x}/tags/{y}").unwrap()));
        assert!(!s.same_shape(&PathPattern::parse("/organizations/{x}/libraries").unwrap()));
        assert_eq!(s.depth(), 4);
    }
}
