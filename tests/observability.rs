//! The observability and deployment files, checked for real:
//!
//! - a real Prometheus (Debian's package) scrapes objmeta running under load with the repo's
//!   alert rules loaded; every PromQL expression of every dashboard panel must return at least
//!   one series and every alert rule must evaluate without error; `promtool check config`,
//!   `promtool check rules` and `promtool test rules` pass;
//! - the dashboard JSON is well formed (unique panel ids, one datasource reference, every
//!   variable used is defined and every defined one used, panels inside the 24-column grid),
//!   every query selects the `job` variable's job, stat panels ask for instant values and bar
//!   panels for windows as long as their bars;
//! - every alert links its section of docs/alerts.md, and every section there is an alert's;
//! - the objmeta binary exports the standard process metrics and the topic's partition count;
//! - `scripts/check-compose` validates docker-compose.yml against the Compose Specification
//!   schema and checks everything it and the Dockerfile reference.
//!
//! Prometheus, promtool and the schema are not installed here: `scripts/test` installs them
//! (`scripts/services prometheus-install`, `scripts/compose-schema`), and these tests fail
//! with that instruction when they are missing rather than passing silently.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use common::{free_port, repo_root, wait_until, TestBed};
use objmeta::produce::{workload, WorkloadSpec};

/// How the dashboard refers to its datasource: through its `datasource` variable, so the
/// provisioned Prometheus (uid `prometheus`) and any imported-into Prometheus both work.
const DATASOURCE: &str = r#"{"type":"prometheus","uid":"${datasource}"}"#;

/// Where each alert's runbook is: docs/alerts.md on the main branch of Cargo.toml's
/// `repository`, then `#` and the alert's name, lower-cased (GitHub's anchor of its
/// `## ObjmetaXxx` heading).
const RUNBOOK: &str = concat!(env!("CARGO_PKG_REPOSITORY"), "/blob/main/docs/alerts.md#");

/// The job every dashboard query selects, through the `job` variable; also the job name of
/// the test's Prometheus, which the substitution puts in its place.
const JOB_MATCHER: &str = r#"job=~"$job""#;

/// Grafana's built-in variables, with the values the test substitutes (the test's Prometheus
/// scrapes every second, so 15 s windows hold plenty of samples).
const BUILTINS: [(&str, &str); 4] = [
    ("__rate_interval", "15s"),
    ("__interval", "5s"),
    ("__range", "1m"),
    ("__all", ".*"),
];

fn dashboard() -> Value {
    let path = repo_root().join("dashboards/objmeta.json");
    let text = std::fs::read_to_string(&path).expect("read dashboards/objmeta.json");
    serde_json::from_str(&text).expect("dashboards/objmeta.json is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels array") {
        out.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            out.extend(nested.iter());
        }
    }
    out
}

/// `$name` and `${name}` / `${name:format}` references in a string.
fn variables_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        let name: String = if let Some(braced) = rest.strip_prefix('{') {
            braced
                .split(['}', ':'])
                .next()
                .unwrap_or_default()
                .to_string()
        } else {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        };
        if !name.is_empty() {
            out.push(name);
        }
    }
    out
}

/// Every selector in `expr` of a series objmeta's scrape job yields (`objmeta_*`,
/// `process_*`, `up`): the metric name and its label matchers (empty without braces).
/// Quoted strings are skipped, so label values never count as metric names.
fn job_selectors(expr: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(c) = rest.chars().next() {
        if c == '"' {
            let end = rest[1..].find('"').map_or(rest.len(), |e| e + 2);
            rest = &rest[end..];
        } else if c.is_ascii_alphabetic() || c == '_' {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            let (name, after) = rest.split_at(end);
            rest = after;
            if name.starts_with("objmeta_") || name.starts_with("process_") || name == "up" {
                let matchers = after
                    .strip_prefix('{')
                    .and_then(|m| m.split_once('}'))
                    .map_or("", |(inside, _)| inside);
                out.push((name, matchers));
            }
        } else {
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The range windows (`[…]`) of a PromQL expression.
fn range_windows(expr: &str) -> Vec<&str> {
    expr.split('[')
        .skip(1)
        .filter_map(|part| part.split_once(']').map(|(window, _)| window))
        .collect()
}

/// What is wrong with one query of a panel: a selector without the `job` variable's
/// matcher, a job written out, or (in a bar panel) a window other than the bar's interval.
fn query_problems(expr: &str, bars: bool) -> Vec<String> {
    let mut problems = Vec::new();
    if !expr.contains("$job") {
        problems.push("does not use $job".to_string());
    }
    for (name, matchers) in job_selectors(expr) {
        if !matchers.contains(JOB_MATCHER) {
            problems.push(format!("selects {name} without {JOB_MATCHER}"));
        }
    }
    if expr.replace(JOB_MATCHER, "").contains("job=") {
        problems.push("hard-codes a job".to_string());
    }
    if bars {
        for window in range_windows(expr) {
            if window != "$__interval" {
                problems.push(format!(
                    "bar window [{window}] is not the bar interval [$__interval]"
                ));
            }
        }
    }
    problems
}

/// What is wrong with the queries of one panel; see [`query_problems`]. Stat panels show one
/// value, so they ask for it alone (instant) instead of a range Grafana reduces.
fn panel_query_problems(panel: &Value) -> Vec<String> {
    let bars = panel["fieldConfig"]["defaults"]["custom"]["drawStyle"] == "bars";
    let mut problems = Vec::new();
    if bars && panel["interval"].as_str().unwrap_or_default().is_empty() {
        problems.push("bar panel without a minimum interval".to_string());
    }
    for target in panel["targets"].as_array().into_iter().flatten() {
        let expr = target["expr"].as_str().unwrap_or_default();
        if panel["type"] == "stat" && (target["instant"] != true || target["range"] == true) {
            problems.push(format!("stat query {expr} is not instant"));
        }
        problems.extend(
            query_problems(expr, bars)
                .into_iter()
                .map(|p| format!("{expr}: {p}")),
        );
    }
    problems
}

#[test]
fn dashboard_json_is_well_formed() {
    let dashboard = dashboard();
    let datasource: Value = serde_json::from_str(DATASOURCE).unwrap();
    let mut problems = Vec::new();

    let variables: BTreeMap<String, &Value> = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .map(|v| (v["name"].as_str().expect("variable name").to_string(), v))
        .collect();
    let ds_variable = variables.get("datasource").expect("a datasource variable");
    assert_eq!(ds_variable["type"], "datasource");
    assert_eq!(ds_variable["query"], "prometheus");
    let instance = variables.get("instance").expect("an instance variable");
    assert_eq!(instance["datasource"], datasource);
    assert_eq!(instance["includeAll"], true);
    assert_eq!(instance["allValue"], ".*");
    assert!(
        query_problems(instance["query"]["query"].as_str().unwrap(), false).is_empty(),
        "the replicas offered are the selected job's"
    );
    // One job at a time, so that two deployments scraped by one Prometheus never mix; the
    // compose stack's and the chart's job by default.
    let job = variables.get("job").expect("a job variable");
    assert_eq!(job["datasource"], datasource);
    assert_eq!(
        job["query"]["query"],
        "label_values(objmeta_build_info, job)"
    );
    assert_eq!(job["current"]["value"], "objmeta");
    assert_eq!(job["includeAll"], false);
    assert_eq!(job["multi"], false);

    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    let mut cells: BTreeMap<(i64, i64), u64> = BTreeMap::new();
    let all = panels(&dashboard);
    for panel in &all {
        let id = panel["id"].as_u64().expect("numeric panel id");
        let title = panel["title"].as_str().unwrap_or_default();
        if !ids.insert(id) {
            problems.push(format!("panel id {id} ({title}) is not unique"));
        }
        let grid = &panel["gridPos"];
        let (x, y, w, h) = (
            grid["x"].as_i64().unwrap_or(-1),
            grid["y"].as_i64().unwrap_or(-1),
            grid["w"].as_i64().unwrap_or(0),
            grid["h"].as_i64().unwrap_or(0),
        );
        if x < 0 || y < 0 || w <= 0 || h <= 0 || x + w > 24 {
            problems.push(format!("panel {id} ({title}) has a bad gridPos {grid}"));
        }
        for cx in x..x + w {
            for cy in y..y + h {
                if let Some(other) = cells.insert((cx, cy), id) {
                    problems.push(format!("panel {id} ({title}) overlaps panel {other}"));
                }
            }
        }
        if panel["type"] == "row" {
            continue;
        }
        if panel["datasource"] != datasource {
            problems.push(format!(
                "panel {id} ({title}) datasource is not {DATASOURCE}"
            ));
        }
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("panel {id} ({title}) has no query"));
        }
        let mut ref_ids = BTreeSet::new();
        for target in &targets {
            if target["datasource"] != datasource {
                problems.push(format!("panel {id} ({title}) target datasource differs"));
            }
            if !ref_ids.insert(target["refId"].as_str().unwrap_or_default().to_string()) {
                problems.push(format!("panel {id} ({title}) repeats a refId"));
            }
            if target["expr"]
                .as_str()
                .unwrap_or_default()
                .trim()
                .is_empty()
            {
                problems.push(format!("panel {id} ({title}) has an empty expr"));
            }
        }
        for problem in panel_query_problems(panel) {
            problems.push(format!("panel {id} ({title}): {problem}"));
        }
        used.extend(variables_in(&panel.to_string()));
    }
    for variable in variables.values() {
        used.extend(variables_in(&variable["datasource"].to_string()));
    }
    for name in &used {
        let builtin = BUILTINS.iter().any(|(b, _)| b == name);
        if !builtin && !variables.contains_key(name) {
            problems.push(format!("variable ${name} is used but not defined"));
        }
    }
    for name in variables.keys() {
        if !used.contains(name) {
            problems.push(format!("variable ${name} is defined but never used"));
        }
    }
    // The provisioned datasource is the default one, with the uid docs/operations.md mentions.
    let provisioned = std::fs::read_to_string(
        repo_root().join("deploy/grafana/provisioning/datasources/prometheus.yml"),
    )
    .expect("datasource provisioning file");
    assert!(provisioned.contains("uid: prometheus") && provisioned.contains("isDefault: true"));
    assert!(
        problems.is_empty(),
        "dashboard problems:\n{}",
        problems.join("\n")
    );
    println!(
        "dashboard: {} panels ({} rows), variables {:?}",
        all.len(),
        all.iter().filter(|p| p["type"] == "row").count(),
        variables.keys().collect::<Vec<_>>()
    );
}

/// Every rule of alerts.yml as (alert name, its runbook_url annotation if any), read from
/// the text (each rule starts with `- alert:`); promtool, run by the Prometheus test,
/// vouches that the file is valid, and Prometheus' own view is checked there too.
fn alert_runbooks() -> Vec<(String, Option<String>)> {
    let path = repo_root().join("deploy/prometheus/alerts.yml");
    let text = std::fs::read_to_string(path).expect("read deploy/prometheus/alerts.yml");
    text.split("- alert:")
        .skip(1)
        .map(|rule| {
            let name = rule
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            let url = rule.lines().find_map(|line| {
                let value = line.trim().strip_prefix("runbook_url:")?;
                Some(value.trim().trim_matches('"').to_string())
            });
            (name, url)
        })
        .collect()
}

/// GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_links_its_runbook_section_and_every_section_is_an_alert() {
    let docs = std::fs::read_to_string(repo_root().join("docs/alerts.md")).expect("docs/alerts.md");
    let sections: BTreeMap<String, &str> = docs
        .lines()
        .filter_map(|line| line.strip_prefix("## "))
        .map(|heading| (anchor(heading), heading))
        .collect();
    let alerts = alert_runbooks();
    assert!(!alerts.is_empty(), "no alert read from alerts.yml");
    let mut problems = Vec::new();
    for (name, url) in &alerts {
        let expected = format!("{RUNBOOK}{}", name.to_lowercase());
        match url {
            Some(url) if *url == expected => {}
            Some(url) => problems.push(format!("{name}: runbook_url {url}, expected {expected}")),
            None => problems.push(format!("{name} has no runbook_url")),
        }
        if !sections.contains_key(&name.to_lowercase()) {
            problems.push(format!("docs/alerts.md has no \"## {name}\" section"));
        }
    }
    for heading in sections.values() {
        if !alerts.iter().any(|(name, _)| name == heading) {
            problems.push(format!("docs/alerts.md section \"{heading}\" is no alert"));
        }
    }
    assert!(
        problems.is_empty(),
        "runbook problems:\n{}",
        problems.join("\n")
    );
}

#[test]
fn compose_file_and_dockerfile_pass_offline_checks() {
    let schema = repo_root().join(".services/compose-schema/compose-spec.json");
    assert!(
        schema.is_file(),
        "the Compose Specification schema is missing: run `scripts/compose-schema` \
         (scripts/test does it) to fetch it into {}",
        schema.display()
    );
    let output = Command::new(repo_root().join("scripts/check-compose"))
        .arg("--schema")
        .arg(&schema)
        .output()
        .expect("run scripts/check-compose (needs python3 with PyYAML and jsonschema)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "scripts/check-compose failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The Prometheus tools from Debian's package, or a failure that says how to get them.
fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{name}` is not installed: run `scripts/services prometheus-install` \
             (scripts/test does it) and run the tests again"
        )
    })
}

fn promtool(args: &[&str]) -> String {
    let output = Command::new(tool("promtool"))
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool {} failed:\n{text}",
        args.join(" ")
    );
    let summary: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    println!("promtool {}: {}", args.join(" "), summary.join(" | "));
    text
}

/// A private Prometheus on a loopback port, killed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(objmeta_port: u16) -> Prometheus {
        let binary = tool("prometheus");
        let dir = tempfile::tempdir().expect("temp dir");
        let rules = repo_root().join("deploy/prometheus/alerts.yml");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: objmeta\n    static_configs:\n      \
                 - targets: ['127.0.0.1:{objmeta_port}']\n",
                rules = rules.display()
            ),
        )
        .expect("write prometheus.yml");
        promtool(&["check", "config", config.to_str().unwrap()]);
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus { child, port, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GET on the HTTP API; HTTP/1.0 so the body is never chunked.
    async fn get(&self, path_and_query: &str) -> Option<Value> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .ok()?;
        let request = format!("GET {path_and_query} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response);
        serde_json::from_str(text.split_once("\r\n\r\n")?.1).ok()
    }

    /// An instant query: the result vector, or the error Prometheus gave.
    async fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let body = self
            .get(&format!("/api/v1/query?query={}", url_encode(promql)))
            .await
            .ok_or_else(|| "no answer from Prometheus".to_string())?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        match &body["data"]["result"] {
            Value::Array(series) => Ok(series.clone()),
            // Scalar results (e.g. `time()`) count as one series.
            other => Ok(vec![other.clone()]),
        }
    }

    async fn series_count(&self, promql: &str) -> usize {
        self.query(promql).await.map(|s| s.len()).unwrap_or(0)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A panel expression as Grafana would send it with "All" replicas selected.
fn substitute(expr: &str) -> String {
    let mut out = expr.replace("$instance", ".*").replace("$job", "objmeta");
    for (name, value) in BUILTINS {
        out = out.replace(&format!("${{{name}}}"), value);
        out = out.replace(&format!("${name}"), value);
    }
    out
}

/// Publishes MinIO-format events (with wall-clock times) in small chunks until `stop` is set
/// or `max` messages went out; one message in 50 is unusable, to feed the dead-letter series.
async fn load(bed: Arc<TestBed>, stop: Arc<AtomicBool>, max: usize) -> usize {
    let spec = WorkloadSpec {
        count: max as u64,
        buckets: 2,
        objects: 800,
        copy_percent: 20,
        delete_percent: 10,
        seed: 4,
    };
    let mut events = workload(&spec).with_wall_clock();
    let mut sent = 0;
    while sent < max && !stop.load(Ordering::Relaxed) {
        let mut chunk = Vec::new();
        for _ in 0..250 {
            sent += 1;
            match sent % 50 {
                0 => chunk.push((format!("junk/{sent}"), b"not json at all".to_vec())),
                25 => chunk.push((format!("junk/{sent}"), br#"{"hello":"world"}"#.to_vec())),
                _ => match events.next() {
                    Some(m) => chunk.push((m.key, m.payload)),
                    None => break,
                },
            }
        }
        bed.publish(&chunk).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_objmeta_under_load_and_every_panel_and_rule_evaluates() {
    // Offline checks of the repository's files first (fast, and they fail with a clear message
    // when promtool is missing).
    promtool(&["check", "config", "deploy/prometheus/prometheus.yml"]);
    promtool(&["check", "rules", "deploy/prometheus/alerts.yml"]);
    promtool(&["test", "rules", "deploy/prometheus/alerts_test.yml"]);

    let bed = Arc::new(TestBed::new("observability", 3).await);
    // A reconcile of bucket "photos" that finished just now, as `objmeta reconcile` records
    // it: the periodic reconcile exports it (the Reconcile row's data) and, since it is not
    // due for an hour, never contacts the S3 endpoint (nothing listens there).
    objmeta::migrate(&bed.run_config(0, &[]).database)
        .await
        .expect("migrations");
    bed.db()
        .await
        .execute(
            "INSERT INTO reconcile_runs (bucket, prefix, started_at, listed, missing, stale, removed, errors)
             VALUES ('photos', '', now() - interval '20 seconds', 1200, 3, 2, 1, 0)",
            &[],
        )
        .await
        .expect("record a reconcile");
    let objmeta = bed.start(&[
        "--reconcile-every",
        "1h",
        "--reconcile-bucket",
        "photos",
        "--s3-endpoint",
        "http://127.0.0.1:9",
        "--s3-access-key",
        "unused",
        "--s3-secret-key",
        "unused",
    ]);
    let prometheus = Prometheus::start(objmeta.http_port);
    wait_until(Duration::from_secs(30), "Prometheus ready", || async {
        prometheus.get("/api/v1/status/buildinfo").await.map(|_| ())
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let loader = tokio::spawn(load(bed.clone(), stop.clone(), 30_000));

    // Data for every panel: a scraped target, lag from librdkafka's statistics (every 5 s),
    // dead letters, written rows and delay observations inside the rate window.
    let ready = [
        r#"up{job="objmeta"} == 1"#,
        "objmeta_consumer_lag",
        r#"objmeta_dead_letters_total{reason="invalid_json"} > 0"#,
        r#"objmeta_dead_letters_total{reason="not_s3_event"} > 0"#,
        "rate(objmeta_rows_written_total[15s]) > 0",
        "rate(objmeta_event_delay_seconds_count[15s]) > 0",
        "rate(objmeta_flush_duration_seconds_count[15s]) > 0",
        "objmeta_committed_offset",
        "objmeta_reconcile_drift_objects",
    ];
    wait_until(
        Duration::from_secs(60),
        "Prometheus to hold objmeta's series under load",
        || async {
            for promql in ready {
                if prometheus.series_count(promql).await == 0 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;

    // Every expression of every panel, substituted as Grafana would, while the load runs.
    let dashboard = dashboard();
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or_default();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = substitute(target["expr"].as_str().unwrap_or_default());
            let label = format!("{title} [{}]", target["refId"].as_str().unwrap_or("?"));
            match prometheus.query(&expr).await {
                Ok(series) if !series.is_empty() => report.push((label, series.len())),
                Ok(_) => failures.push(format!("{label}: no series for {expr}")),
                Err(e) => failures.push(format!("{label}: {e} for {expr}")),
            }
        }
    }
    println!("dashboard panel queries (series returned):");
    for (label, count) in &report {
        println!("  {count:>3}  {label}");
    }

    // Every alert rule, as Prometheus itself loaded and evaluated it from alerts.yml.
    let rules_file =
        std::fs::read_to_string(repo_root().join("deploy/prometheus/alerts.yml")).unwrap();
    let expected_rules = rules_file.matches("- alert:").count();
    let rules = wait_until(
        Duration::from_secs(30),
        "every alert rule evaluated, ObjmetaDeadLetters pending or firing",
        || async {
            let body = prometheus.get("/api/v1/rules").await?;
            let rules: Vec<Value> = body["data"]["groups"]
                .as_array()?
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            let evaluated = rules.iter().all(|r| r["health"] != "unknown");
            // Rules run every second: wait for an evaluation that saw the dead letters.
            let dead_letters_seen = rules
                .iter()
                .any(|r| r["name"] == "ObjmetaDeadLetters" && r["state"] != "inactive");
            (rules.len() == expected_rules && evaluated && dead_letters_seen).then_some(rules)
        },
    )
    .await;
    println!("alert rules (health, state, series now):");
    for rule in &rules {
        let name = rule["name"].as_str().unwrap_or_default();
        let query = rule["query"].as_str().unwrap_or_default();
        let runbook = format!("{RUNBOOK}{}", name.to_lowercase());
        if rule["annotations"]["runbook_url"] != runbook.as_str() {
            failures.push(format!("rule {name}: runbook_url is not {runbook}"));
        }
        if rule["health"] != "ok" {
            failures.push(format!(
                "rule {name}: health {} {}",
                rule["health"], rule["lastError"]
            ));
        }
        match prometheus.query(query).await {
            Ok(series) => println!(
                "  {name}: {} {} ({} series)",
                rule["health"],
                rule["state"],
                series.len()
            ),
            Err(e) => failures.push(format!("rule {name}: {e}")),
        }
    }

    stop.store(true, Ordering::Relaxed);
    let sent = loader.await.expect("load task");
    bed.wait_committed(sent as i64, Duration::from_secs(60))
        .await;
    let metrics = common::http_get(objmeta.http_port, "/metrics")
        .await
        .expect("metrics")
        .1;
    println!("published {sent} messages; /metrics excerpt:");
    for line in metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.contains("_bucket{"))
        .filter(|l| !l.ends_with(" 0") || l.starts_with("objmeta_consumer_lag"))
    {
        println!("  {line}");
    }
    objmeta.stop().await.expect("objmeta stops cleanly");
    assert!(
        failures.is_empty(),
        "{} problems:\n{}\nPrometheus log:\n{}",
        failures.len(),
        failures.join("\n"),
        prometheus.log()
    );
    let targets: usize = panels(&dashboard)
        .iter()
        .map(|p| p["targets"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(report.len(), targets, "every panel query returned series");
}

#[test]
fn substitution_covers_every_variable_form() {
    assert_eq!(
        substitute(
            r#"rate(x{job=~"$job", instance=~"$instance"}[$__rate_interval]) + y[${__range}]"#
        ),
        r#"rate(x{job=~"objmeta", instance=~".*"}[15s]) + y[1m]"#
    );
    assert_eq!(
        variables_in("a $instance b ${datasource} c ${x:csv}"),
        ["instance", "datasource", "x"]
    );
}

#[test]
fn query_checks_catch_a_written_out_job_a_missing_matcher_and_overlapping_bars() {
    let good = r#"sum by (kind) (increase(objmeta_database_errors_total{job=~"$job", instance=~"$instance"}[$__interval]))"#;
    assert_eq!(query_problems(good, true), Vec::<String>::new());
    assert_eq!(
        query_problems(r#"sum(up{job="objmeta", instance=~"$instance"})"#, false),
        [
            "does not use $job",
            r#"selects up without job=~"$job""#,
            "hard-codes a job"
        ]
    );
    assert_eq!(
        query_problems(
            r#"process_open_fds{job=~"$job"} / on(instance) objmeta_build_info{kind="up"}"#,
            false
        ),
        [r#"selects objmeta_build_info without job=~"$job""#]
    );
    assert_eq!(
        query_problems(
            r#"sum(increase(objmeta_rebalances_total{job=~"$job"}[$__rate_interval]))"#,
            true
        ),
        ["bar window [$__rate_interval] is not the bar interval [$__interval]"]
    );
}

/// The built binary, as a user runs it, exports the standard process metrics of its own
/// process (the collector reads /proc: Linux only) and the partition count of its topic.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exports_process_metrics_and_the_topic_partition_count() {
    let bed = TestBed::new("process_metrics", 3).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let mut service = bed.spawn_binary(&[]);
    let port = service.http_port;
    // librdkafka's statistics (every 5 s) carry the partition count.
    let partitions = wait_until(
        Duration::from_secs(60),
        "objmeta_topic_partitions",
        || async {
            TestBed::metric(port, "objmeta_topic_partitions")
                .await
                .filter(|p| *p > 0.0)
        },
    )
    .await;
    assert_eq!(partitions, 3.0, "the test topic has 3 partitions");
    let mut values = BTreeMap::new();
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        let value = TestBed::metric(port, name).await;
        values.insert(
            name,
            value.unwrap_or_else(|| panic!("/metrics lacks {name}")),
        );
    }
    println!("process metrics of the objmeta binary: {values:?}");
    assert!(values["process_resident_memory_bytes"] > 1_000_000.0);
    assert!(values["process_open_fds"] >= 3.0);
    // /proc gives the start in clock ticks since a boot time in whole seconds.
    let started = values["process_start_time_seconds"];
    assert!(
        (before - 2.0..before + 60.0).contains(&started),
        "start time {started}, spawned at {before}"
    );
    let status = service.terminate(Duration::from_secs(60)).await;
    assert!(status.success(), "{status:?}\n{}", service.log());
}
