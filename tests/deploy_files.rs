//! deploy/: the Prometheus alert rules pass `promtool check rules` and their
//! unit tests (`promtool test rules`), and every metric the alerts, their
//! tests and the Grafana dashboard name exists on the real binary's
//! `/metrics` (or is listed below as coming from postgres_exporter); the
//! command output the READMEs quote is the operator's-day transcript.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

const RULE_FILES: &[&str] = &[
    "deploy/prometheus/alerts.yml",
    "deploy/prometheus/postgres-exporter-alerts.yml",
];
const RULE_TESTS: &str = "deploy/prometheus/alerts.test.yml";
const DASHBOARD: &str = "deploy/grafana/calendar-sync.json";

/// Metrics of postgres_exporter's `replication_slots` collector, used by
/// `postgres-exporter-alerts.yml` and the dashboard's retained-WAL panel.
/// Not calendar-sync's: retained WAL is the server's business, and
/// `/metrics` vanishes exactly when it matters (a dead consumer).
const EXPORTER_METRICS: &[&str] = &[
    "pg_replication_slots_pg_wal_lsn_diff",
    "pg_replication_slots_safe_wal_size_bytes",
    "pg_replication_slots_wal_status",
];

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_path(rel))
        .unwrap_or_else(|e| panic!("cannot read {rel}: {e} (the deploy/ files belong in git)"))
}

/// `promtool`, or `None` (after saying so) when it is missing outside CI.
/// In CI (`CI` set) a missing promtool fails the test: `.ci/run` installs it.
fn promtool() -> Option<Command> {
    let found = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some(Command::new("promtool"));
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "promtool is missing but CI is set: .ci/run installs Debian's `prometheus` package, which ships it"
    );
    eprintln!(
        "SKIPPED: promtool not found (apt-get install prometheus); the alert rules were not checked"
    );
    None
}

fn run_promtool(mut cmd: Command, what: &str) {
    let out = cmd.output().expect("run promtool");
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let Some(mut check) = promtool() else { return };
    check.arg("check").arg("rules");
    for f in RULE_FILES {
        check.arg(repo_path(f));
    }
    run_promtool(check, "promtool check rules");
    let Some(mut test) = promtool() else { return };
    test.arg("test").arg("rules").arg(repo_path(RULE_TESTS));
    run_promtool(test, "promtool test rules");
}

/// The dashboard's queries parse: each becomes a recording rule (Grafana's
/// `$__rate_interval` replaced by `5m`) that `promtool check rules` parses.
#[test]
fn dashboard_queries_are_valid_promql() {
    let Some(mut check) = promtool() else { return };
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(DASHBOARD)).expect("dashboard JSON");
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e.replace("$__rate_interval", "5m");
        let e = serde_json::to_string(&e).expect("JSON string is a YAML string");
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {e}\n"
        ));
    }
    let dir = std::env::temp_dir().join(format!("calendar-sync-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("dashboard-queries.yml");
    std::fs::write(&file, rules).expect("write rules");
    check.arg("check").arg("rules").arg(&file);
    run_promtool(check, "promtool check rules (the dashboard's queries)");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The PromQL (or series) values of `keys` in a YAML file: `key: value` on
/// one line (quotes removed), or a `|`/`>` block (the lines indented deeper).
/// Enough for our own files; comments and annotations are not looked at.
fn yaml_values(text: &str, keys: &[&str]) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let item = trimmed.strip_prefix("- ").unwrap_or(trimmed);
        let indent = line.len() - item.len();
        let Some(value) = keys
            .iter()
            .find_map(|k| item.strip_prefix(k).and_then(|r| r.strip_prefix(':')))
        else {
            continue;
        };
        let value = value.trim();
        if value.starts_with('|') || value.starts_with('>') {
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .copied()
                .collect();
            out.push(block.join("\n"));
        } else {
            let unquoted = value
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .or_else(|| value.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
                .unwrap_or(value);
            out.push(unquoted.to_string());
        }
    }
    out
}

/// Every `"expr"` string in the dashboard JSON.
fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// Identifiers in a PromQL expression outside quoted strings: metric names,
/// functions, keywords and label names (the caller keeps what it checks).
fn identifiers(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '"' || c == '\'' || c == '`' {
            let mut escaped = false;
            for d in chars.by_ref() {
                if escaped {
                    escaped = false;
                } else if d == '\\' {
                    escaped = true;
                } else if d == c {
                    break;
                }
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let mut id = c.to_string();
            while let Some(&d) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '_' || d == ':' {
                    id.push(d);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(id);
        } else if c.is_ascii_digit() {
            // Numbers and durations (5m, 1e9): skip their letters too.
            while chars.peek().is_some_and(|d| d.is_ascii_alphanumeric()) {
                chars.next();
            }
        }
    }
    out
}

/// (file, metric) for every `calendar_sync_*` and `pg_*` name the deploy
/// files query.
fn metrics_used() -> Vec<(&'static str, String)> {
    let mut exprs: Vec<(&'static str, String)> = Vec::new();
    for f in RULE_FILES {
        for e in yaml_values(&read(f), &["expr"]) {
            exprs.push((f, e));
        }
    }
    for e in yaml_values(&read(RULE_TESTS), &["expr", "series"]) {
        exprs.push((RULE_TESTS, e));
    }
    let dashboard: serde_json::Value = serde_json::from_str(&read(DASHBOARD))
        .unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"));
    let mut panels = Vec::new();
    dashboard_exprs(&dashboard, &mut panels);
    assert!(!panels.is_empty(), "{DASHBOARD} has no queries");
    exprs.extend(panels.into_iter().map(|e| (DASHBOARD, e)));
    let mut used = Vec::new();
    for (file, e) in exprs {
        for id in identifiers(&e) {
            if id.starts_with("calendar_sync_") || id.starts_with("pg_") {
                used.push((file, id));
            }
        }
    }
    used
}

#[test]
fn the_metric_name_scanner_finds_names_and_skips_strings_and_durations() {
    assert_eq!(
        identifiers(
            r#"sum by (action) (rate(calendar_sync_actions_total{status="calendar_sync_x"}[5m])) > 1e3"#
        ),
        [
            "sum",
            "by",
            "action",
            "rate",
            "calendar_sync_actions_total",
            "status"
        ]
    );
    let yaml = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: |\n          calendar_sync_streaming == 0\n          unless on (job) up\n        for: 10m\n      - expr: 'calendar_sync_pending_failures > 0'\n";
    assert_eq!(
        yaml_values(yaml, &["expr"]),
        [
            "          calendar_sync_streaming == 0\n          unless on (job) up",
            "calendar_sync_pending_failures > 0"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_the_dashboard_query_exists_on_metrics() {
    let used = metrics_used();
    let files: BTreeSet<&str> = used.iter().map(|(f, _)| *f).collect();
    for f in RULE_FILES.iter().chain([&RULE_TESTS, &DASHBOARD]) {
        assert!(
            files.contains(f),
            "{f}: no calendar_sync_* or pg_* metric found in it"
        );
    }

    let db = TestDb::crm().await;
    db.migrate().await;
    let port = free_port();
    let mut child = spawn_run(
        &db,
        &[("CALENDAR_SYNC_HTTP_ADDR", format!("127.0.0.1:{port}"))],
        Stdio::null(),
    );
    let (scraped, body) = wait_metrics(port, Duration::from_secs(30), |b| {
        b.contains("# TYPE calendar_sync_streaming ")
    })
    .await;
    let (code, _) = sigterm_and_wait(&mut child).await;
    assert!(scraped, "/metrics never answered; last body: {body}");
    assert_eq!(code, Some(0), "exit code after SIGTERM");

    let exposed: BTreeSet<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut missing = Vec::new();
    for (file, name) in &used {
        let known = if name.starts_with("pg_") {
            EXPORTER_METRICS.contains(&name.as_str())
        } else {
            exposed.contains(name.as_str())
        };
        if !known {
            missing.push(format!("{file}: {name}"));
        }
    }
    missing.dedup();
    assert!(
        missing.is_empty(),
        "metrics queried but not exposed by calendar-sync (nor listed as postgres_exporter's):\n{}\n/metrics has: {exposed:?}",
        missing.join("\n")
    );
}

fn json(rel: &str) -> serde_json::Value {
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not JSON: {e}"))
}

fn env_value<'a>(container: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    container["environment"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
}

/// The ECS files agree with each other, the Dockerfile and the alert rules:
/// the CA bundle path, the health check, the Prometheus job, one task per slot.
#[test]
fn ecs_definitions_agree_with_the_image_and_the_alerts() {
    const CA: &str = "/etc/ssl/rds-global-bundle.pem";
    let dockerfile = read("deploy/Dockerfile");
    assert!(
        dockerfile.contains(&format!("ADD ${{RDS_CA_URL}} {CA}"))
            && dockerfile.contains(&format!("\"$RDS_CA_SHA256  {CA}\" | sha256sum -c")),
        "the Dockerfile must fetch the RDS bundle to {CA} and check its sha256"
    );
    assert!(read("deploy/README.md").contains(CA));
    assert!(read("README.md").contains(CA));

    let run = json("deploy/ecs-task-definition.json");
    let migrate = json("deploy/ecs-migrate-task-definition.json");
    let [c] = run["containerDefinitions"]
        .as_array()
        .expect("containers")
        .as_slice()
    else {
        panic!("the streaming task has exactly one container (no migrate in it)")
    };
    assert_eq!(c["command"], serde_json::json!(["run"]));
    assert_eq!(
        c["healthCheck"]["command"],
        serde_json::json!(["CMD", "/usr/local/bin/calendar-sync", "healthcheck"])
    );
    let start = c["healthCheck"]["startPeriod"]
        .as_u64()
        .expect("startPeriod");
    assert!((60..=300).contains(&start), "ECS allows 0-300 s: {start}");
    assert!(c["stopTimeout"].as_u64().is_some_and(|s| s >= 30));
    assert_eq!(
        c["dockerLabels"]["ECS_PROMETHEUS_JOB_NAME"],
        "calendar-sync"
    );
    assert!(read("deploy/prometheus/alerts.yml").contains("up{job=\"calendar-sync\"}"));
    let [m] = migrate["containerDefinitions"]
        .as_array()
        .expect("containers")
        .as_slice()
    else {
        panic!("the migrate task has exactly one container")
    };
    assert_eq!(m["command"], serde_json::json!(["migrate"]));
    assert_ne!(env_value(c, "PGUSER"), env_value(m, "PGUSER"), "two roles");
    for (what, c) in [("run", c), ("migrate", m)] {
        assert_eq!(env_value(c, "PGSSLMODE"), Some("verify-full"), "{what}");
        assert_eq!(env_value(c, "PGSSLROOTCERT"), Some(CA), "{what}");
        let secrets = c["secrets"].as_array().expect("secrets");
        assert!(
            secrets.iter().all(|s| s["name"] == "PGPASSWORD"
                && s["valueFrom"]
                    .as_str()
                    .is_some_and(|v| v.ends_with(":password::"))),
            "{what}: only PGPASSWORD, from the secret's JSON key `password`"
        );
        assert!(env_value(c, "PGPASSWORD").is_none() && env_value(c, "DATABASE_URL").is_none());
    }
    let service = json("deploy/ecs-service.json");
    let d = &service["deploymentConfiguration"];
    assert_eq!(
        (
            d["minimumHealthyPercent"].as_u64(),
            d["maximumPercent"].as_u64()
        ),
        (Some(0), Some(100))
    );
    assert_eq!(service["desiredCount"], 1);
}

/// The output the READMEs quote (plain code blocks that start with `$ ` or
/// `... `) is `docs/operators-day.sh`'s real transcript: every line of it is a
/// line of `docs/operators-day.out`, trimmed only (a `...` line stands for
/// lines left out, a leading `... ` for the start of a line left out).
/// After regenerating the transcript, quote it again.
#[test]
fn the_operators_day_the_readmes_quote_is_the_transcript() {
    let transcript = read("docs/operators-day.out");
    let lines: BTreeSet<&str> = transcript.lines().map(str::trim).collect();
    for doc in ["README.md", "deploy/README.md"] {
        let text = read(doc);
        let mut blocks: Vec<Vec<&str>> = Vec::new();
        let mut open: Option<(bool, Vec<&str>)> = None;
        for line in text.lines() {
            let t = line.trim();
            if t.starts_with("```") {
                match open.take() {
                    None => open = Some((t == "```", Vec::new())),
                    Some((true, block)) => blocks.push(block),
                    Some((false, _)) => {}
                }
            } else if let Some((_, block)) = open.as_mut() {
                if !t.is_empty() {
                    block.push(t);
                }
            }
        }
        let quoted: Vec<&str> = blocks
            .into_iter()
            .filter(|b| {
                b.first()
                    .is_some_and(|l| l.starts_with("$ ") || l.starts_with("... "))
            })
            .flatten()
            .filter(|l| *l != "...")
            .collect();
        assert!(
            quoted.len() > 20,
            "{doc} quotes the operator's day: {quoted:?}"
        );
        for l in quoted {
            let found = match l.strip_prefix("... ") {
                Some(tail) => lines.iter().any(|t| t.ends_with(tail)),
                None => lines.contains(l),
            };
            assert!(
                found,
                "{doc} quotes a line that is not in docs/operators-day.out (regenerate with docs/operators-day.sh and quote it again): {l}"
            );
        }
    }
}
