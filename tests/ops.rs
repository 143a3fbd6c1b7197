//! What runs on ECS: JSON logs, the phase and snapshot metrics, liveness on
//! `/healthz`, the `healthcheck` subcommand, libpq environment variables, and
//! a password that never shows.

use std::process::Stdio;
use std::time::Duration;

use crate::support::*;

fn healthcheck(addr: &str) -> (Option<i32>, String) {
    let out = binary()
        .args(["healthcheck"])
        .env("CALENDAR_SYNC_HTTP_ADDR", addr)
        .output()
        .expect("run healthcheck");
    code_and_text(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_and_carry_the_fatal_error_and_hint() {
    let db = TestDb::crm().await;
    db.migrate().await;
    let json = [("CALENDAR_SYNC_LOG_FORMAT", "json".to_string())];
    let mut child = spawn_run(&db, &json, Stdio::piped());
    wait_streaming(&db).await;
    assert_eq!(sigterm_and_wait(&mut child).await.0, Some(0));
    let stderr = stderr_of(&mut child);
    let mut messages = Vec::new();
    for line in stderr.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line:?}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        assert!(
            !line.contains('\u{1b}'),
            "no colours when not a terminal: {line}"
        );
        messages.push(v["fields"]["message"].as_str().unwrap_or("").to_string());
    }
    assert!(messages.iter().any(|m| m == "streaming"), "{stderr}");

    // A fatal error: progress says streaming, but the slot is gone.
    db.drop_slot_once_released().await;
    let out = spawn_run(&db, &json, Stdio::piped())
        .wait_with_output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let fatal: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .filter(|v: &serde_json::Value| v["fields"]["hint"].is_string())
        .collect();
    assert_eq!(fatal.len(), 1, "{stderr}");
    assert_eq!(fatal[0]["level"], "ERROR", "{stderr}");
    // What a log-based alert filters on (FatalKind::as_str).
    assert_eq!(fatal[0]["fields"]["kind"], "slot_gone", "{stderr}");
    assert!(
        fatal[0]["fields"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("does not exist")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phase_and_snapshot_rows_are_on_metrics_and_healthcheck_answers_0_then_1() {
    let db = TestDb::crm().await;
    db.migrate().await;
    for i in 0..3 {
        db.insert(&format!("Before {i}"), "now()", "").await;
    }
    let nothing = format!("127.0.0.1:{}", free_port());
    let (code, out) = healthcheck(&nothing);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&nothing),
        "the reason names the address: {out}"
    );

    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = spawn_run(
        &db,
        &[("CALENDAR_SYNC_HTTP_ADDR", addr.clone())],
        Stdio::null(),
    );
    wait_ready(port).await;
    let (_, body) = http_get(port, "/metrics").expect("metrics");
    for line in [
        "calendar_sync_phase{phase=\"streaming\"} 1",
        "calendar_sync_phase{phase=\"snapshot\"} 0",
        "calendar_sync_phase{phase=\"backoff\"} 0",
        "calendar_sync_phase{phase=\"stopping\"} 0",
        "calendar_sync_snapshot_rows_total 3",
    ] {
        assert!(body.contains(line), "{line} missing:\n{body}");
    }
    assert!(
        body.contains("calendar_sync_last_server_message_age_seconds"),
        "{body}"
    );
    let (code, out) = healthcheck(&addr);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(sigterm_and_wait(&mut child).await.0, Some(0));
}

/// Sends SIGCONT to the walsender when dropped (a failing assertion must not
/// leave the test server's process stopped).
struct Stopped(u32);

impl Drop for Stopped {
    fn drop(&mut self) {
        signal("CONT", self.0);
    }
}

/// A walsender that stops answering (SIGSTOP: no data, no keepalive) makes
/// `/healthz` 503 after CALENDAR_SYNC_LIVENESS_SECS, and `healthcheck` exit 1;
/// once it answers again, 200 and 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_fails_liveness_and_recovers() {
    let db = TestDb::crm().await;
    db.migrate().await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = spawn_run(
        &db,
        &[
            ("CALENDAR_SYNC_HTTP_ADDR", addr.clone()),
            ("CALENDAR_SYNC_LIVENESS_SECS", "3".into()),
        ],
        Stdio::null(),
    );
    wait_ready(port).await;
    assert_eq!(http_get(port, "/healthz").map(|(c, _)| c), Some(200));
    let pid: i32 = db
        .client
        .query_one(
            "select active_pid from pg_replication_slots where slot_name = $1",
            &[&db.name],
        )
        .await
        .expect("walsender pid")
        .get(0);
    let stopped = Stopped(pid as u32);
    signal("STOP", stopped.0);
    let unhealthy = wait_until(Duration::from_secs(20), || async {
        http_get(port, "/healthz").is_some_and(|(c, _)| c == 503)
    })
    .await;
    assert!(
        unhealthy,
        "/healthz stayed {:?}",
        http_get(port, "/healthz")
    );
    let (_, body) = http_get(port, "/healthz").expect("healthz");
    assert!(body.contains("no message from the server"), "{body}");
    let (code, out) = healthcheck(&addr);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("503"), "{out}");
    drop(stopped);
    let healthy = wait_until(Duration::from_secs(30), || async {
        http_get(port, "/healthz").is_some_and(|(c, _)| c == 200)
    })
    .await;
    assert!(healthy, "/healthz stayed {:?}", http_get(port, "/healthz"));
    assert_eq!(sigterm_and_wait(&mut child).await.0, Some(0));
}

/// The libpq variables connect every command when DATABASE_URL is unset; a
/// PGPASSWORD shows nowhere: not in --help, not in logs or errors (a bad
/// setting), not in status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libpq_variables_connect_and_the_password_never_shows() {
    let db = TestDb::crm().await;
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let port = cluster().port().to_string();
    let pg = |cmd: &[&str], host_port: &str| {
        let mut c = binary();
        c.args(cmd)
            .env_remove("DATABASE_URL")
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", host_port)
            .env("PGUSER", "postgres")
            .env("PGPASSWORD", &password)
            .env("PGDATABASE", &db.name)
            .env("PGSSLMODE", "disable")
            .env("CALENDAR_SYNC_SLOT", &db.name)
            .env("CALENDAR_SYNC_PUBLICATION", &db.name);
        c
    };
    let outputs = std::cell::RefCell::new(Vec::new());
    let check = |what: &str, out: std::process::Output, ok: bool| {
        let (_, text) = code_and_text(&out);
        assert_eq!(out.status.success(), ok, "{what}: {text}");
        outputs.borrow_mut().push((what.to_string(), text));
    };
    check(
        "migrate",
        pg(&["migrate"], &port).output().expect("migrate"),
        true,
    );
    check(
        "status (no slot)",
        pg(&["status"], &port).output().expect("status"),
        false,
    );
    let mut run = pg(&["run"], &port)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    wait_streaming(&db).await;
    check(
        "status",
        pg(&["status", "--json"], &port).output().expect("status"),
        true,
    );
    assert_eq!(sigterm_and_wait(&mut run).await.0, Some(0));
    let run_log = stderr_of(&mut run);
    assert!(run_log.contains("streaming"), "{run_log}");
    outputs.borrow_mut().push(("run".into(), run_log));
    let bad = free_port().to_string();
    // `run` retries a refused connection (transient): its log until then.
    let log = std::env::temp_dir().join(format!("{}-run.log", db.name));
    let mut run = pg(&["run"], &bad)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("run");
    let retried = wait_until(Duration::from_secs(20), || async {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Connection refused"))
    })
    .await;
    assert_eq!(sigterm_and_wait(&mut run).await.0, Some(0));
    let run_log = std::fs::read_to_string(&log).expect("log");
    let _ = std::fs::remove_file(&log);
    assert!(retried, "{run_log}");
    outputs
        .borrow_mut()
        .push(("run with nothing listening".into(), run_log));
    for cmd in [&["migrate"][..], &["status"], &["failures", "list"]] {
        check(
            &format!("{cmd:?} with nothing listening"),
            pg(cmd, &bad).output().expect("command"),
            false,
        );
    }
    check(
        "run with a bad PGSSLMODE",
        pg(&["run"], &port)
            .env("PGSSLMODE", "sometimes")
            .output()
            .expect("run"),
        false,
    );
    // A URL without a password takes PGPASSWORD; still never shown.
    check(
        "status with DATABASE_URL",
        pg(&["status"], &bad)
            .env(
                "DATABASE_URL",
                format!("postgres://postgres@127.0.0.1:{bad}/x"),
            )
            .output()
            .expect("status"),
        false,
    );
    for help in [&["--help"][..], &["run", "--help"], &["status", "--help"]] {
        check(
            &format!("{help:?}"),
            pg(help, &port).output().expect("help"),
            true,
        );
    }
    let outputs = outputs.into_inner();
    for (what, text) in &outputs {
        assert!(
            !text.contains(&password),
            "{what} shows the password: {text}"
        );
    }
    let run_help = &outputs
        .iter()
        .find(|(w, _)| w.contains("\"run\", \"--help\""))
        .expect("help")
        .1;
    for heading in ["Connection", "Replication", "HTTP"] {
        assert!(
            run_help.contains(heading),
            "--help groups flags: {run_help}"
        );
    }
    assert!(run_help.contains("PGPASSWORD"), "{run_help}");
}
