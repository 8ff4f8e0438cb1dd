//! Raster's GraphQL API over the same fixture data: `POST /` with `Authorization: Bearer …` and
//! no `Api-Version`. Queries `viewer`, `libraries`, `assets(libraryId, page, pageSize, tags)`,
//! `asset(libraryId, id)`; mutation `updateAssetDescription(libraryId, assetId, description)`.
//! Answers follow GraphQL over HTTP with `application/json`: a request that is JSON gets 200,
//! its errors in `{"errors":[{"message","locations","path","extensions":{"code"}}]}` beside
//! `data` (null when the document does not parse or validate); a body that is not a JSON
//! request object gets 400. A missing or unknown key is 401 with the same error shape.
//!
//! The executor is hand-written over the fixture (no schema library): it resolves the handful
//! of fields above, with aliases, variables, `__typename`, fragments, and the same checks as the
//! REST routes (library reach, write access).

use graphql_parser::query::{
    parse_query, Definition, Document, Field, OperationDefinition, Selection, SelectionSet, Value,
};
use graphql_parser::Pos;
use parking_lot::RwLock;
use serde_json::{json, Map, Value as Json};

use super::routes::{check_library, ApiError};
use super::state::{Access, ApiKey, Data};

/// An HTTP answer: status, JSON body, whether the data changed.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub mutated: bool,
}

fn answer(status: u16, v: Json, mutated: bool) -> Answer {
    Answer {
        status,
        body: serde_json::to_vec(&v).unwrap_or_default(),
        mutated,
    }
}

fn error(message: impl Into<String>, code: &str, pos: Option<Pos>, path: &[String]) -> Json {
    let mut e = json!({"message": message.into(), "extensions": {"code": code}});
    if let Some(p) = pos {
        e["locations"] = json!([{"line": p.line, "column": p.column}]);
    }
    if !path.is_empty() {
        e["path"] = json!(path);
    }
    e
}

/// One GraphQL request.
pub fn handle(data: &RwLock<Data>, token: Option<&str>, body: &[u8]) -> Answer {
    let Some(token) = token else {
        return answer(
            401,
            json!({"errors": [error("Send an API key as Authorization: Bearer <key>.", "UNAUTHENTICATED", None, &[])]}),
            false,
        );
    };
    let Some(key) = data.read().keys.get(token).cloned() else {
        return answer(
            401,
            json!({"errors": [error("The API key is not valid.", "INVALID_API_KEY", None, &[])]}),
            false,
        );
    };
    let req: Map<String, Json> = match serde_json::from_slice(body) {
        Ok(Json::Object(m)) => m,
        _ => {
            return answer(
                400,
                json!({"errors": [error("The request body must be a JSON object with a \"query\".", "BAD_REQUEST", None, &[])]}),
                false,
            )
        }
    };
    let Some(Json::String(query)) = req.get("query") else {
        return answer(
            400,
            json!({"errors": [error("\"query\" must be a string.", "BAD_REQUEST", None, &[])]}),
            false,
        );
    };
    let doc = match parse_query::<&str>(query) {
        Ok(d) => d,
        Err(e) => {
            return answer(
                200,
                json!({"errors": [error(format!("Syntax Error: {e}"), "GRAPHQL_PARSE_FAILED", None, &[])], "data": null}),
                false,
            )
        }
    };
    let vars = match req.get("variables") {
        Some(Json::Object(v)) => v.clone(),
        _ => Map::new(),
    };
    let name = req.get("operationName").and_then(Json::as_str);
    let ops: Vec<&OperationDefinition<'_, &str>> = doc
        .definitions
        .iter()
        .filter_map(|d| match d {
            Definition::Operation(o) => Some(o),
            Definition::Fragment(_) => None,
        })
        .filter(|o| name.is_none() || op_name(o) == name)
        .collect();
    let op = match ops.as_slice() {
        [op] => *op,
        [] => {
            return answer(
                200,
                json!({"errors": [error("Unknown operation named.", "GRAPHQL_VALIDATION_FAILED", None, &[])], "data": null}),
                false,
            )
        }
        _ => {
            return answer(
                200,
                json!({"errors": [error("Must provide operation name if query contains multiple operations.", "GRAPHQL_VALIDATION_FAILED", None, &[])], "data": null}),
                false,
            )
        }
    };
    let (set, mutation, defaults) = match op {
        OperationDefinition::SelectionSet(s) => (s, false, Vec::new()),
        OperationDefinition::Query(q) => {
            (&q.selection_set, false, defaults(&q.variable_definitions))
        }
        OperationDefinition::Mutation(m) => {
            (&m.selection_set, true, defaults(&m.variable_definitions))
        }
        OperationDefinition::Subscription(s) => {
            return answer(
                200,
                json!({"errors": [error("Subscriptions are not supported.", "GRAPHQL_VALIDATION_FAILED", Some(s.position), &[])], "data": null}),
                false,
            )
        }
    };
    let mut vars = vars;
    for (k, v) in defaults {
        vars.entry(k).or_insert(v);
    }
    let mut ex = Exec {
        data,
        key: &key,
        vars: &vars,
        doc: &doc,
        errors: Vec::new(),
        mutated: false,
    };
    let data_out = ex.root(set, mutation);
    let mut out = json!({ "data": data_out });
    if !ex.errors.is_empty() {
        out["errors"] = Json::Array(std::mem::take(&mut ex.errors));
    }
    answer(200, out, ex.mutated)
}

fn op_name<'a>(op: &OperationDefinition<'a, &'a str>) -> Option<&'a str> {
    match op {
        OperationDefinition::SelectionSet(_) => None,
        OperationDefinition::Query(q) => q.name,
        OperationDefinition::Mutation(m) => m.name,
        OperationDefinition::Subscription(s) => s.name,
    }
}

fn defaults<'a>(
    defs: &[graphql_parser::query::VariableDefinition<'a, &'a str>],
) -> Vec<(String, Json)> {
    defs.iter()
        .filter_map(|d| {
            d.default_value
                .as_ref()
                .map(|v| (d.name.to_string(), const_json(v)))
        })
        .collect()
}

fn const_json<'x>(v: &Value<'x, &'x str>) -> Json {
    match v {
        Value::String(s) => Json::String(s.clone()),
        Value::Int(n) => n.as_i64().map_or(Json::Null, Json::from),
        Value::Float(f) => json!(f),
        Value::Boolean(b) => Json::Bool(*b),
        Value::Enum(e) => Json::String(e.to_string()),
        Value::List(l) => Json::Array(l.iter().map(const_json).collect()),
        Value::Object(o) => Json::Object(
            o.iter()
                .map(|(k, v)| (k.to_string(), const_json(v)))
                .collect(),
        ),
        Value::Null | Value::Variable(_) => Json::Null,
    }
}

struct Exec<'a> {
    data: &'a RwLock<Data>,
    key: &'a ApiKey,
    vars: &'a Map<String, Json>,
    doc: &'a Document<'a, &'a str>,
    errors: Vec<Json>,
    mutated: bool,
}

/// A field resolution failure: message and code.
type Fail = (String, &'static str);

fn from_api(e: ApiError) -> Fail {
    (e.message, e.code)
}

impl<'a> Exec<'a> {
    fn arg(&self, f: &Field<'a, &'a str>, name: &str) -> Option<Json> {
        let (_, v) = f.arguments.iter().find(|(n, _)| *n == name)?;
        Some(match v {
            Value::Variable(var) => self.vars.get(*var).cloned().unwrap_or(Json::Null),
            other => self.value_json(other),
        })
    }

    fn value_json(&self, v: &Value<'a, &'a str>) -> Json {
        match v {
            Value::Variable(var) => self.vars.get(*var).cloned().unwrap_or(Json::Null),
            Value::List(l) => Json::Array(l.iter().map(|x| self.value_json(x)).collect()),
            Value::Object(o) => Json::Object(
                o.iter()
                    .map(|(k, v)| (k.to_string(), self.value_json(v)))
                    .collect(),
            ),
            other => const_json(other),
        }
    }

    fn string_arg(&self, f: &Field<'a, &'a str>, name: &str) -> Result<String, Fail> {
        match self.arg(f, name) {
            Some(Json::String(s)) => Ok(s),
            Some(Json::Number(n)) => Ok(n.to_string()),
            _ => Err((
                format!("Argument \"{name}\" of type \"ID!\" is required."),
                "BAD_USER_INPUT",
            )),
        }
    }

    fn int_arg(
        &self,
        f: &Field<'a, &'a str>,
        name: &str,
        default: usize,
        max: usize,
    ) -> Result<usize, Fail> {
        match self.arg(f, name) {
            None | Some(Json::Null) => Ok(default),
            Some(Json::Number(n)) => n
                .as_u64()
                .map(|n| n as usize)
                .filter(|n| (1..=max).contains(n))
                .ok_or((
                    format!("{name} must be between 1 and {max}."),
                    "BAD_USER_INPUT",
                )),
            _ => Err((format!("{name} must be an Int."), "BAD_USER_INPUT")),
        }
    }

    /// Flattens fragments into the fields they select.
    fn fields<'s>(&self, set: &'s SelectionSet<'a, &'a str>, out: &mut Vec<&'s Field<'a, &'a str>>)
    where
        'a: 's,
    {
        for sel in &set.items {
            match sel {
                Selection::Field(f) => out.push(f),
                Selection::InlineFragment(i) => self.fields(&i.selection_set, out),
                Selection::FragmentSpread(s) => {
                    for d in &self.doc.definitions {
                        if let Definition::Fragment(fr) = d {
                            if fr.name == s.fragment_name {
                                // Fragments in a fixture mock are shallow; one level of
                                // spreads inside fragments is enough and avoids cycles.
                                for sel in &fr.selection_set.items {
                                    if let Selection::Field(f) = sel {
                                        out.push(f);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn root(&mut self, set: &SelectionSet<'a, &'a str>, mutation: bool) -> Json {
        let mut fields = Vec::new();
        self.fields(set, &mut fields);
        let mut out = Map::new();
        let ty = if mutation { "Mutation" } else { "Query" };
        for f in fields {
            let key = f.alias.unwrap_or(f.name).to_string();
            let path = vec![key.clone()];
            let resolved = match (mutation, f.name) {
                (_, "__typename") => Ok(Json::String(ty.into())),
                (false, "viewer") => Ok(self.viewer()),
                (false, "libraries") => Ok(self.libraries()),
                (false, "assets") => self.assets(f),
                (false, "asset") => self.asset(f),
                (true, "updateAssetDescription") => self.update_description(f),
                (_, other) => {
                    self.errors.push(error(
                        format!("Cannot query field \"{other}\" on type \"{ty}\"."),
                        "GRAPHQL_VALIDATION_FAILED",
                        Some(f.position),
                        &[],
                    ));
                    return Json::Null;
                }
            };
            let v = match resolved {
                Ok(v) => self.select(&v, &f.selection_set, f, &path),
                Err((message, code)) => {
                    self.errors
                        .push(error(message, code, Some(f.position), &path));
                    Json::Null
                }
            };
            out.insert(key, v);
        }
        Json::Object(out)
    }

    /// Applies a selection set to a resolved value.
    fn select(
        &mut self,
        v: &Json,
        set: &SelectionSet<'a, &'a str>,
        field: &Field<'a, &'a str>,
        path: &[String],
    ) -> Json {
        match v {
            Json::Array(items) => Json::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, x)| {
                        let mut p = path.to_vec();
                        p.push(i.to_string());
                        self.select(x, set, field, &p)
                    })
                    .collect(),
            ),
            Json::Object(obj) => {
                if set.items.is_empty() {
                    self.errors.push(error(
                        format!(
                            "Field \"{}\" must have a selection of subfields.",
                            field.name
                        ),
                        "GRAPHQL_VALIDATION_FAILED",
                        Some(field.position),
                        &[],
                    ));
                    return Json::Null;
                }
                let mut fields = Vec::new();
                self.fields(set, &mut fields);
                let mut out = Map::new();
                for f in fields {
                    let key = f.alias.unwrap_or(f.name).to_string();
                    let mut p = path.to_vec();
                    p.push(key.clone());
                    let value = if f.name == "__typename" {
                        obj.get("__typename").cloned().unwrap_or(Json::Null)
                    } else {
                        match obj.get(f.name) {
                            Some(x) => self.select(x, &f.selection_set, f, &p),
                            None => {
                                let ty = obj
                                    .get("__typename")
                                    .and_then(Json::as_str)
                                    .unwrap_or("Object");
                                self.errors.push(error(
                                    format!("Cannot query field \"{}\" on type \"{ty}\".", f.name),
                                    "GRAPHQL_VALIDATION_FAILED",
                                    Some(f.position),
                                    &[],
                                ));
                                Json::Null
                            }
                        }
                    };
                    out.insert(key, value);
                }
                Json::Object(out)
            }
            scalar => scalar.clone(),
        }
    }

    fn typed(mut v: Json, ty: &str) -> Json {
        if let Json::Object(o) = &mut v {
            o.insert("__typename".into(), Json::String(ty.into()));
        }
        v
    }

    fn viewer(&self) -> Json {
        let d = self.data.read();
        let org = d.org(&self.key.org);
        let libs: Vec<&str> = d
            .reachable_libraries(self.key)
            .map(|l| l.id.as_str())
            .collect();
        Self::typed(
            json!({
                "organizationId": self.key.org,
                "organizationName": org.map(|o| o.name.as_str()),
                "plan": org.map(|o| o.plan.as_str()),
                "libraries": libs,
            }),
            "Viewer",
        )
    }

    fn libraries(&self) -> Json {
        let d = self.data.read();
        Json::Array(
            d.reachable_libraries(self.key)
                .map(|l| Self::typed(d.library_json(l), "Library"))
                .collect(),
        )
    }

    fn asset_json(a: &super::state::Asset) -> Json {
        Self::typed(serde_json::to_value(a).unwrap_or(Json::Null), "Asset")
    }

    fn assets(&self, f: &Field<'a, &'a str>) -> Result<Json, Fail> {
        let lib = self.string_arg(f, "libraryId")?;
        let page = self.int_arg(f, "page", 1, usize::MAX)?;
        let size = self.int_arg(f, "pageSize", 50, 100)?;
        let tags: Vec<String> = match self.arg(f, "tags") {
            Some(Json::Array(t)) => t
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        let d = self.data.read();
        check_library(&d, self.key, &lib).map_err(from_api)?;
        Ok(Json::Array(
            d.live_assets(&lib)
                .filter(|a| tags.iter().all(|t| a.has_tag(t)))
                .skip((page - 1).saturating_mul(size))
                .take(size)
                .map(Self::asset_json)
                .collect(),
        ))
    }

    fn asset(&self, f: &Field<'a, &'a str>) -> Result<Json, Fail> {
        let lib = self.string_arg(f, "libraryId")?;
        let id = self.string_arg(f, "id")?;
        let d = self.data.read();
        check_library(&d, self.key, &lib).map_err(from_api)?;
        Ok(d.live_asset(&lib, &id).map_or(Json::Null, Self::asset_json))
    }

    fn update_description(&mut self, f: &Field<'a, &'a str>) -> Result<Json, Fail> {
        let lib = self.string_arg(f, "libraryId")?;
        let id = self.string_arg(f, "assetId")?;
        let description = match self.arg(f, "description") {
            Some(Json::String(s)) => s,
            _ => {
                return Err((
                    "Argument \"description\" of type \"String!\" is required.".into(),
                    "BAD_USER_INPUT",
                ))
            }
        };
        let mut d = self.data.write();
        check_library(&d, self.key, &lib).map_err(from_api)?;
        if self.key.access != Access::Write {
            return Err((
                "This API key is read-only; the mutation needs a write key.".into(),
                "API_KEY_READ_ONLY",
            ));
        }
        let a = d
            .live_asset_mut(&lib, &id)
            .ok_or((format!("Asset {id} was not found."), "NOT_FOUND"))?;
        a.description = Some(description);
        a.touch();
        self.mutated = true;
        Ok(Self::asset_json(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::fixture;

    fn run(data: &RwLock<Data>, key: &str, body: Json) -> (u16, Json) {
        let a = handle(data, Some(key), &serde_json::to_vec(&body).unwrap());
        (a.status, serde_json::from_slice(&a.body).unwrap())
    }

    #[test]
    fn viewer_and_mutation_over_the_fixture() {
        let data = RwLock::new(fixture());
        let (s, v) = run(
            &data,
            "demo-read",
            json!({"query": "{ viewer { organizationId libraries } }"}),
        );
        assert_eq!(s, 200);
        assert_eq!(v["data"]["viewer"]["organizationId"], "monogram-labs");
        assert!(v.get("errors").is_none(), "{v}");
        let m = json!({
            "query": "mutation M($l: ID!) { updateAssetDescription(libraryId: $l, assetId: \"lis-0001\", description: \"tram\") { id description } }",
            "variables": {"l": "lisbon"}
        });
        let (_, v) = run(&data, "demo-read", m.clone());
        assert_eq!(v["errors"][0]["extensions"]["code"], "API_KEY_READ_ONLY");
        let (_, v) = run(&data, "demo-write", m);
        assert_eq!(
            v["data"]["updateAssetDescription"],
            json!({"id": "lis-0001", "description": "tram"})
        );
        let (_, v) = run(
            &data,
            "demo-read",
            json!({"query": "{ a: asset(libraryId: \"lisbon\", id: \"lis-0001\") { description __typename } }"}),
        );
        assert_eq!(
            v["data"]["a"],
            json!({"description": "tram", "__typename": "Asset"})
        );
    }

    #[test]
    fn errors_have_graphqls_shape() {
        let data = RwLock::new(fixture());
        let (s, v) = run(&data, "demo-read", json!({"query": "{ viewer { "}));
        assert_eq!(s, 200);
        assert_eq!(v["data"], Json::Null);
        assert_eq!(v["errors"][0]["extensions"]["code"], "GRAPHQL_PARSE_FAILED");
        let (_, v) = run(&data, "demo-read", json!({"query": "{ nope }"}));
        assert_eq!(
            v["errors"][0]["extensions"]["code"],
            "GRAPHQL_VALIDATION_FAILED"
        );
        assert_eq!(v["errors"][0]["locations"][0]["line"], 1);
        let a = handle(&data, None, b"{}");
        assert_eq!(a.status, 401);
        let a = handle(&data, Some("demo-read"), b"not json");
        assert_eq!(a.status, 400);
    }
}
