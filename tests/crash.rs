//! Exactly-once under kill -9: the real binary is killed at random instants
//! (during its initial snapshot, mid-transaction, between the target commit and
//! the status update) while a random workload runs, and restarted each time.
//! Its target must end identical to that of an uninterrupted consumer of the
//! same source (another slot, another target database): the same events and
//! the same `success` log rows, LSN for LSN.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

fn spawn_killed_consumer(source: &TestDb, target: &TestDb, slot: &str) -> Child {
    binary()
        .args(["run"])
        .env("DATABASE_URL", &source.url)
        .env("TARGET_DATABASE_URL", &target.url)
        .env("CALENDAR_SYNC_SLOT", slot)
        .env("CALENDAR_SYNC_PUBLICATION", &source.name)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(log_file(slot))
        .spawn()
        .expect("spawn calendar-sync run")
}

/// The killed consumer's stderr, appended across restarts, for diagnosis.
fn log_file(slot: &str) -> Stdio {
    let path = std::env::temp_dir().join(format!("calendar-sync-crash-{slot}.log"));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

/// One random source transaction of 1-4 statements.
pub(crate) fn random_transaction(rng: &mut Rng, n: u64) -> String {
    let mut sql = String::from("begin;");
    for _ in 0..=rng.below(4) {
        let pick = format!("(select interaction_id from interaction order by md5(interaction_id::text || '{}') limit 1)", rng.next());
        let stmt = match rng.below(9) {
            0..=2 => format!(
                "insert into interaction (interaction_type, subject, interaction_date, duration_minutes, customer_id, created_by)
                 values ('visit', 'w{n}-{}', now() + interval '{} minutes', {}, '{CUSTOMER}', '{USER}');",
                rng.next() % 1000,
                rng.below(20_000),
                rng.below(120)
            ),
            3 => format!("update interaction set subject = subject || '+', location = 'L{}' where interaction_id = {pick};", rng.below(50)),
            // Only rows with a short description: creating an event from an
            // un-archive whose description is TOASTed reads the live source
            // (docs/decisions.md 8), which a lagging consumer sees later.
            4 => format!(
                "update interaction set archived = not coalesce(archived, false)
                  where interaction_id = {pick} and coalesce(length(description), 0) < 1000;"
            ),
            5 => format!("delete from interaction where interaction_id = {pick};"),
            6 => format!(
                "update interaction set description = (select string_agg(md5(g::text || '{}'), '') from generate_series(1, 400) g) where interaction_id = {pick};",
                rng.next()
            ),
            7 => format!("update interaction set duration_minutes = {} where interaction_id = {pick};", rng.below(90)),
            _ => format!("update customer set name = 'Acme {}' where customer_id = '{CUSTOMER}';", rng.below(5)),
        };
        sql.push_str(&stmt);
    }
    sql.push_str("commit;");
    sql
}

async fn rows(c: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    c.query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

const EVENTS: &str = "select row(related_id, title, description, event_date, start_time, end_time, all_day, event_type,
        event_status, location, participants, created_by, updated_by, created_at, updated_at)::text
   from calendar_events order by related_id";

/// Success log rows; rows written by a snapshot are compared without their
/// LSN (each slot has its own consistent point).
const LOG: &str = "select interaction_id::text || ' ' || action || ' ' ||
        case when source_lsn = (select snapshot_lsn from calendar_sync_progress) then 'snapshot' else source_lsn::text end
   from calendar_sync_log where status = 'success' order by 1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_instants_ends_with_the_same_calendar_as_an_uninterrupted_run() {
    let seed = seed("CRASH_SEED");
    let mut rng = Rng(seed);
    let source = TestDb::crm().await;
    let (target_a, target_b) = (TestDb::empty().await, TestDb::empty().await);
    source
        .client
        .batch_execute(&format!(
            "insert into interaction (interaction_type, subject, interaction_date, created_by, customer_id, contact_id)
             select 'visit', 'pre ' || g, now() + g * interval '1 minute', '{USER}', '{CUSTOMER}', '{CONTACT}'
               from generate_series(1, 2000) g"
        ))
        .await
        .expect("existing rows");
    let slot_a = format!("{}_a", source.name);
    let slot_b = format!("{}_b", source.name);
    // The CRM's real shape: stamps on (the default), an updated_at trigger
    // (clock_timestamp(), crm_schema.sql). Both consumers stamp the same
    // rows; neither stamp may reach the other's calendar, or this one's.
    let mut cfg_b = source.config();
    cfg_b.slot = slot_b.clone();
    cfg_b.target_url = Some(calendar_sync::config::SecretUrl::new(target_b.url.clone()));
    let mut cfg_a = cfg_b.clone();
    cfg_a.slot = slot_a.clone();
    cfg_a.target_url = Some(calendar_sync::config::SecretUrl::new(target_a.url.clone()));
    calendar_sync::migrate::migrate(&cfg_a)
        .await
        .expect("migrate a");
    calendar_sync::migrate::migrate(&cfg_b)
        .await
        .expect("migrate b");

    // The reference: never interrupted.
    let reference = Running::start(cfg_b);
    target_b
        .wait_count("select count(*) from calendar_sync_progress", 1)
        .await;

    // Phase 1: kills during the initial snapshot (no writes yet, so every
    // snapshot sees the same rows).
    let mut kills = 0;
    for _ in 0..3 {
        let mut a = spawn_killed_consumer(&source, &target_a, &slot_a);
        tokio::time::sleep(Duration::from_millis(100 + rng.below(400))).await;
        kill9(&mut a);
        kills += 1;
    }
    let mut a = spawn_killed_consumer(&source, &target_a, &slot_a);
    target_a
        .wait_count("select count(*) from calendar_sync_progress", 1)
        .await;

    // Phase 2: a random workload; kill -9 every 0.2-1.2 s.
    let url = source.url.clone();
    let workload_seed = rng.next();
    let workload = tokio::spawn(async move {
        let mut rng = Rng(workload_seed | 1);
        let c = connect(&url).await;
        for n in 0..400 {
            c.batch_execute(&random_transaction(&mut rng, n))
                .await
                .expect("workload transaction");
        }
    });
    let started = Instant::now();
    while !workload.is_finished() && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(200 + rng.below(1000))).await;
        kill9(&mut a);
        kills += 1;
        a = spawn_killed_consumer(&source, &target_a, &slot_a);
    }
    workload.await.expect("workload");
    assert!(
        kills >= 5,
        "only {kills} kills: the workload was too short to test anything"
    );

    // The killed consumer catches up on what its kills left (renames refresh
    // 2,000 events each); under a loaded CI machine that takes a while.
    let catch_up = Duration::from_secs(180);
    source
        .barrier_within(&target_a.client, &slot_a, catch_up)
        .await;
    source
        .barrier_within(&target_b.client, &slot_b, catch_up)
        .await;
    kill9(&mut a);
    let reference_metrics = reference.metrics.clone();
    reference.stop().await.expect("reference stops cleanly");

    let (events_a, events_b) = (
        rows(&target_a.client, EVENTS).await,
        rows(&target_b.client, EVENTS).await,
    );
    assert!(
        events_b.len() > 1000,
        "reference has {} events",
        events_b.len()
    );
    assert_eq!(
        events_a.len(),
        events_b.len(),
        "event count (seed {seed}, {kills} kills)"
    );
    for (a, b) in events_a.iter().zip(&events_b) {
        assert_eq!(a, b, "event differs (seed {seed})");
    }
    let (log_a, log_b) = (
        rows(&target_a.client, LOG).await,
        rows(&target_b.client, LOG).await,
    );
    if log_a != log_b {
        let first = log_a.iter().zip(&log_b).position(|(a, b)| a != b);
        let show = |v: &Vec<String>, i: Option<usize>| i.and_then(|i| v.get(i).cloned());
        panic!(
            "success log rows differ (seed {seed}, {kills} kills): {} vs {} rows; first difference at {first:?}: {:?} vs {:?}",
            log_a.len(),
            log_b.len(),
            show(&log_a, first),
            show(&log_b, first)
        );
    }
    assert_eq!(
        target_a
            .count("select count(*) from calendar_sync_failures")
            .await,
        0
    );
    // Stamped, and no stamp came back: no marker rejected by either, and
    // every event shows the updated_at its interaction has (no stamp set the
    // CRM's trigger off, none was applied as a change).
    assert!(
        source
            .count("select count(*) from interaction where calendar_synced_at is not null")
            .await
            > 1000,
        "the consumers stamped"
    );
    assert_eq!(reference_metrics.echo_rejected_count(), 0);
    let log = std::fs::read_to_string(
        std::env::temp_dir().join(format!("calendar-sync-crash-{slot_a}.log")),
    )
    .unwrap_or_default();
    assert!(
        !log.contains("is not calendar-sync's"),
        "the killed consumer took a stamp for a CRM change"
    );
    let source_updated: std::collections::HashMap<String, String> = source
        .client
        .query(
            "select interaction_id::text, updated_at::text from interaction",
            &[],
        )
        .await
        .expect("interactions")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for r in target_a
        .client
        .query(
            "select related_id::text, updated_at::text from calendar_events",
            &[],
        )
        .await
        .expect("events")
    {
        let (id, updated): (String, String) = (r.get(0), r.get(1));
        if let Some(s) = source_updated.get(&id) {
            assert_eq!(&updated, s, "event {id}: updated_at (seed {seed})");
        }
    }
    eprintln!(
        "crash test: {kills} kills survived, {} events and {} log rows identical",
        events_a.len(),
        log_a.len()
    );
}

/// The flush position never names a transaction whose target commit has not
/// happened: the consumer is held inside its target transaction (a lock on the
/// progress table), killed after several status intervals, and restarted; the
/// held transaction must still arrive. Reporting the LSN before the commit
/// would move the slot past it and lose it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_while_the_target_commit_is_held_loses_nothing() {
    let db = TestDb::crm().await;
    db.migrate().await;
    let spawn = || spawn_run(&db, &[], Stdio::null());
    let mut a = spawn();
    wait_streaming(&db).await;
    let locker = connect(&db.url).await;
    locker
        .batch_execute("begin; lock table calendar_sync_progress in access exclusive mode")
        .await
        .expect("lock");
    let id = db.insert("Held", "now()", "").await;
    let held = wait_until(Duration::from_secs(20), || async {
        db.count(&format!(
            "select count(*) from pg_stat_activity where datname = '{}' and application_name = 'calendar-sync' and wait_event_type = 'Lock'",
            db.name
        ))
        .await
            == 1
    })
    .await;
    assert!(held, "the consumer never waited on the progress lock");
    // Several status updates reach the server while the commit is held (each
    // moves the walsender's reply_time): had one named the held transaction,
    // the slot would have moved past it.
    let mut replies = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while replies.len() < 3 && Instant::now() < deadline {
        let at: Option<String> = db
            .client
            .query_one(
                "select (select reply_time::text from pg_stat_replication r
                           join pg_replication_slots s on s.active_pid = r.pid
                          where s.slot_name = $1)",
                &[&db.name],
            )
            .await
            .expect("reply_time")
            .get(0);
        replies.extend(at);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let updated = replies.len() >= 3;
    assert!(updated, "the consumer sent no status updates while held");
    kill9(&mut a);
    locker.batch_execute("rollback").await.expect("unlock");
    let mut a = spawn();
    db.wait_count(
        &format!("select count(*) from calendar_events where related_id = '{id}'"),
        1,
    )
    .await;
    db.barrier().await;
    assert_eq!(db.count("select count(*) from calendar_sync_log").await, 1);
    kill9(&mut a);
}
