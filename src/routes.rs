//! Path patterns and the named route table. Raster's routes are written like
//! `/organizations/{org}/libraries/{library}/assets`: a `{name}` matches exactly one non-empty
//! path segment and captures it. The same matcher serves the edge (anonymous routes), the cache
//! (TTL rules and route names for metrics) and invalidation (scopes a write touches), so a route
//! means the same thing everywhere.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
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

    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + '_ {
        self.pairs.iter().copied()
    }
}

impl PathPattern {
    pub fn parse(pattern: &str) -> Result<Self, String> {
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
                segments.push(Segment::Param(name.to_string()));
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

    /// Matches a request path (without query). A trailing slash is ignored.
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

impl RouteNames {
    pub fn new<'a>(routes: impl IntoIterator<Item = (&'a PathPattern, &'a str)>) -> Self {
        let routes = routes
            .into_iter()
            // Leaked once at start: a handful of config-sized strings that live as long as the
            // process, so every request can carry a `&'static str` label without allocating.
            .map(|(p, n)| (p.clone(), &*Box::leak(n.to_string().into_boxed_str())))
            .collect();
        Self { routes }
    }

    /// The index of the first route matching `path` (the same index as in the table the
    /// names were built from) and its name.
    pub fn lookup(&self, path: &str) -> (Option<usize>, &'static str) {
        match self.routes.iter().position(|(p, _)| p.matches(path)) {
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
    }
}
