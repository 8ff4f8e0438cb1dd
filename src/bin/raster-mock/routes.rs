//! Raster REST routes: matching, the checks every endpoint runs (Api-Version, key, organization,
//! library reach, access level) and the read handlers; the write handlers are in
//! [`super::writes`]. Pure functions over [`Data`]: no HTTP server types here, so the routing is
//! testable on its own.

use std::borrow::Cow;

use http::Method;
use parking_lot::RwLock;
use serde::Serialize;
use serde_json::{json, Value};

use super::state::{tags_json, Access, ApiKey, Asset, Data, Library};
use super::writes::{
    create_anonymous, create_library, delete_assets, describe, rename_library, tag_assets,
    transfer, upload,
};

/// Default and maximum `pageSize` of asset lists and search.
pub const DEFAULT_PAGE_SIZE: usize = 50;
pub const DEFAULT_SEARCH_PAGE_SIZE: usize = 20;
pub const MAX_PAGE_SIZE: usize = 100;
/// Maximum ids per delete / tag / untag / transfer call.
pub const MAX_IDS: usize = 100;
pub const MAX_TAGS_PER_CALL: usize = 20;
pub const MAX_TAG_FILTERS: usize = 5;
pub const MAX_UPLOAD_FILES: usize = 20;
pub const DEFAULT_TAG_LIMIT: usize = 100;

/// A Raster error: `{"error":{"code","message"}}` with this status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::new(400, "BAD_USER_INPUT", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "NOT_FOUND", message)
    }
    pub fn endpoint_not_found(method: &Method, path: &str) -> Self {
        Self::new(
            404,
            "ENDPOINT_NOT_FOUND",
            format!("No endpoint {method} {path}."),
        )
    }
    /// The envelope an arbitrary forced status (`PUT /__mock/config {"status":…}`) answers with.
    pub fn for_status(status: u16) -> Self {
        let code = match status {
            400 => "BAD_USER_INPUT",
            401 => "UNAUTHENTICATED",
            403 => "FORBIDDEN",
            404 => "NOT_FOUND",
            409 => "CONFLICT",
            413 => "PAYLOAD_TOO_LARGE",
            429 => "RATE_LIMITED",
            500 => "INTERNAL_SERVER_ERROR",
            502 => "BAD_GATEWAY",
            503 => "SERVICE_UNAVAILABLE",
            504 => "GATEWAY_TIMEOUT",
            s if s >= 500 => "INTERNAL_SERVER_ERROR",
            _ => "BAD_REQUEST",
        };
        Self::new(status, code, format!("Simulated {status} response."))
    }

    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&json!({"error": {"code": self.code, "message": self.message}}))
            .unwrap_or_default()
    }
}

/// A successful answer: status and the serialized `{"data":…}` envelope.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    /// Whether this call changed the data (the service then drops precomputed bodies).
    pub mutated: bool,
}

#[derive(Serialize)]
struct Envelope<T> {
    data: T,
}

pub(super) fn ok<T: Serialize>(status: u16, data: T, mutated: bool) -> Result<Reply, ApiError> {
    let body = serde_json::to_vec(&Envelope { data })
        .map_err(|e| ApiError::new(500, "INTERNAL_SERVER_ERROR", e.to_string()))?;
    Ok(Reply {
        status,
        body,
        mutated,
    })
}

/// One API request, stripped of transport details.
#[derive(Debug, Clone, Copy)]
pub struct ApiCall<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub api_version: Option<&'a [u8]>,
    pub authorization: Option<&'a [u8]>,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Me,
    AnonLibrary,
    ListLibraries(String),
    CreateLibrary(String),
    RenameLibrary(String, String),
    ListAssets(String, String),
    Upload(String, String),
    Delete(String, String),
    GetAsset(String, String, String),
    Tag(String, String, bool),
    Transfer(String, String),
    Describe(String, String, String),
    Tags(String, String),
    Search(String),
}

impl Route {
    fn needs_write(&self) -> bool {
        matches!(
            self,
            Route::CreateLibrary(..)
                | Route::RenameLibrary(..)
                | Route::Upload(..)
                | Route::Delete(..)
                | Route::Tag(..)
                | Route::Transfer(..)
                | Route::Describe(..)
        )
    }

    fn org_and_library(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Route::Me | Route::AnonLibrary => (None, None),
            Route::ListLibraries(o) | Route::CreateLibrary(o) | Route::Search(o) => (Some(o), None),
            Route::RenameLibrary(o, l)
            | Route::ListAssets(o, l)
            | Route::Upload(o, l)
            | Route::Delete(o, l)
            | Route::GetAsset(o, l, _)
            | Route::Tag(o, l, _)
            | Route::Transfer(o, l)
            | Route::Describe(o, l, _)
            | Route::Tags(o, l) => (Some(o), Some(l)),
        }
    }
}

fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn route(method: &Method, path: &str) -> Option<Route> {
    let trimmed = path.trim_end_matches('/');
    let segs: Vec<String> = trimmed
        .strip_prefix('/')?
        .split('/')
        .map(percent_decode)
        .collect();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let get = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    let patch = method == Method::PATCH;
    let delete = method == Method::DELETE;
    let o = |x: &str| x.to_string();
    Some(match s.as_slice() {
        ["me"] if get => Route::Me,
        ["libraries"] if post => Route::AnonLibrary,
        ["organizations", org, "libraries"] if get => Route::ListLibraries(o(org)),
        ["organizations", org, "libraries"] if post => Route::CreateLibrary(o(org)),
        ["organizations", org, "libraries", lib] if patch => Route::RenameLibrary(o(org), o(lib)),
        ["organizations", org, "libraries", lib, "assets"] if get => {
            Route::ListAssets(o(org), o(lib))
        }
        ["organizations", org, "libraries", lib, "assets"] if post => Route::Upload(o(org), o(lib)),
        ["organizations", org, "libraries", lib, "assets"] if delete => {
            Route::Delete(o(org), o(lib))
        }
        ["organizations", org, "libraries", lib, "assets", "tag"] if post => {
            Route::Tag(o(org), o(lib), false)
        }
        ["organizations", org, "libraries", lib, "assets", "untag"] if post => {
            Route::Tag(o(org), o(lib), true)
        }
        ["organizations", org, "libraries", lib, "assets", "transfer"] if post => {
            Route::Transfer(o(org), o(lib))
        }
        ["organizations", org, "libraries", lib, "assets", id] if get => {
            Route::GetAsset(o(org), o(lib), o(id))
        }
        ["organizations", org, "libraries", lib, "assets", id, "description"] if patch => {
            Route::Describe(o(org), o(lib), o(id))
        }
        ["organizations", org, "libraries", lib, "tags"] if get => Route::Tags(o(org), o(lib)),
        ["organizations", org, "search", "assets"] if get => Route::Search(o(org)),
        _ => return None,
    })
}

/// `Bearer <token>` → token; anything else (absent, other scheme, empty) → `None`.
fn bearer(auth: Option<&[u8]>) -> Option<&str> {
    let v = std::str::from_utf8(auth?).ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' '))
        .then_some(token)
}

/// The bearer token of a request, if it is well formed (used as part of the response-cache key).
pub fn bearer_token<'a>(call: &ApiCall<'a>) -> Option<&'a str> {
    bearer(call.authorization)
}

struct Query<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'a> Query<'a> {
    fn parse(q: Option<&'a str>) -> Self {
        Query(
            q.map(|q| url::form_urlencoded::parse(q.as_bytes()).collect())
                .unwrap_or_default(),
        )
    }
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_ref())
    }
    /// A positive integer parameter, `default` when absent, 400 when malformed or above `max`.
    fn positive(&self, name: &str, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if n >= 1 && n <= max => Ok(n),
                _ => Err(ApiError::bad_input(format!(
                    "{name} must be an integer between 1 and {max}."
                ))),
            },
        }
    }
}

pub(super) fn comma_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

pub(super) fn json_body(call: &ApiCall) -> Result<serde_json::Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(call.body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_input("Request body must be a JSON object.")),
        Err(e) => Err(ApiError::bad_input(format!("Malformed JSON body: {e}."))),
    }
}

pub(super) fn string_field(
    m: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<String, ApiError> {
    match m.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        _ => Err(ApiError::bad_input(format!(
            "{name} is required and must be a non-empty string."
        ))),
    }
}

pub(super) fn string_list(
    m: &serde_json::Map<String, Value>,
    name: &str,
    max: usize,
) -> Result<Vec<String>, ApiError> {
    let arr = match m.get(name) {
        Some(Value::Array(a)) => a,
        _ => {
            return Err(ApiError::bad_input(format!(
                "{name} is required and must be an array of strings."
            )))
        }
    };
    if arr.is_empty() || arr.len() > max {
        return Err(ApiError::bad_input(format!(
            "{name} must hold between 1 and {max} entries."
        )));
    }
    arr.iter()
        .map(|v| match v {
            Value::String(s) if !s.is_empty() => Ok(s.clone()),
            _ => Err(ApiError::bad_input(format!(
                "{name} must hold non-empty strings."
            ))),
        })
        .collect()
}

fn paginate<T>(items: Vec<T>, page: usize, page_size: usize) -> Vec<T> {
    let start = (page - 1).saturating_mul(page_size);
    items.into_iter().skip(start).take(page_size).collect()
}

/// Runs one API call against the data. Check order: `Api-Version` → route → key → organization
/// → library (exists, then reachable by the key) → access level → input → handler.
pub fn dispatch(data: &RwLock<Data>, call: &ApiCall) -> Result<Reply, ApiError> {
    if call
        .api_version
        .is_none_or(|v| v.iter().all(|b| b.is_ascii_whitespace()))
    {
        return Err(ApiError::new(
            400,
            "API_VERSION_REQUIRED",
            "The Api-Version header is required (for example Api-Version: 2026-05-20).",
        ));
    }
    let route = route(call.method, call.path)
        .ok_or_else(|| ApiError::endpoint_not_found(call.method, call.path))?;
    if route == Route::AnonLibrary {
        return create_anonymous(data, call);
    }
    let token = bearer(call.authorization).ok_or_else(|| {
        ApiError::new(
            401,
            "UNAUTHENTICATED",
            "Send an API key as Authorization: Bearer <key>.",
        )
    })?;
    let key = data
        .read()
        .keys
        .get(token)
        .cloned()
        .ok_or_else(|| ApiError::new(401, "INVALID_API_KEY", "The API key is not valid."))?;

    {
        let d = data.read();
        let (org, lib) = route.org_and_library();
        if let Some(org) = org {
            if org != key.org || d.org(org).is_none() {
                return Err(ApiError::new(
                    404,
                    "ORGANIZATION_NOT_FOUND",
                    format!("Organization {org} was not found."),
                ));
            }
            if let Some(lib) = lib {
                check_library(&d, &key, lib)?;
            }
        }
    }
    if route.needs_write() && key.access != Access::Write {
        return Err(ApiError::new(
            403,
            "API_KEY_READ_ONLY",
            "This API key is read-only; the endpoint needs a write key.",
        ));
    }

    let q = Query::parse(call.query);
    match route {
        Route::Me => me(&data.read(), &key),
        Route::AnonLibrary => unreachable!("handled above"),
        Route::ListLibraries(_) => list_libraries(&data.read(), &key, &q),
        Route::CreateLibrary(org) => create_library(data, &org, call),
        Route::RenameLibrary(org, lib) => rename_library(data, &org, &lib, call),
        Route::ListAssets(_, lib) => list_assets(&data.read(), &lib, &q),
        Route::GetAsset(_, lib, id) => {
            let d = data.read();
            let a = d
                .live_asset(&lib, &id)
                .ok_or_else(|| ApiError::not_found(format!("Asset {id} was not found.")))?;
            ok(200, a, false)
        }
        Route::Tags(_, lib) => {
            let limit = q.positive("limit", DEFAULT_TAG_LIMIT, 1000)?;
            let mut counts = data.read().tag_counts(&lib);
            counts.truncate(limit);
            ok(200, tags_json(counts), false)
        }
        Route::Search(_) => search(&data.read(), &key, &q),
        Route::Delete(_, lib) => delete_assets(data, &lib, call),
        Route::Tag(_, lib, untag) => tag_assets(data, &lib, untag, call),
        Route::Describe(_, lib, id) => describe(data, &lib, &id, call),
        Route::Transfer(_, lib) => transfer(data, &key, &lib, call),
        Route::Upload(_, lib) => upload(data, &lib, call),
    }
}

pub(super) fn check_library(d: &Data, key: &ApiKey, lib: &str) -> Result<(), ApiError> {
    if d.library(&key.org, lib).is_none() {
        return Err(ApiError::not_found(format!("Library {lib} was not found.")));
    }
    if !key.can_reach(lib) {
        return Err(ApiError::new(
            404,
            "API_KEY_NOT_AUTHORIZED_FOR_LIBRARY",
            format!("This API key is not authorized for library {lib}."),
        ));
    }
    Ok(())
}

fn me(d: &Data, key: &ApiKey) -> Result<Reply, ApiError> {
    let org = d.org(&key.org);
    let libs: Vec<&str> = d.reachable_libraries(key).map(|l| l.id.as_str()).collect();
    ok(
        200,
        json!({
            "organizationId": key.org,
            "organizationName": org.map(|o| o.name.as_str()),
            "plan": org.map(|o| o.plan.as_str()),
            "libraries": libs,
        }),
        false,
    )
}

fn list_libraries(d: &Data, key: &ApiKey, q: &Query) -> Result<Reply, ApiError> {
    let page = q.positive("page", 1, usize::MAX)?;
    let size = q.positive("pageSize", MAX_PAGE_SIZE, MAX_PAGE_SIZE)?;
    let libs: Vec<&Library> = d.reachable_libraries(key).collect();
    let out: Vec<Value> = paginate(libs, page, size)
        .into_iter()
        .map(|l| d.library_json(l))
        .collect();
    ok(200, out, false)
}

fn list_assets(d: &Data, lib: &str, q: &Query) -> Result<Reply, ApiError> {
    let page = q.positive("page", 1, usize::MAX)?;
    let size = q.positive("pageSize", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
    let tags = q.get("tags").map(comma_list).unwrap_or_default();
    if tags.len() > MAX_TAG_FILTERS {
        return Err(ApiError::bad_input(format!(
            "At most {MAX_TAG_FILTERS} tags can be filtered on."
        )));
    }
    let start = (page - 1).saturating_mul(size);
    let out: Vec<&Asset> = d
        .live_assets(lib)
        .filter(|a| tags.iter().all(|t| a.has_tag(t)))
        .skip(start)
        .take(size)
        .collect();
    ok(200, out, false)
}

#[derive(Serialize)]
struct Hit<'a> {
    #[serde(flatten)]
    asset: &'a Asset,
    score: f64,
}

fn search(d: &Data, key: &ApiKey, q: &Query) -> Result<Reply, ApiError> {
    let text = q
        .get("q")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad_input("q is required."))?
        .to_lowercase();
    let page = q.positive("page", 1, usize::MAX)?;
    let size = q.positive("pageSize", DEFAULT_SEARCH_PAGE_SIZE, MAX_PAGE_SIZE)?;
    let libs: Vec<String> = match q.get("libraries").map(comma_list) {
        Some(l) if !l.is_empty() => {
            for lib in &l {
                check_library(d, key, lib)?;
            }
            l
        }
        _ => d.reachable_libraries(key).map(|l| l.id.clone()).collect(),
    };
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut hits: Vec<Hit> = Vec::new();
    for a in d
        .assets
        .iter()
        .filter(|a| !a.trashed && libs.contains(&a.library_id))
    {
        let name = a.name.to_lowercase();
        let desc = a.description.as_deref().unwrap_or("").to_lowercase();
        let mut score = 0.0;
        let all = words.iter().all(|w| {
            let in_tags = a.tags.iter().any(|t| t.to_lowercase().contains(w));
            let in_name = name.contains(w);
            let in_desc = desc.contains(w);
            score += if in_name { 3.0 } else { 0.0 }
                + if in_tags { 2.0 } else { 0.0 }
                + if in_desc { 1.0 } else { 0.0 };
            in_tags || in_name || in_desc
        });
        if all {
            hits.push(Hit { asset: a, score });
        }
    }
    hits.sort_by(|a, b| b.score.total_cmp(&a.score));
    let found = hits.len();
    let hits = paginate(hits, page, size);
    ok(
        200,
        json!({"hits": hits, "found": found, "page": page}),
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::fixture;

    fn call<'a>(method: &'a Method, path: &'a str, key: &'a str, body: &'a [u8]) -> ApiCall<'a> {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        ApiCall {
            method,
            path,
            query,
            api_version: Some(b"2026-05-20"),
            authorization: Some(key.as_bytes()),
            content_type: Some("application/json"),
            body,
        }
    }

    #[test]
    fn routes_match_the_documented_paths() {
        let g = Method::GET;
        assert_eq!(route(&g, "/me"), Some(Route::Me));
        assert_eq!(
            route(&g, "/organizations/o/libraries/l/assets/tag"),
            Some(Route::GetAsset("o".into(), "l".into(), "tag".into()))
        );
        assert_eq!(
            route(&Method::POST, "/organizations/o/libraries/l/assets/tag"),
            Some(Route::Tag("o".into(), "l".into(), false))
        );
        assert_eq!(route(&Method::PUT, "/me"), None);
        assert_eq!(route(&g, "/nope"), None);
    }

    #[test]
    fn write_key_changes_later_reads() {
        let data = RwLock::new(fixture());
        let post = Method::POST;
        let get = Method::GET;
        let r = dispatch(
            &data,
            &call(
                &post,
                "/organizations/monogram-labs/libraries/lisbon/assets/tag",
                "Bearer demo-write",
                br#"{"assetIds":["lis-0001"],"tags":["tram"]}"#,
            ),
        )
        .unwrap();
        assert!(r.mutated);
        let r = dispatch(
            &data,
            &call(
                &get,
                "/organizations/monogram-labs/libraries/lisbon/assets?tags=tram",
                "Bearer demo-read",
                b"",
            ),
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), 1);
    }
}
