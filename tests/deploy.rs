//! The deployment pack against the gateway's real metrics: every metric, label name and
//! documented label value that the Grafana dashboard, the recording rules and the alerting rules
//! in `deploy/` name must be one the gateway exports. Metric names come from the constants in
//! `raster_edge::metrics` and label names from the registered collectors' descriptors
//! (`METRICS`), so nothing here restates them as strings. Also checked: every alert has a
//! runbook section in docs/OPERATIONS.md and a promtool unit test that fires and one that stays
//! silent (promtool itself runs them: scripts/check-deploy.sh).
//!
//! PromQL is parsed with promql-parser (the real grammar: function names, `by`/`on` clauses,
//! strings and durations are never mistaken for metric names); YAML with serde_yaml, which is
//! already in the dependency tree through pingora.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use prometheus::core::Collector;
use prometheus::HistogramVec;
use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{self, Expr, LabelModifier, VectorMatchCardinality};
use raster_edge::metrics;
use serde_yaml::Value;

/// Labels Prometheus attaches at scrape time: valid on every series.
const TARGET_LABELS: &[&str] = &["job", "instance"];

/// Metrics the rules may use while another change is adding them to src/metrics.rs (labels as
/// the outside contract names them). Accepted until the gateway exports them;
/// `pending_metrics_are_not_exported_yet` fails as soon as it does, so the entry moves to
/// `catalog()` and is checked like every other metric. None today.
const PENDING: &[(&str, &[&str])] = &[];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// What the gateway exports

#[derive(Debug, Default, Clone)]
struct Family {
    labels: BTreeSet<String>,
    histogram: bool,
    /// Label values the help text enumerates, e.g. "by cause (size, expired, …)".
    values: BTreeMap<String, BTreeSet<String>>,
}

#[derive(Debug, Default)]
struct Catalog {
    families: BTreeMap<String, Family>,
    /// Recording-rule outputs and an upper bound of their labels (those of the metrics they are
    /// computed from).
    recorded: BTreeMap<String, BTreeSet<String>>,
}

/// Values listed in parentheses after a label name in a help text: "by result (hit, miss)".
fn values_from_help(help: &str, labels: &BTreeSet<String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    let mut rest = help;
    while let Some(open) = rest.find(" (") {
        let before = &rest[..open];
        let label = before.rsplit(' ').next().unwrap_or("");
        let after = &rest[open + 2..];
        let Some(close) = after.find(')') else { break };
        let list: Vec<&str> = after[..close].split(", ").collect();
        let plain = |v: &&str| {
            !v.is_empty()
                && v.chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c == '-')
        };
        if labels.contains(label) && list.len() > 1 && list.iter().all(plain) {
            out.insert(
                label.to_string(),
                list.iter().map(|s| s.to_string()).collect(),
            );
        }
        rest = &after[close..];
    }
    out
}

fn family<C: Collector>(name: &str, c: &C, histogram: bool) -> (String, Family) {
    let descs = c.desc();
    assert_eq!(descs.len(), 1, "{name}: one descriptor per collector");
    let d = descs[0];
    assert_eq!(d.fq_name, name, "the constant names the registered metric");
    let labels: BTreeSet<String> = d
        .variable_labels
        .iter()
        .cloned()
        .chain(d.const_label_pairs.iter().map(|p| p.name().to_string()))
        .collect();
    let values = values_from_help(&d.help, &labels);
    (
        name.to_string(),
        Family {
            labels,
            histogram,
            values,
        },
    )
}

fn histogram(name: &str, c: &HistogramVec) -> (String, Family) {
    family(name, c, true)
}

fn catalog() -> Catalog {
    use raster_edge::metrics::*;
    let m = &*METRICS;
    let mut families: BTreeMap<String, Family> = [
        family(REQUESTS_TOTAL, &m.requests, false),
        histogram(REQUEST_DURATION_SECONDS, &m.request_duration),
        histogram(UPSTREAM_DURATION_SECONDS, &m.upstream_duration),
        family(UPSTREAM_ERRORS_TOTAL, &m.upstream_errors, false),
        family(EDGE_REJECTIONS_TOTAL, &m.edge_rejections, false),
        family(CACHE_LOOKUPS_TOTAL, &m.cache_lookups, false),
        family(CACHE_ENTRIES, &m.cache_entries, false),
        family(CACHE_BYTES, &m.cache_bytes, false),
        family(CACHE_EVICTIONS_TOTAL, &m.cache_evictions, false),
        family(CACHE_INVALIDATIONS_TOTAL, &m.cache_invalidations, false),
        family(
            CACHE_STORE_REJECTIONS_TOTAL,
            &m.cache_store_rejections,
            false,
        ),
        family(RATELIMIT_DECISIONS_TOTAL, &m.ratelimit_decisions, false),
        family(
            RATELIMIT_FALLBACK_ACTIVE,
            &m.ratelimit_fallback_active,
            false,
        ),
        family(RATELIMIT_FALLBACKS_TOTAL, &m.ratelimit_fallbacks, false),
        family(RATELIMIT_TRACKED_KEYS, &m.ratelimit_tracked_keys, false),
        family(REDIS_ERRORS_TOTAL, &m.redis_errors, false),
        family(BUILD_INFO, &m.build_info, false),
        family(READY, &m.ready, false),
        family(CONFIG_RELOAD_TOTAL, &m.config_reloads, false),
        family(CONFIG_INFO, &m.config_info, false),
    ]
    .into_iter()
    .collect();
    // Label values computed by the library rather than listed in a help text.
    let statuses: BTreeSet<String> = (0..=600u16)
        .map(|s| metrics::status_class(s).to_string())
        .collect();
    let methods: BTreeSet<String> = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "X",
    ]
    .iter()
    .filter_map(|m| http::Method::from_bytes(m.as_bytes()).ok())
    .map(|m| metrics::method_label(&m).to_string())
    .collect();
    if let Some(f) = families.get_mut(REQUESTS_TOTAL) {
        f.values.insert("status".into(), statuses);
        f.values.insert("method".into(), methods);
    }
    for (name, labels) in PENDING {
        families.entry(name.to_string()).or_insert_with(|| Family {
            labels: labels.iter().map(|l| l.to_string()).collect(),
            ..Family::default()
        });
    }
    Catalog {
        families,
        recorded: BTreeMap::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Checking one PromQL expression

/// A resolved series name: its labels and the values the gateway documents for them.
struct Resolved {
    labels: BTreeSet<String>,
    values: BTreeMap<String, BTreeSet<String>>,
}

impl Catalog {
    fn resolve(&self, name: &str) -> Result<Resolved, String> {
        if name.contains(':') {
            return self
                .recorded
                .get(name)
                .map(|labels| Resolved {
                    labels: labels.clone(),
                    values: BTreeMap::new(),
                })
                .ok_or_else(|| format!("{name}: no recording rule records it"));
        }
        if let Some(f) = self.families.get(name) {
            return Ok(Resolved {
                labels: f.labels.clone(),
                values: f.values.clone(),
            });
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                match self.families.get(base) {
                    Some(f) if f.histogram => {
                        let mut labels = f.labels.clone();
                        if suffix == "_bucket" {
                            labels.insert("le".into());
                        }
                        return Ok(Resolved {
                            labels,
                            values: f.values.clone(),
                        });
                    }
                    Some(_) => return Err(format!("{name}: {base} is not a histogram")),
                    None => {}
                }
            }
        }
        Err(format!(
            "{name}: not a metric the gateway exports (src/metrics.rs)"
        ))
    }

    /// The metric names `expr` reads (recording rules by their own name) and every problem.
    fn check(&self, promql: &str) -> Result<BTreeSet<String>, Vec<String>> {
        let expr = parser::parse(promql).map_err(|e| vec![format!("does not parse: {e}")])?;
        let mut walk = Walk::default();
        walk.visit(&expr);
        let mut errors = Vec::new();
        let mut seen_labels: BTreeSet<String> =
            TARGET_LABELS.iter().map(|s| s.to_string()).collect();
        seen_labels.extend(walk.made_labels.iter().cloned());
        let mut names = BTreeSet::new();
        for (name, matchers) in &walk.selectors {
            let Some(name) = name else {
                errors.push("a selector without a metric name".to_string());
                continue;
            };
            names.insert(name.clone());
            let r = match self.resolve(name) {
                Ok(r) => r,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            seen_labels.extend(r.labels.iter().cloned());
            for m in matchers {
                check_matcher(name, m, &r, &mut errors);
            }
        }
        for label in &walk.grouping {
            if !seen_labels.contains(label) {
                errors.push(format!(
                    "label {label:?} in by/without/on/ignoring/group_*: none of {names:?} has it"
                ));
            }
        }
        if errors.is_empty() {
            Ok(names)
        } else {
            Err(errors)
        }
    }
}

fn check_matcher(name: &str, m: &Matcher, r: &Resolved, errors: &mut Vec<String>) {
    if m.name == "__name__" {
        return;
    }
    if !r.labels.contains(&m.name) && !TARGET_LABELS.contains(&m.name.as_str()) {
        errors.push(format!(
            "{name}{{{}}}: no label {:?} (labels: {:?})",
            m.name, m.name, r.labels
        ));
        return;
    }
    let Some(allowed) = r.values.get(&m.name) else {
        return;
    };
    let wanted: Vec<&str> = match &m.op {
        MatchOp::Equal | MatchOp::NotEqual => vec![m.value.as_str()],
        // A plain alternation (`hit|stale`) names values; any other regex is left alone.
        MatchOp::Re(_) | MatchOp::NotRe(_) => {
            let parts: Vec<&str> = m.value.split('|').collect();
            let plain = parts.iter().all(|p| {
                !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            });
            if plain {
                parts
            } else {
                Vec::new()
            }
        }
    };
    for v in wanted {
        if !allowed.contains(v) {
            errors.push(format!(
                "{name}{{{}=\"{v}\"}}: the gateway never sets {v:?} (values: {allowed:?})",
                m.name
            ));
        }
    }
}

#[derive(Default)]
struct Walk {
    selectors: Vec<(Option<String>, Vec<Matcher>)>,
    grouping: BTreeSet<String>,
    /// Labels that label_replace/label_join create.
    made_labels: BTreeSet<String>,
}

impl Walk {
    fn selector(&mut self, vs: &parser::VectorSelector) {
        let name = vs.name.clone().or_else(|| {
            vs.matchers
                .matchers
                .iter()
                .find(|m| m.name == "__name__" && matches!(m.op, MatchOp::Equal))
                .map(|m| m.value.clone())
        });
        let mut matchers = vs.matchers.matchers.clone();
        matchers.extend(vs.matchers.or_matchers.iter().flatten().cloned());
        self.selectors.push((name, matchers));
    }

    fn modifier(&mut self, m: &LabelModifier) {
        self.grouping.extend(m.labels().labels.iter().cloned());
    }

    fn visit(&mut self, e: &Expr) {
        match e {
            Expr::Aggregate(a) => {
                if let Some(m) = &a.modifier {
                    self.modifier(m);
                }
                if let Some(p) = &a.param {
                    self.visit(p);
                }
                self.visit(&a.expr);
            }
            Expr::Unary(u) => self.visit(&u.expr),
            Expr::Binary(b) => {
                if let Some(m) = &b.modifier {
                    if let Some(matching) = &m.matching {
                        self.modifier(matching);
                    }
                    if let VectorMatchCardinality::ManyToOne(l)
                    | VectorMatchCardinality::OneToMany(l) = &m.card
                    {
                        self.grouping.extend(l.labels.iter().cloned());
                    }
                }
                self.visit(&b.lhs);
                self.visit(&b.rhs);
            }
            Expr::Paren(p) => self.visit(&p.expr),
            Expr::Subquery(s) => self.visit(&s.expr),
            Expr::VectorSelector(vs) => self.selector(vs),
            Expr::MatrixSelector(ms) => self.selector(&ms.vs),
            Expr::Call(c) => {
                if matches!(c.func.name, "label_replace" | "label_join") {
                    if let Some(Expr::StringLiteral(s)) = c.args.args.get(1).map(Box::as_ref) {
                        self.made_labels.insert(s.val.clone());
                    }
                }
                for a in &c.args.args {
                    self.visit(a);
                }
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The files in deploy/

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn rules(path: &Path) -> Vec<Value> {
    let doc = yaml(path);
    let groups = doc["groups"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{}: no groups", path.display()));
    groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .collect()
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn prometheus_dir() -> PathBuf {
    root().join("deploy/prometheus")
}

/// The catalog with the recording rules in deploy/prometheus/recording.yml added, after
/// checking each of them.
fn catalog_with_recordings() -> Catalog {
    let mut cat = catalog();
    let mut errors = Vec::new();
    for rule in rules(&prometheus_dir().join("recording.yml")) {
        let record = str_of(&rule, "record").expect("a recording rule has `record`");
        let expr = str_of(&rule, "expr").expect("a recording rule has `expr`");
        if !record.contains(':') {
            errors.push(format!(
                "{record}: recording rule names are level:metric:operation"
            ));
        }
        if cat.recorded.contains_key(record) {
            errors.push(format!("{record}: recorded twice"));
        }
        match cat.check(expr) {
            Ok(names) => {
                let mut labels: BTreeSet<String> =
                    TARGET_LABELS.iter().map(|s| s.to_string()).collect();
                for n in names {
                    if let Ok(r) = cat.resolve(&n) {
                        labels.extend(r.labels);
                    }
                }
                cat.recorded.insert(record.to_string(), labels);
            }
            Err(e) => errors.push(format!("record {record}: {}", e.join("; "))),
        }
    }
    assert!(errors.is_empty(), "recording.yml:\n{}", errors.join("\n"));
    assert!(!cat.recorded.is_empty(), "recording.yml records nothing");
    cat
}

fn alert_rules() -> Vec<Value> {
    let rules = rules(&prometheus_dir().join("alerts.yml"));
    assert!(!rules.is_empty(), "alerts.yml has no rules");
    rules
}

/// Every `expr` under a `targets` entry anywhere in a dashboard (panels, rows, nested panels).
fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Array(targets)) = map.get("targets") {
                for t in targets {
                    if let Some(e) = t.get("expr").and_then(|e| e.as_str()) {
                        out.push(e.to_string());
                    }
                }
            }
            for (k, child) in map {
                if k != "targets" {
                    dashboard_exprs(child, out);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| dashboard_exprs(i, out)),
        _ => {}
    }
}

/// Grafana's interval variables are not PromQL; a duration stands in for them.
fn grafana_to_promql(expr: &str) -> String {
    [
        "$__rate_interval",
        "${__rate_interval}",
        "$__interval",
        "${__interval}",
        "$__range",
    ]
    .iter()
    .fold(expr.to_string(), |e, var| e.replace(var, "5m"))
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            json_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
}

/// GitHub's anchor for a Markdown heading: lower case, spaces to '-', punctuation dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn grafana_dashboards_name_only_exported_metrics() {
    let cat = catalog_with_recordings();
    let mut files = Vec::new();
    json_files(&root().join("deploy"), &mut files);
    let dashboards: Vec<(PathBuf, serde_json::Value)> = files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let v: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, v)
        })
        .filter(|(_, v)| v.get("panels").is_some())
        .collect();
    assert!(
        !dashboards.is_empty(),
        "no Grafana dashboard found in deploy/"
    );
    let mut errors = Vec::new();
    let mut checked = 0;
    for (path, dash) in &dashboards {
        let mut exprs = Vec::new();
        dashboard_exprs(dash, &mut exprs);
        assert!(!exprs.is_empty(), "{}: no PromQL targets", path.display());
        for e in exprs {
            checked += 1;
            if let Err(errs) = cat.check(&grafana_to_promql(&e)) {
                errors.push(format!(
                    "{}: {e}\n    {}",
                    path.display(),
                    errs.join("\n    ")
                ));
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    eprintln!("{checked} dashboard expressions checked");
}

#[test]
fn recording_rules_name_only_exported_metrics() {
    let cat = catalog_with_recordings();
    eprintln!("{} recording rules checked", cat.recorded.len());
}

#[test]
fn alert_rules_name_only_exported_metrics_and_recorded_series() {
    let cat = catalog_with_recordings();
    let mut errors = Vec::new();
    let mut names = BTreeSet::new();
    for rule in alert_rules() {
        let alert = str_of(&rule, "alert").expect("an alerting rule has `alert`");
        if !names.insert(alert.to_string()) {
            errors.push(format!("{alert}: defined twice"));
        }
        let expr = str_of(&rule, "expr").expect("an alerting rule has `expr`");
        if let Err(e) = cat.check(expr) {
            errors.push(format!("{alert}: {}", e.join("; ")));
        }
        match rule["labels"].get("severity").and_then(Value::as_str) {
            Some("critical" | "warning") => {}
            other => errors.push(format!("{alert}: severity {other:?}, not critical/warning")),
        }
        for a in ["summary", "description", "runbook"] {
            if str_of(&rule["annotations"], a).is_none() {
                errors.push(format!("{alert}: no {a} annotation"));
            }
        }
    }
    assert!(errors.is_empty(), "alerts.yml:\n{}", errors.join("\n"));
}

/// The ```promql blocks of a Markdown file, one expression each.
fn promql_blocks(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        let t = line.trim();
        match &mut current {
            None if t == "```promql" => current = Some(String::new()),
            Some(block) if t == "```" => {
                out.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(t);
                block.push('\n');
            }
            None => {}
        }
    }
    out
}

#[test]
fn operations_md_queries_name_only_exported_metrics() {
    let cat = catalog_with_recordings();
    let doc =
        std::fs::read_to_string(root().join("docs/OPERATIONS.md")).expect("docs/OPERATIONS.md");
    let blocks = promql_blocks(&doc);
    assert!(
        !blocks.is_empty(),
        "docs/OPERATIONS.md has no promql blocks"
    );
    let errors: Vec<String> = blocks
        .iter()
        .filter_map(|q| {
            cat.check(q)
                .err()
                .map(|e| format!("{q}    {}", e.join("; ")))
        })
        .collect();
    assert!(
        errors.is_empty(),
        "docs/OPERATIONS.md:\n{}",
        errors.join("\n")
    );
}

#[test]
fn every_alert_has_a_runbook_section_in_operations_md() {
    let doc =
        std::fs::read_to_string(root().join("docs/OPERATIONS.md")).expect("docs/OPERATIONS.md");
    let anchors: BTreeSet<String> = doc
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| slug(l.trim_start_matches('#')))
        .collect();
    let mut missing = Vec::new();
    for rule in alert_rules() {
        let alert = str_of(&rule, "alert").unwrap_or("?");
        let runbook = str_of(&rule["annotations"], "runbook").unwrap_or("");
        match runbook.split_once('#') {
            Some(("docs/OPERATIONS.md", anchor)) if anchors.contains(anchor) => {}
            _ => missing.push(format!("{alert}: runbook {runbook:?} names no heading")),
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn every_alert_has_a_unit_test_that_fires_and_one_that_stays_silent() {
    let dir = prometheus_dir().join("tests");
    let mut fires = BTreeSet::new();
    let mut silent = BTreeSet::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/prometheus/tests")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no promtool test files");
    for f in &files {
        let doc = yaml(f);
        let listed = doc["rule_files"].as_sequence().cloned().unwrap_or_default();
        for needed in ["../recording.yml", "../alerts.yml"] {
            assert!(
                listed.iter().any(|v| v.as_str() == Some(needed)),
                "{}: rule_files must load {needed}",
                f.display()
            );
        }
        for t in doc["tests"].as_sequence().cloned().unwrap_or_default() {
            for case in t["alert_rule_test"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
            {
                let name = str_of(&case, "alertname").unwrap_or("").to_string();
                let n = case["exp_alerts"].as_sequence().map_or(0, |s| s.len());
                if n > 0 {
                    fires.insert(name);
                } else {
                    silent.insert(name);
                }
            }
        }
    }
    let mut gaps = Vec::new();
    for rule in alert_rules() {
        let alert = str_of(&rule, "alert").unwrap_or("?").to_string();
        if !fires.contains(&alert) {
            gaps.push(format!("{alert}: no test case where it fires"));
        }
        if !silent.contains(&alert) {
            gaps.push(format!("{alert}: no test case where it stays silent"));
        }
    }
    assert!(gaps.is_empty(), "{}", gaps.join("\n"));
}

#[test]
fn pending_metrics_are_not_exported_yet() {
    // A metric vector shows in the exposition only once a label set is used, so the source of
    // the metrics module is the place that says whether it is defined yet.
    let source = include_str!("../src/metrics.rs");
    for (name, _) in PENDING {
        assert!(
            !source.contains(&format!("\"{name}\"")),
            "{name} is defined in src/metrics.rs now: add its collector to catalog() and drop it \
             from PENDING"
        );
    }
}

#[test]
fn the_check_rejects_what_the_gateway_does_not_export() {
    let mut cat = catalog();
    cat.recorded.insert(
        "job:raster_edge_requests:rate5m".into(),
        ["job".to_string(), "route".to_string()].into(),
    );
    let bad = [
        // misspelt metric
        ("sum(rate(raster_edge_request_total[5m]))", "not a metric"),
        // a metric that never existed
        ("raster_edge_cache_max_bytes", "not a metric"),
        // histogram suffix on a gauge
        ("raster_edge_cache_bytes_bucket", "not a histogram"),
        // misspelt label in a selector
        (
            "rate(raster_edge_requests_total{stauts=\"5xx\"}[5m])",
            "no label \"stauts\"",
        ),
        // a label the metric does not carry (tier is on rate-limit decisions)
        (
            "sum by (tier) (rate(raster_edge_requests_total[5m]))",
            "label \"tier\"",
        ),
        (
            "a_metric_without_prefix / on (route) raster_edge_requests_total",
            "not a metric",
        ),
        // a value the gateway never sets
        (
            "rate(raster_edge_cache_lookups_total{result=\"hits\"}[5m])",
            "never sets \"hits\"",
        ),
        (
            "rate(raster_edge_cache_evictions_total{cause=~\"size|capacity\"}[5m])",
            "never sets \"capacity\"",
        ),
        (
            "raster_edge_requests_total{status=\"500\"}",
            "never sets \"500\"",
        ),
        // a recording rule nobody records
        ("job:raster_edge_requests:rate1m > 1", "no recording rule"),
        ("{job=\"raster-edge\"}", "without a metric name"),
        ("sum(rate(raster_edge_requests_total[5m])", "does not parse"),
    ];
    for (expr, why) in bad {
        match cat.check(expr) {
            Ok(_) => panic!("accepted a bad expression: {expr}"),
            Err(e) => assert!(
                e.iter().any(|m| m.contains(why)),
                "{expr}: expected {why:?}, got {e:?}"
            ),
        }
    }
    let good = [
        "histogram_quantile(0.99, sum by (le, route) (rate(raster_edge_upstream_duration_seconds_bucket[5m])))",
        "sum(rate(raster_edge_request_duration_seconds_count{cache=\"HIT\"}[5m]))",
        "rate(raster_edge_cache_lookups_total{result=~\"hit|coalesced|stale\", job=\"x\"}[5m])",
        "raster_edge_requests_total{status=\"5xx\", method=\"GET\"}",
        "job:raster_edge_requests:rate5m > 1 and on (job) max by (job, instance) (raster_edge_ready)",
        "label_replace(raster_edge_ready, \"pod\", \"$1\", \"instance\", \"(.*)\") * on (pod) group_left raster_edge_ready",
    ];
    for expr in good {
        if let Err(e) = cat.check(expr) {
            panic!("rejected a valid expression {expr}: {e:?}");
        }
    }
}

#[test]
fn help_texts_yield_label_values() {
    let labels: BTreeSet<String> = ["result".to_string(), "route".to_string()].into();
    let v = values_from_help(
        "Cache lookups by result (hit, miss, stale) and route",
        &labels,
    );
    assert_eq!(
        v.get("result")
            .map(|s| s.iter().map(String::as_str).collect::<Vec<_>>()),
        Some(vec!["hit", "miss", "stale"])
    );
    assert!(!v.contains_key("route"));
    // A parenthesis that is not a value list leaves the label unconstrained.
    assert!(values_from_help("Bytes held by the cache (headers + bodies)", &labels).is_empty());
}
