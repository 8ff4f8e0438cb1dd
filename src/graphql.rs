//! Raster's GraphQL endpoint through the gateway (`[graphql]`): one `POST` path, a Bearer key,
//! no `Api-Version`. It is never cached; what a request may change is read from its body, so
//! that a mutation invalidates the REST reads of the same data:
//!
//! - a query (or subscription) changes nothing;
//! - a mutation whose every top-level field names its library (an argument in
//!   `graphql.library_arguments`, given literally, as a variable, or inside an input object)
//!   touches those libraries;
//! - anything else — a mutation that names no library, a body over the inspection bound, one
//!   that is not JSON or whose document does not parse, an operation that cannot be picked —
//!   is taken as a mutation that may touch anything its key's organization can read.
//!
//! The organization of a key id is learned from the answers the gateway proxies (a 2xx under
//! `/organizations/{org}/…`, or `/me`'s `organizationId`) into a bounded map; a key never seen
//! falls back to invalidating every scope. The parser is `graphql-parser`.

use std::collections::BTreeMap;
use std::sync::Arc;

use graphql_parser::query::{
    parse_query, Definition, Document, OperationDefinition, Selection, SelectionSet, Value,
};
use serde_json::Value as Json;

use crate::edge::KeyId;

/// What a GraphQL request may change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A query: nothing.
    Read,
    /// A mutation naming these libraries (sorted, deduplicated).
    Libraries(Vec<String>),
    /// A mutation (or a body that cannot be read) that may touch anything.
    Unknown,
}

impl Effect {
    fn merge(self, other: Effect) -> Effect {
        match (self, other) {
            (Effect::Unknown, _) | (_, Effect::Unknown) => Effect::Unknown,
            (Effect::Read, e) | (e, Effect::Read) => e,
            (Effect::Libraries(mut a), Effect::Libraries(b)) => {
                a.extend(b);
                a.sort();
                a.dedup();
                Effect::Libraries(a)
            }
        }
    }
}

/// Fragment spreads followed at most this deep (a cycle is a validation error upstream).
const MAX_FRAGMENT_DEPTH: usize = 8;

/// Classifies a GraphQL request body (`None`: not inspected, over the bound).
pub fn classify(body: Option<&[u8]>, library_arguments: &[String]) -> Effect {
    let Some(body) = body else {
        return Effect::Unknown;
    };
    match serde_json::from_slice::<Json>(body) {
        Ok(Json::Object(o)) => classify_one(&o, library_arguments),
        // A batch: the union of its operations.
        Ok(Json::Array(items)) if !items.is_empty() => {
            items.iter().fold(Effect::Read, |acc, item| match item {
                Json::Object(o) => acc.merge(classify_one(o, library_arguments)),
                _ => Effect::Unknown,
            })
        }
        _ => Effect::Unknown,
    }
}

fn classify_one(req: &serde_json::Map<String, Json>, args: &[String]) -> Effect {
    let Some(Json::String(query)) = req.get("query") else {
        return Effect::Unknown;
    };
    let Ok(doc) = parse_query::<&str>(query) else {
        return Effect::Unknown;
    };
    let variables = match req.get("variables") {
        Some(Json::Object(v)) => Some(v),
        None | Some(Json::Null) => None,
        Some(_) => return Effect::Unknown,
    };
    let name = match req.get("operationName") {
        Some(Json::String(n)) => Some(n.as_str()),
        None | Some(Json::Null) => None,
        Some(_) => return Effect::Unknown,
    };
    let ops: Vec<&OperationDefinition<&str>> = doc
        .definitions
        .iter()
        .filter_map(|d| match d {
            Definition::Operation(op) => Some(op),
            Definition::Fragment(_) => None,
        })
        .collect();
    let chosen: Vec<&OperationDefinition<&str>> = match name {
        Some(n) => ops
            .into_iter()
            .filter(|op| op_name(op) == Some(n))
            .collect(),
        None => ops,
    };
    if chosen.is_empty() {
        return Effect::Unknown;
    }
    // With several operations and no name the origin runs none (an error), but which one the
    // client meant cannot be told: every candidate counts.
    chosen.iter().fold(Effect::Read, |acc, op| {
        acc.merge(operation_effect(op, &doc, variables, args))
    })
}

fn op_name<'a>(op: &OperationDefinition<'a, &'a str>) -> Option<&'a str> {
    match op {
        OperationDefinition::SelectionSet(_) => None,
        OperationDefinition::Query(q) => q.name,
        OperationDefinition::Mutation(m) => m.name,
        OperationDefinition::Subscription(s) => s.name,
    }
}

fn operation_effect<'a>(
    op: &OperationDefinition<'a, &'a str>,
    doc: &Document<'a, &'a str>,
    variables: Option<&serde_json::Map<String, Json>>,
    args: &[String],
) -> Effect {
    let OperationDefinition::Mutation(m) = op else {
        return Effect::Read;
    };
    let defaults: BTreeMap<&'a str, &Value<'a, &'a str>> = m
        .variable_definitions
        .iter()
        .filter_map(|v| v.default_value.as_ref().map(|d| (v.name, d)))
        .collect();
    let lookup = Lookup {
        variables,
        defaults: &defaults,
        args,
    };
    let mut libs = Vec::new();
    if !lookup.fields(&m.selection_set, doc, 0, &mut libs) || libs.is_empty() {
        return Effect::Unknown;
    }
    libs.sort();
    libs.dedup();
    Effect::Libraries(libs)
}

struct Lookup<'v, 'a> {
    variables: Option<&'v serde_json::Map<String, Json>>,
    defaults: &'v BTreeMap<&'a str, &'v Value<'a, &'a str>>,
    args: &'v [String],
}

impl<'a> Lookup<'_, 'a> {
    /// Collects the libraries every top-level field names; false when one names none.
    fn fields(
        &self,
        set: &SelectionSet<'a, &'a str>,
        doc: &Document<'a, &'a str>,
        depth: usize,
        out: &mut Vec<String>,
    ) -> bool {
        if depth > MAX_FRAGMENT_DEPTH {
            return false;
        }
        set.items.iter().all(|sel| match sel {
            Selection::Field(f) => {
                if f.name.starts_with("__") {
                    // `__typename`: changes nothing.
                    return true;
                }
                let before = out.len();
                for (_, v) in &f.arguments {
                    self.value(v, false, out);
                }
                for (name, v) in &f.arguments {
                    if self.args.iter().any(|a| a == name) {
                        self.value(v, true, out);
                    }
                }
                out.len() > before
            }
            Selection::InlineFragment(i) => self.fields(&i.selection_set, doc, depth + 1, out),
            Selection::FragmentSpread(s) => doc.definitions.iter().any(|d| match d {
                Definition::Fragment(f) if f.name == s.fragment_name => {
                    self.fields(&f.selection_set, doc, depth + 1, out)
                }
                _ => false,
            }),
        })
    }

    /// Library ids in a value: taken when `named` (the value of a library argument), else
    /// searched for inside input objects.
    fn value(&self, v: &Value<'a, &'a str>, named: bool, out: &mut Vec<String>) {
        match v {
            Value::String(s) if named => out.push(s.clone()),
            Value::Int(n) if named => {
                if let Some(n) = n.as_i64() {
                    out.push(n.to_string());
                }
            }
            Value::List(items) => items.iter().for_each(|i| self.value(i, named, out)),
            Value::Object(map) => {
                for (k, v) in map {
                    let named = self.args.iter().any(|a| a == k);
                    self.value(v, named, out);
                }
            }
            Value::Variable(name) => match self.variables.and_then(|vars| vars.get(*name)) {
                Some(j) => self.json(j, named, out),
                None => {
                    if let Some(d) = self.defaults.get(name) {
                        self.value(d, named, out);
                    }
                }
            },
            _ => {}
        }
    }

    fn json(&self, j: &Json, named: bool, out: &mut Vec<String>) {
        match j {
            Json::String(s) if named => out.push(s.clone()),
            Json::Number(n) if named => out.push(n.to_string()),
            Json::Array(items) => items.iter().for_each(|i| self.json(i, named, out)),
            Json::Object(map) => {
                for (k, v) in map {
                    let named = self.args.iter().any(|a| a == k);
                    self.json(v, named, out);
                }
            }
            _ => {}
        }
    }
}

/// Key id → organization, learned from responses; bounded (`graphql.max_known_keys`), least
/// recently used first out.
pub struct KnownOrgs {
    map: moka::sync::Cache<KeyId, Arc<str>>,
}

impl KnownOrgs {
    pub fn new(capacity: u64) -> Self {
        Self {
            map: moka::sync::Cache::new(capacity),
        }
    }

    pub fn learn(&self, key: KeyId, org: &str) {
        if org.is_empty() || org.len() > 256 {
            return;
        }
        if self.map.get(&key).as_deref() != Some(org) {
            self.map.insert(key, Arc::from(org));
        }
    }

    pub fn get(&self, key: &KeyId) -> Option<Arc<str>> {
        self.map.get(key)
    }
}

/// The organization named by a path under `/organizations/{org}/…` (a 2xx there for a key
/// says the key belongs to it).
pub fn org_of_path(path: &str) -> Option<&str> {
    let mut segs = path.split('/').filter(|s| !s.is_empty());
    (segs.next()? == "organizations").then_some(())?;
    segs.next()
}

/// The organization a `/me` answer names (`{"data":{"organizationId":…}}`).
pub fn me_organization(body: &[u8]) -> Option<String> {
    let v: Json = serde_json::from_slice(body).ok()?;
    v.get("data")?
        .get("organizationId")?
        .as_str()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> Vec<String> {
        vec!["libraryId".into(), "targetLibraryId".into()]
    }

    fn c(body: &str) -> Effect {
        classify(Some(body.as_bytes()), &args())
    }

    #[test]
    fn queries_change_nothing() {
        assert_eq!(
            c(r#"{"query":"{ viewer { organizationId } }"}"#),
            Effect::Read
        );
        assert_eq!(
            c(
                r#"{"query":"query Q($l: ID!) { assets(libraryId: $l) { id } }","variables":{"l":"x"}}"#
            ),
            Effect::Read
        );
    }

    #[test]
    fn mutations_name_their_libraries_literally_or_by_variable() {
        assert_eq!(
            c(
                r#"{"query":"mutation { updateAssetDescription(libraryId: \"barcelona\", assetId: \"a\", description: \"d\") { id } }"}"#
            ),
            Effect::Libraries(vec!["barcelona".into()])
        );
        assert_eq!(
            c(
                r#"{"query":"mutation M($l: ID!) { updateAssetDescription(libraryId: $l, assetId: \"a\", description: \"d\") { id } }","variables":{"l":"lisbon"}}"#
            ),
            Effect::Libraries(vec!["lisbon".into()])
        );
        assert_eq!(
            c(
                r#"{"query":"mutation M($i: In!) { transfer(input: $i) { id } }","variables":{"i":{"libraryId":"a","targetLibraryId":"b"}}}"#
            ),
            Effect::Libraries(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            c(
                r#"{"query":"mutation M($l: ID = \"dflt\") { updateAssetDescription(libraryId: $l) { id } }"}"#
            ),
            Effect::Libraries(vec!["dflt".into()])
        );
    }

    #[test]
    fn what_cannot_be_told_is_a_mutation_of_anything() {
        assert_eq!(
            c(r#"{"query":"mutation { createLibrary(name: \"x\") { id } }"}"#),
            Effect::Unknown
        );
        assert_eq!(
            c(r#"{"query":"mutation { a(libraryId: \"x\") { id } b { id } }"}"#),
            Effect::Unknown
        );
        assert_eq!(c(r#"{"query":"{ viewer { "}"#), Effect::Unknown);
        assert_eq!(c("not json"), Effect::Unknown);
        assert_eq!(c(r#"{"query": 3}"#), Effect::Unknown);
        assert_eq!(classify(None, &args()), Effect::Unknown);
        assert_eq!(
            c(
                r#"{"query":"query A { viewer { id } } mutation B { x { id } }","operationName":"C"}"#
            ),
            Effect::Unknown
        );
        // Two operations, no name: the mutation counts.
        assert_eq!(
            c(r#"{"query":"query A { viewer { id } } mutation B { x(libraryId: \"l\") { id } }"}"#),
            Effect::Libraries(vec!["l".into()])
        );
        // Named: only that one.
        assert_eq!(
            c(
                r#"{"query":"query A { viewer { id } } mutation B { x { id } }","operationName":"A"}"#
            ),
            Effect::Read
        );
    }

    #[test]
    fn fragments_and_batches() {
        assert_eq!(
            c(
                r#"{"query":"mutation { ...F } fragment F on Mutation { x(libraryId: \"l\") { id } }"}"#
            ),
            Effect::Libraries(vec!["l".into()])
        );
        assert_eq!(
            c(
                r#"[{"query":"{ viewer { id } }"},{"query":"mutation { x(libraryId: \"l\") { id } }"}]"#
            ),
            Effect::Libraries(vec!["l".into()])
        );
        assert_eq!(c(r#"[{"query":"{ viewer { id } }"}]"#), Effect::Read);
    }

    #[test]
    fn me_answers_name_the_organization() {
        assert_eq!(
            me_organization(br#"{"data":{"organizationId":"monogram-labs"}}"#).as_deref(),
            Some("monogram-labs")
        );
        assert_eq!(me_organization(b"{}"), None);
    }
}
