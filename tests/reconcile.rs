//! Issue 8 section 1: `calendar-sync reconcile [--dry-run] [--json]` measures
//! and repairs drift between `interaction` and `calendar_events`; `run
//! --resync` is the way back from a dropped slot.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::support::*;

/// `calendar-sync reconcile` for `db` with `args`: exit code, stdout, stderr.
fn reconcile_cmd(db: &TestDb, args: &[&str]) -> Command {
    let mut c = binary_for(db);
    c.arg("reconcile").args(args);
    c
}

async fn reconcile(db: &TestDb, args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let mut c = reconcile_cmd(db, args);
    let out = tokio::task::spawn_blocking(move || c.output().expect("run reconcile"))
        .await
        .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = if args.contains(&"--json") {
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "reconcile --json printed no JSON ({e}): {}\nstderr: {stderr}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    } else {
        serde_json::Value::Null
    };
    (out.status.code(), json, stderr)
}

/// The counts of a report that should be zero everywhere except `expect`.
fn assert_report(
    v: &serde_json::Value,
    missing: u64,
    extra: u64,
    drifted: u64,
    fields: &[(&str, u64)],
) {
    assert_eq!(v["missing"], missing, "missing: {v:#}");
    assert_eq!(v["extra"], extra, "extra: {v:#}");
    assert_eq!(v["drifted"], drifted, "drifted: {v:#}");
    let map = v["fields"].as_object().expect("fields is an object");
    for (name, n) in map {
        let want = fields
            .iter()
            .find(|(f, _)| f == name)
            .map_or(0, |(_, n)| *n);
        assert_eq!(n.as_u64(), Some(want), "fields.{name}: {v:#}");
    }
    for (f, _) in fields {
        assert!(map.contains_key(*f), "fields has {f}: {v:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_reports_injected_drift_by_field_reconcile_repairs_it_and_a_second_dry_run_finds_none(
) {
    let db = TestDb::crm().await;
    db.migrate().await;
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    let deleted = db
        .insert("Event deleted by hand", "now() + interval '1 day'", "")
        .await;
    let edited = db
        .insert(
            "Event edited by hand",
            "now() + interval '2 days'",
            "location='Room 1'",
        )
        .await;
    let intact = db
        .insert(
            "Intact",
            "now() + interval '3 days'",
            &format!("customer_id='{CUSTOMER}';contact_id='{CONTACT}'"),
        )
        .await;
    let old = db
        .insert("Old, event kept", "now() + interval '1 day'", "")
        .await;
    db.barrier().await;
    // An event is never dropped for age: its interaction moved far back.
    db.client
        .execute("update interaction set interaction_date = now() - interval '400 days' where interaction_id = $1", &[&old])
        .await
        .expect("age the interaction");
    db.barrier().await;
    assert_eq!(db.count("select count(*) from calendar_events").await, 4);
    // The stamps set off no CRM trigger (session_replication_role =
    // replica): every interaction's updated_at is still its event's.
    assert_eq!(
        db.count("select count(*) from interaction i join calendar_events e on e.related_id = i.interaction_id where i.updated_at <> e.updated_at").await,
        0
    );
    db.wait_count(
        "select count(*) from interaction where calendar_synced_at is null",
        0,
    )
    .await;
    run.stop().await.expect("clean stop");
    drop_slot_once_released(&db).await;

    // Drift by hand.
    db.client
        .execute(
            "delete from calendar_events where related_id = $1",
            &[&deleted],
        )
        .await
        .expect("delete an event");
    db.client
        .execute(
            "update calendar_events set title = 'typo', location = null where related_id = $1",
            &[&edited],
        )
        .await
        .expect("edit an event");
    let stray = Uuid::new_v4();
    db.client
        .execute(
            &format!(
                "insert into calendar_events (title, event_date, start_time, event_type, event_status,
                    related_table, related_id, synced_from, created_by)
                 values ('stray', now(), '10:00', 'meeting', 'scheduled', 'interaction', $1, 'interaction', '{USER}')"
            ),
            &[&stray],
        )
        .await
        .expect("a stray event");
    // While no slot existed: one in the window, one outside it, one archived.
    let unsynced = db
        .insert("Inserted without a slot", "now() + interval '5 days'", "")
        .await;
    db.insert("Too old to create", "now() - interval '90 days'", "")
        .await;
    db.insert("Archived", "now() + interval '1 day'", "archived=true")
        .await;

    let logs_before = db.count("select count(*) from calendar_sync_log").await;
    let (code, report, stderr) = reconcile(&db, &["--dry-run", "--json"]).await;
    assert_eq!(code, Some(1), "drift found in --dry-run exits 1: {stderr}");
    assert_report(&report, 2, 1, 1, &[("title", 1), ("location", 1)]);
    assert_eq!(report["repaired"], 0, "{report:#}");
    assert_eq!(
        db.count("select count(*) from calendar_sync_log").await,
        logs_before,
        "--dry-run writes nothing"
    );
    assert_eq!(db.count("select count(*) from calendar_events").await, 4);

    let (code, report, stderr) = reconcile(&db, &["--json"]).await;
    assert_eq!(code, Some(0), "repaired exits 0: {stderr}");
    assert_report(&report, 2, 1, 1, &[("title", 1), ("location", 1)]);
    assert_eq!(report["repaired"], 4, "{report:#}");
    assert_eq!(report["failed"], 0, "{report:#}");

    // Log rows with the real actions.
    let actions = |id: Uuid| {
        let c = &db.client;
        async move {
            c.query(
                "select action || '/' || status from calendar_sync_log where interaction_id = $1 order by created_at, source_lsn",
                &[&id],
            )
            .await
            .expect("log")
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        actions(deleted).await.last().map(String::as_str),
        Some("create/success")
    );
    assert_eq!(actions(unsynced).await, ["create/success"]);
    assert_eq!(
        actions(edited).await.last().map(String::as_str),
        Some("update/success")
    );
    assert_eq!(actions(stray).await, ["delete/success"]);
    assert_eq!(
        db.count("select count(*) from calendar_sync_log").await - logs_before,
        4,
        "one log row per repair, none for the intact or old events"
    );
    let e = db.event(edited).await.expect("edited event");
    assert_eq!(e.get::<_, String>("title"), "Event edited by hand");
    assert_eq!(
        e.get::<_, Option<String>>("location").as_deref(),
        Some("Room 1")
    );
    let e = db.event(intact).await.expect("intact event");
    assert_eq!(
        e.get::<_, Vec<String>>("participants"),
        ["Acme Corp", "Ada Lovelace"]
    );
    assert!(db.event(old).await.is_some(), "never dropped for age");
    assert!(db.event(stray).await.is_none());
    // The stamps set off no trigger: the repaired event shows the
    // interaction's last user change, as the stream writes it.
    assert_eq!(
        db.count(&format!("select count(*) from interaction i join calendar_events e on e.related_id = i.interaction_id where i.interaction_id = '{edited}' and e.updated_at = i.updated_at")).await,
        1
    );
    // The repaired interactions are stamped.
    assert_eq!(
        db.count(&format!("select count(*) from interaction where interaction_id = '{unsynced}' and calendar_synced_at is not null")).await,
        1
    );

    let (code, report, stderr) = reconcile(&db, &["--dry-run", "--json"]).await;
    assert_eq!(code, Some(0), "no drift left: {stderr}");
    assert_report(&report, 0, 0, 0, &[]);

    // Text output names the fields too.
    let out = reconcile_cmd(&db, &["--dry-run"]).output().expect("text");
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("missing 0"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_while_run_streams_a_workload_ends_with_the_calendar_the_stream_alone_gives() {
    let db = TestDb::crm().await;
    db.migrate().await;
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    let mut ids = Vec::new();
    for n in 0..43 {
        ids.push(
            db.insert(&format!("w{n}"), "now() + interval '1 day'", "")
                .await,
        );
    }
    db.barrier().await;
    // Some drift for reconcile to repair while the stream works.
    db.client
        .batch_execute(&format!(
            "update calendar_events set title = 'drift' where related_id in ('{}', '{}');
             delete from calendar_events where related_id = '{}';",
            ids[0], ids[1], ids[2]
        ))
        .await
        .expect("drift");

    let workload = {
        let client = connect(&db.url).await;
        // Not the drifted three: a change of one would heal it (the stream
        // writes the whole event), and reconcile's repair, at an older
        // position, would rightly lose to it.
        let ids = ids[3..].to_vec();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut n = 0u64;
            while started.elapsed() < Duration::from_secs(6) {
                n += 1;
                let id = ids[(n * 7 % ids.len() as u64) as usize];
                let sql = match n % 5 {
                    0 => format!("update interaction set archived = not archived where interaction_id = '{id}'"),
                    1 => format!("update interaction set location = 'L{n}' where interaction_id = '{id}'"),
                    2 => format!("insert into interaction (interaction_type, subject, interaction_date, created_by) values ('call', 'new {n}', now() + interval '2 days', '{USER}')"),
                    3 => format!("update interaction set subject = 's{n}', duration_minutes = {} where interaction_id = '{id}'", n % 90),
                    _ => "delete from interaction where interaction_id in (select interaction_id from interaction where subject like 'new %' order by random() limit 1)".to_string(),
                };
                client.batch_execute(&sql).await.expect("workload");
            }
            n
        })
    };
    let mut rounds = 0;
    let mut repaired = 0;
    while !workload.is_finished() {
        let (code, report, stderr) = reconcile(&db, &["--json"]).await;
        repaired += report["repaired"].as_u64().unwrap_or(0);
        assert!(
            matches!(code, Some(0) | Some(1)),
            "reconcile failed: {stderr}"
        );
        rounds += 1;
    }
    let changes = workload.await.expect("workload");
    assert!(
        rounds >= 1 && repaired >= 3 && changes > 50,
        "rounds {rounds}, repaired {repaired}, changes {changes}"
    );
    db.barrier().await;

    // The calendar equals what the contract gives for the current
    // interactions: a dry run finds nothing (missing, extra, any field).
    let (code, report, stderr) = reconcile(&db, &["--dry-run", "--json"]).await;
    assert_eq!(code, Some(0), "{report:#} {stderr}");
    assert_report(&report, 0, 0, 0, &[]);
    let failures: Vec<String> = db
        .client
        .query(
            "select action || ': ' || error_message from calendar_sync_failures",
            &[],
        )
        .await
        .expect("failures")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(failures.is_empty(), "no write failed: {failures:?}");
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_resync_after_a_dropped_slot_recreates_it_and_removes_events_of_interactions_deleted_meanwhile(
) {
    let db = TestDb::crm().await;
    db.migrate().await;
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    let kept = db.insert("Kept", "now() + interval '1 day'", "").await;
    let gone = db
        .insert("Deleted while no slot", "now() + interval '1 day'", "")
        .await;
    db.barrier().await;
    run.stop().await.expect("clean stop");
    drop_slot_once_released(&db).await;
    db.client
        .execute(
            "delete from interaction where interaction_id = $1",
            &[&gone],
        )
        .await
        .expect("delete");
    let added = db
        .insert("Inserted while no slot", "now() + interval '1 day'", "")
        .await;

    // Without --resync: fatal, and the hint names the way out.
    let mut plain = Running::start(db.config());
    let (_, hint) = fatal_of(&mut plain, FatalKind::SlotGone, Duration::from_secs(20)).await;
    assert!(hint.contains("run --resync"), "{hint}");

    let child = binary_for(&db)
        .args(["run", "--resync"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn run --resync");
    let streaming = wait_until(Duration::from_secs(30), || async {
        db.count(&format!(
            "select count(*) from calendar_events where related_id = '{added}'"
        ))
        .await
            == 1
            && db
                .count(&format!(
                    "select count(*) from calendar_events where related_id = '{gone}'"
                ))
                .await
                == 0
    })
    .await;
    let after = db
        .insert("After the resync", "now() + interval '1 day'", "")
        .await;
    let caught = wait_until(Duration::from_secs(30), || async {
        db.count(&format!(
            "select count(*) from calendar_events where related_id = '{after}'"
        ))
        .await
            == 1
    })
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let (code, stderr) = exit_of(child, Duration::from_secs(20)).await;
    assert!(
        streaming && caught,
        "resync did not converge; stderr:\n{stderr}"
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        db.count(&format!(
            "select count(*) from calendar_sync_log where interaction_id = '{gone}' and action = 'delete' and status = 'success'"
        ))
        .await,
        1,
        "the removal has its log row"
    );
    assert!(db.event(kept).await.is_some());
    assert_eq!(
        db.count(&format!(
            "select count(*) from calendar_sync_log where interaction_id = '{kept}' and action = 'create'"
        ))
        .await,
        1,
        "the new snapshot does not create the kept event again"
    );
    assert_eq!(
        db.count(&format!(
            "select count(*) from pg_replication_slots where slot_name = '{}'",
            db.name
        ))
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_with_a_separate_target_finds_and_repairs_missing_drifted_and_extra_events() {
    let source = TestDb::crm().await;
    let target = TestDb::empty().await;
    let mut cfg = source.config();
    cfg.target_url = Some(calendar_sync::config::SecretUrl::new(target.url.clone()));
    calendar_sync::migrate::migrate(&cfg)
        .await
        .expect("migrate");
    let run = Running::start(cfg.clone());
    let a = source.insert("A", "now() + interval '1 day'", "").await;
    let b = source.insert("B", "now() + interval '1 day'", "").await;
    let c = source.insert("C", "now() + interval '1 day'", "").await;
    source.barrier_in(&target.client).await;
    // Stamped in the source after the target commit.
    source
        .wait_count(
            "select count(*) from interaction where calendar_synced_at is not null",
            3,
        )
        .await;
    run.stop().await.expect("clean stop");
    target
        .client
        .batch_execute(&format!(
            "delete from calendar_events where related_id = '{a}';
             update calendar_events set event_type = 'phone' where related_id = '{b}';"
        ))
        .await
        .expect("drift");
    source
        .client
        .execute("delete from interaction where interaction_id = $1", &[&c])
        .await
        .expect("delete while stopped");

    let report = calendar_sync::reconcile::reconcile(&cfg, true)
        .await
        .expect("dry run");
    let v = serde_json::to_value(&report).expect("json");
    assert_report(&v, 1, 1, 1, &[("event_type", 1)]);
    assert_eq!(report.exit_code(), 1);

    let report = calendar_sync::reconcile::reconcile(&cfg, false)
        .await
        .expect("repair");
    assert_eq!(
        (report.repaired, report.failed, report.exit_code()),
        (3, 0, 0),
        "{report}"
    );
    assert!(target.event(a).await.is_some());
    assert!(target.event(c).await.is_none());
    let again = calendar_sync::reconcile::reconcile(&cfg, true)
        .await
        .expect("dry run");
    assert_eq!((again.drift(), again.exit_code()), (0, 0), "{again}");
}

/// Drops the test's slot once its walsender has let go of it (the server ends
/// the walsender a moment after the consumer closed the connection).
async fn drop_slot_once_released(db: &TestDb) {
    assert!(
        wait_until(std::time::Duration::from_secs(20), || async {
            db.count(&format!(
                "select count(*) from pg_replication_slots where slot_name = '{}' and not active",
                db.name
            ))
            .await
                == 1
        })
        .await,
        "the slot stayed active after the consumer stopped"
    );
    db.client
        .execute("select pg_drop_replication_slot($1)", &[&db.name])
        .await
        .expect("drop slot");
}
