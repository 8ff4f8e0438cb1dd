//! Runtime behaviour knobs (`PUT /__mock/config`) and request counters (`GET /__mock/stats`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderName, HeaderValue, Method};
use serde_json::{json, Map, Value};

/// What `PUT /__mock/config` can change. Serialized back as
/// `{"latency_ms","cache_control","etag","down","status","headers","gzip","gzip_vary"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MockConfig {
    /// Sleep this long before answering each API request.
    pub latency_ms: u64,
    /// `Cache-Control` value put on API responses; `None`: no header (like the real API).
    pub cache_control: Option<String>,
    /// Strong `ETag` on GET/HEAD 200 responses and 304 for a matching `If-None-Match`.
    pub etag: bool,
    /// Every API request answers 503 `SERVICE_UNAVAILABLE`.
    pub down: bool,
    /// Every API request answers this status with Raster's error envelope.
    pub status: Option<u16>,
    /// Extra response headers on every API response; a name given here replaces the default
    /// header of that name (e.g. `Vary`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// gzip response bodies for requests whose `Accept-Encoding` accepts gzip.
    pub gzip: bool,
    /// With `gzip`, say `Vary: Accept-Encoding`; `false` reproduces the origins that compress
    /// without saying so.
    pub gzip_vary: bool,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            latency_ms: 0,
            cache_control: None,
            etag: true,
            down: false,
            status: None,
            headers: Vec::new(),
            gzip: false,
            gzip_vary: true,
        }
    }
}

impl MockConfig {
    pub fn to_json(&self) -> Value {
        let headers: Map<String, Value> = self
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
                )
            })
            .collect();
        json!({
            "latency_ms": self.latency_ms,
            "cache_control": self.cache_control,
            "etag": self.etag,
            "down": self.down,
            "status": self.status,
            "headers": headers,
            "gzip": self.gzip,
            "gzip_vary": self.gzip_vary,
        })
    }

    /// Applies a JSON object holding any subset of the keys. Nothing changes on error.
    pub fn apply(&mut self, patch: &Value) -> Result<(), String> {
        let obj = patch
            .as_object()
            .ok_or_else(|| "config must be a JSON object".to_string())?;
        let mut next = self.clone();
        for (k, v) in obj {
            match k.as_str() {
                "latency_ms" => {
                    next.latency_ms = v
                        .as_u64()
                        .ok_or("latency_ms must be a non-negative integer")?
                }
                "cache_control" => {
                    next.cache_control = match v {
                        Value::Null => None,
                        Value::String(s) => {
                            HeaderValue::from_str(s)
                                .map_err(|_| "cache_control is not a valid header value")?;
                            Some(s.clone())
                        }
                        _ => return Err("cache_control must be a string or null".into()),
                    }
                }
                "etag" => next.etag = v.as_bool().ok_or("etag must be a boolean")?,
                "gzip" => next.gzip = v.as_bool().ok_or("gzip must be a boolean")?,
                "gzip_vary" => next.gzip_vary = v.as_bool().ok_or("gzip_vary must be a boolean")?,
                "down" => next.down = v.as_bool().ok_or("down must be a boolean")?,
                "status" => {
                    next.status = match v {
                        Value::Null => None,
                        _ => {
                            let s = v
                                .as_u64()
                                .filter(|s| (400..=599).contains(s))
                                .ok_or("status must be null or an integer in 400..=599")?;
                            Some(s as u16)
                        }
                    }
                }
                "headers" => {
                    let map = v
                        .as_object()
                        .ok_or("headers must be an object of name → string value")?;
                    let mut hs = Vec::new();
                    for (name, value) in map {
                        let n = HeaderName::from_bytes(name.as_bytes())
                            .map_err(|_| format!("invalid header name {name:?}"))?;
                        let s = value
                            .as_str()
                            .ok_or_else(|| format!("header {name:?} must be a string"))?;
                        let hv = HeaderValue::from_str(s)
                            .map_err(|_| format!("invalid value for header {name:?}"))?;
                        hs.push((n, hv));
                    }
                    next.headers = hs;
                }
                other => return Err(format!("unknown config key {other:?}")),
            }
        }
        *self = next;
        Ok(())
    }
}

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER",
];

/// Counters of API requests (control calls are never counted).
#[derive(Default)]
pub struct Stats {
    requests: AtomicU64,
    conditional: AtomicU64,
    not_modified: AtomicU64,
    by_method: [AtomicU64; 8],
}

impl Stats {
    pub fn record(&self, method: &Method, conditional: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if conditional {
            self.conditional.fetch_add(1, Ordering::Relaxed);
        }
        let i = METHODS
            .iter()
            .position(|m| *m == method.as_str())
            .unwrap_or(METHODS.len() - 1);
        self.by_method[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_not_modified(&self) {
        self.not_modified.fetch_add(1, Ordering::Relaxed);
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn reset(&self) {
        self.requests.store(0, Ordering::Relaxed);
        self.conditional.store(0, Ordering::Relaxed);
        self.not_modified.store(0, Ordering::Relaxed);
        for c in &self.by_method {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// `{"requests":N,"conditional":C,"not_modified":M,"by_method":{"GET":n,...}}`
    /// (`by_method` lists only methods seen).
    pub fn to_json(&self) -> Value {
        let by_method: BTreeMap<&str, u64> = METHODS
            .iter()
            .zip(&self.by_method)
            .map(|(m, c)| (*m, c.load(Ordering::Relaxed)))
            .filter(|(_, c)| *c > 0)
            .collect();
        json!({
            "requests": self.requests(),
            "conditional": self.conditional.load(Ordering::Relaxed),
            "not_modified": self.not_modified.load(Ordering::Relaxed),
            "by_method": by_method,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_patch_is_all_or_nothing() {
        let mut c = MockConfig::default();
        assert!(c.apply(&json!({"down": true, "bogus": 1})).is_err());
        assert!(!c.down);
        c.apply(&json!({"down": true, "status": 500, "headers": {"Vary": "x"}}))
            .unwrap();
        assert!(c.down);
        assert_eq!(c.status, Some(500));
        assert_eq!(c.to_json()["headers"]["vary"], "x");
        assert!(c.apply(&json!({"status": 200})).is_err());
    }
}
