//! Beside a live CRM (issue 13, contract §8): calendar-sync and the CRM see
//! each other's work at moments the code does not choose. A commit that is
//! streamed but not yet visible ([`HeldCommit`]: a synchronous standby that
//! never answers) must not make any read of the source decide on an older
//! state; our stamps must never come back as CRM changes, never count as
//! drift, and never make a CRM session wait. On a cluster of their own
//! ([`held_cluster`]).

use std::collections::HashMap;
use std::time::Duration;

use calendar_sync::config::Stamping;
use calendar_sync::mapping::Action;
use calendar_sync::mapping::Outcome;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::support::*;

/// The marker statement with its prefix written in (batch_execute has no
/// parameters).
fn marker_sql() -> String {
    calendar_sync::echo::MARKER.replace("$1::text", "'calendar_sync.echo'::text")
}

fn log_rows(id: Uuid) -> String {
    format!("select count(*) from calendar_sync_log where interaction_id = '{id}'")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marker_proves_itself_while_its_transaction_is_not_visible_and_a_forged_one_does_not() {
    let db = TestDb::crm_in(held_cluster()).await;
    db.migrate().await;
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    let id = db.insert("Before", "now()", "").await;
    db.wait_count(&log_rows(id), 1).await;

    // Ours (marker first, its MAC under the key), committed but invisible
    // while the stream delivers it: nothing of it is applied.
    let ours = HeldCommit::start(
        &db,
        &format!(
            "{}; update interaction set subject = 'Ours' where interaction_id = '{id}'",
            marker_sql()
        ),
    )
    .await;
    db.barrier().await;
    assert_eq!(
        db.event(id).await.expect("event").get::<_, String>("title"),
        "Before"
    );
    assert_eq!(db.count(&log_rows(id)).await, 1, "only the create");
    assert_eq!(run.metrics.echo_rejected_count(), 0);

    // Forged: the marker's prefix with content that proves nothing (another
    // interaction: the first one's row lock lasts until its release).
    let other = db.insert("Other", "now()", "").await;
    db.wait_count(&log_rows(other), 1).await;
    let forged = HeldCommit::start(
        &db,
        &format!(
            "select pg_logical_emit_message(true, 'calendar_sync.echo', sha256('guess'::bytea));
             update interaction set subject = 'Forged' where interaction_id = '{other}'"
        ),
    )
    .await;
    db.barrier().await;
    assert_eq!(
        db.event(other)
            .await
            .expect("event")
            .get::<_, String>("title"),
        "Forged"
    );
    assert_eq!(run.metrics.echo_rejected_count(), 1);
    ours.release().await;
    forged.release().await;
    run.stop().await.expect("clean stop");
}

/// An interaction created and un-archived in one transaction: the un-archive
/// creates the event and carries the TOASTed description as unchanged, so it
/// is read from the source, where the row is not visible until the commit is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_toast_description_is_read_only_once_the_streamed_row_is_visible() {
    let db = TestDb::crm_in(held_cluster()).await;
    db.migrate().await;
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    let id = Uuid::new_v4();
    // Incompressible enough to be stored out of line.
    let big: String = (0..400)
        .map(|_| Uuid::new_v4().simple().to_string())
        .collect();
    let held = HeldCommit::start(
        &db,
        &format!(
            "insert into interaction (interaction_id, interaction_type, subject, interaction_date, created_by, archived, description)
             values ('{id}', 'meeting', 'Toast', now(), '{USER}', true, '{big}');
             update interaction set archived = false where interaction_id = '{id}'"
        ),
    )
    .await;
    wait_sent(&db, &db.name, &held.after().await).await;
    // Delivered: before the fix the event was created at once, from a row it
    // could not see, with a NULL description.
    let early = wait_until(Duration::from_secs(2), || async {
        db.event(id).await.is_some()
    })
    .await;
    if early {
        let d: Option<String> = db.event(id).await.expect("event").get("description");
        panic!(
            "an event was built before the row was visible, with a description of {:?} bytes",
            d.map(|d| d.len())
        );
    }
    held.release().await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            db.event(id).await.is_some()
        })
        .await,
        "the event is created once the row is visible"
    );
    let description: Option<String> = db.event(id).await.expect("event").get("description");
    assert_eq!(description.as_deref(), Some(big.as_str()));
    run.stop().await.expect("clean stop");
}

/// reconcile while the stream has applied an insert (and a delete) whose
/// commit is not visible yet: neither is drift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_never_takes_a_streamed_but_invisible_change_for_drift() {
    let db = TestDb::crm_in(held_cluster()).await;
    db.migrate().await;
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    let doomed = db.insert("Doomed", "now()", "").await;
    db.wait_count(&log_rows(doomed), 1).await;
    let fresh = Uuid::new_v4();
    let held = HeldCommit::start(
        &db,
        &format!(
            "insert into interaction (interaction_id, interaction_type, subject, interaction_date, created_by)
             values ('{fresh}', 'meeting', 'Invisible', now(), '{USER}');
             delete from interaction where interaction_id = '{doomed}'"
        ),
    )
    .await;
    // The stream applies both although nobody else can see them yet.
    assert!(
        wait_until(Duration::from_secs(30), || async {
            db.event(fresh).await.is_some() && db.event(doomed).await.is_none()
        })
        .await
    );
    for dry_run in [true, false] {
        let cfg = db.config();
        let reconcile =
            tokio::spawn(async move { calendar_sync::reconcile::reconcile(&cfg, dry_run).await });
        // Before the fix it finished here, the new event an orphan (deleted
        // by the repair) and the deleted one missing (created again). The
        // stream keeps applying (barriers): only what it cannot see yet may
        // hold its confirmed position, and with it reconcile, back.
        let finished = wait_until(Duration::from_secs(3), || async {
            db.barrier().await;
            reconcile.is_finished()
        })
        .await;
        assert!(
            !finished,
            "reconcile decided before the streamed changes were visible"
        );
        reconcile.abort();
    }
    held.release().await;
    for dry_run in [true, false] {
        let report = calendar_sync::reconcile::reconcile(&db.config(), dry_run)
            .await
            .expect("reconcile");
        assert_eq!(
            (report.missing, report.extra, report.drifted),
            (0, 0, 0),
            "{report}"
        );
    }
    assert!(db.event(fresh).await.is_some(), "the new event stays");
    assert!(
        db.event(doomed).await.is_none(),
        "the deleted one stays deleted"
    );
    run.stop().await.expect("clean stop");
}

/// A retry while a later edit of the row is committed but not visible: the
/// retry waits for it, and the edit is not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_never_writes_a_state_older_than_a_committed_edit() {
    let db = TestDb::crm_in(held_cluster()).await;
    db.migrate().await;
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    let id = db.insert("v0", "now()", "").await;
    db.wait_count(&log_rows(id), 1).await;
    db.client
        .execute(
            "update interaction set duration_minutes = -1 where interaction_id = $1",
            &[&id],
        )
        .await
        .expect("bad row");
    db.wait_count(
        "select count(*) from calendar_sync_failures where not resolved",
        1,
    )
    .await;
    run.stop().await.expect("clean stop");

    // While the consumer is down: v1 fixes the row; v2 renames it and is
    // committed, but not visible, while the retry runs.
    db.client
        .execute(
            "update interaction set duration_minutes = 30, subject = 'v1' where interaction_id = $1",
            &[&id],
        )
        .await
        .expect("v1");
    let held = HeldCommit::start(
        &db,
        &format!("update interaction set subject = 'v2' where interaction_id = '{id}'"),
    )
    .await;
    db.client
        .batch_execute(
            "update calendar_sync_failures set next_retry_at = now() - interval '1 second'",
        )
        .await
        .expect("make the failure due");
    let cfg = db.config();
    let retry = tokio::spawn(async move { calendar_sync::apply::retry_due_once(&cfg).await });
    // Before the fix it read v1 here and wrote it at a position above v2's
    // commit, so the stream later refused v2 as older: v2 was lost.
    let early = wait_until(Duration::from_secs(2), || async { retry.is_finished() }).await;
    assert!(
        !early,
        "the retry read the row before a committed edit was visible"
    );
    held.release().await;
    assert_eq!(retry.await.expect("join").expect("retry"), 1);
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    db.barrier().await;
    assert_eq!(
        db.event(id).await.expect("event").get::<_, String>("title"),
        "v2"
    );
    assert_eq!(
        db.count("select count(*) from calendar_sync_failures where not resolved")
            .await,
        0
    );
    run.stop().await.expect("clean stop");
}

/// Many small stamped CRM transactions with a `clock_timestamp()` trigger:
/// every event shows the `updated_at` the CRM wrote, one log row per CRM
/// action, no marker rejected; `reconcile --dry-run` finds nothing, before
/// and after a repair. `firing`: the trigger is enabled ALWAYS and the stamp
/// forced on, so it fires on every stamp too (the stamp bumps `updated_at`
/// in the CRM row, and every stamp that came back as a CRM change would copy
/// it); else the defaults (the trigger does not fire on a stamp).
async fn stamped_workload(firing: bool) {
    let mut rng = Rng(seed("LIVE_CRM_SEED"));
    let db = TestDb::crm_in(held_cluster()).await;
    db.migrate().await;
    let mut cfg = db.config();
    if firing {
        db.client
            .batch_execute(
                "alter table interaction enable always trigger interaction_set_updated_at",
            )
            .await
            .expect("always trigger");
        cfg.write_synced_at = Stamping::On;
    }
    let run = Running::start(cfg);
    wait_streaming(&db).await;
    let mut ids: Vec<Uuid> = Vec::new();
    let mut wrote: HashMap<Uuid, DateTime<Utc>> = HashMap::new();
    let (mut creates, mut updates) = (0i64, 0i64);
    for n in 0..1500u32 {
        let row = if ids.len() < 150 && (ids.is_empty() || rng.below(3) == 0) {
            creates += 1;
            db.client
                .query_one(
                    &format!(
                        "insert into interaction (interaction_type, subject, interaction_date, created_by)
                         values ('call', 'c{n}', now() + interval '1 day', '{USER}')
                         returning interaction_id, updated_at"
                    ),
                    &[],
                )
                .await
                .expect("insert")
        } else {
            updates += 1;
            let id = ids[rng.below(ids.len() as u64) as usize];
            db.client
                .query_one(
                    "update interaction set subject = $2 where interaction_id = $1
                     returning interaction_id, updated_at",
                    &[&id, &format!("u{n}")],
                )
                .await
                .expect("update")
        };
        let id: Uuid = row.get(0);
        if !wrote.contains_key(&id) {
            ids.push(id);
        }
        wrote.insert(id, row.get(1));
    }
    // Every row stamped after the CRM's last write, then every stamp streamed.
    let stamped = wait_until(Duration::from_secs(60), || async {
        let behind = db
            .client
            .query(
                "select interaction_id, calendar_synced_at from interaction",
                &[],
            )
            .await
            .expect("stamps")
            .iter()
            .filter(|r| {
                let at: Option<DateTime<Utc>> = r.get(1);
                at.is_none_or(|at| at < wrote[&r.get::<_, Uuid>(0)])
            })
            .count();
        behind == 0
    })
    .await;
    assert!(stamped, "every row is stamped after its last CRM write");
    db.barrier().await;

    let mut bumped = 0;
    for r in db
        .client
        .query(
            "select i.interaction_id, i.updated_at, e.updated_at
               from interaction i join calendar_events e on e.related_id = i.interaction_id",
            &[],
        )
        .await
        .expect("events")
    {
        let id: Uuid = r.get(0);
        let source: DateTime<Utc> = r.get(1);
        let event: DateTime<Utc> = r.get(2);
        assert_eq!(
            event, wrote[&id],
            "event {id} shows the updated_at the CRM wrote"
        );
        if source != wrote[&id] {
            bumped += 1;
        }
    }
    if firing {
        assert!(
            bumped > 0,
            "the trigger fired on the stamps (else this test proves nothing)"
        );
    } else {
        assert_eq!(bumped, 0, "no trigger fired on a stamp");
    }
    assert_eq!(
        db.count("select count(*) from calendar_events").await,
        ids.len() as i64
    );
    assert_eq!(
        db.count("select count(*) from calendar_sync_log where action = 'create'")
            .await,
        creates
    );
    assert_eq!(
        db.count("select count(*) from calendar_sync_log where action = 'update'")
            .await,
        updates,
        "one update per CRM update, none for a stamp"
    );
    assert_eq!(run.metrics.echo_rejected_count(), 0);
    assert_eq!(
        run.metrics.action_count(Action::Update, Outcome::Success),
        updates as u64
    );

    // Nobody touched the calendar: no drift, before and after a repair.
    for dry_run in [true, false, true] {
        let report = calendar_sync::reconcile::reconcile(&db.config(), dry_run)
            .await
            .expect("reconcile");
        assert_eq!(report.exit_code(), 0, "dry_run={dry_run}: {report}");
        assert_eq!(report.drifted, 0, "{report}");
    }
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stamps_with_the_defaults_set_off_no_trigger_and_never_come_back() {
    stamped_workload(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stamps_that_fire_a_clock_timestamp_trigger_never_come_back_as_crm_changes() {
    stamped_workload(true).await;
}

/// A CRM session with `lock_timeout = 1s` edits interactions while a large
/// initial snapshot and then a large source transaction are applied and
/// stamped: it never waits that long for a lock of ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crm_edits_never_time_out_on_our_locks_during_a_large_snapshot_or_transaction() {
    const ROWS: i64 = 40_000;
    let db = TestDb::crm_in(held_cluster()).await;
    let insert = |from: i64| {
        format!(
            "insert into interaction (interaction_type, subject, interaction_date, created_by)
             select 'visit', 'r' || g, now() + g * interval '1 second', '{USER}'
               from generate_series({from}, {}) g",
            from + ROWS - 1
        )
    };
    db.client.batch_execute(&insert(1)).await.expect("rows");
    db.migrate().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let editor = {
        let url = db.url.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let c = connect(&url).await;
            c.batch_execute("set lock_timeout = '1s'")
                .await
                .expect("lock_timeout");
            let (mut edits, mut timeouts) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // A random interaction (the newest rows too), edited alone.
                match c
                    .execute(
                        "update interaction set location = 'room ' || (random() * 100)::int
                          where interaction_id = (select interaction_id from interaction
                                                   tablesample system (1) limit 1)",
                        &[],
                    )
                    .await
                {
                    Ok(_) => edits += 1,
                    Err(e) => timeouts.push(e.as_db_error().map_or_else(
                        || e.to_string(),
                        |d| format!("{}: {}", d.code().code(), d.message()),
                    )),
                }
            }
            (edits, timeouts)
        })
    };
    let run = Running::start(db.config());
    let all_stamped = |n: i64| {
        let db = &db;
        async move {
            wait_until(Duration::from_secs(180), || async {
                db.count("select count(*) from interaction where calendar_synced_at is not null")
                    .await
                    >= n
            })
            .await
        }
    };
    assert!(all_stamped(ROWS).await, "the snapshot's rows are stamped");
    db.client
        .batch_execute(&insert(ROWS + 1))
        .await
        .expect("one large transaction");
    assert!(
        all_stamped(2 * ROWS).await,
        "the large transaction's rows are stamped"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (edits, errors) = editor.await.expect("editor");
    assert!(edits > 10, "the editor ran ({edits} edits)");
    assert!(
        errors.is_empty(),
        "CRM edits failed while we synced: {errors:?}"
    );
    run.stop().await.expect("clean stop");
}

/// With synchronous replication configured, the walsender sends a keepalive
/// for every transaction that touches no published table (PostgreSQL 15+):
/// beside a CRM busy with other tables, keepalives come far more often than
/// every 2 ms. They are not data: a lone interaction change is committed
/// once the stream has sent no *data* for 2 ms (decision 58), within its
/// batch's age bound, not at the next 2 s tick. (The first version of the
/// quiet rule counted keepalives: changes waited 0.3-1.1 s.) A liveness
/// bound, not a speed goal: 1 s is ten times the age bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_from_a_crm_busy_elsewhere_do_not_hold_a_lone_change_back() {
    use calendar_sync::config::SecretUrl;
    let source = TestDb::crm_in(held_cluster()).await;
    let target = TestDb::empty_in(held_cluster()).await;
    source
        .client
        .batch_execute("create table crm_elsewhere (id bigserial primary key, v int)")
        .await
        .expect("an unpublished table");
    let mut cfg = source.config();
    cfg.target_url = Some(SecretUrl::new(target.url.clone()));
    // A stamp would wait for `ghost` (below); stamps are not what this test
    // is about.
    cfg.write_synced_at = Stamping::Off;
    calendar_sync::migrate::migrate(&cfg)
        .await
        .expect("migrate");
    let slot = cfg.slot.clone();
    let run = Running::start(cfg);
    wait_streaming_into(&source, &target, &slot).await;
    // Then the walsender of this database waits for synchronous replication
    // (the cluster's standby `ghost`), so it sends a keepalive per skipped
    // transaction: a new walsender takes the database's setting (the
    // consumer reconnects by itself; its start wrote to the source before).
    // Sessions opened before (the test's own) keep `synchronous_commit = off`.
    source
        .client
        .batch_execute(&format!(
            "alter database {} set synchronous_commit = on",
            source.name
        ))
        .await
        .expect("synchronous walsender");
    let old: i32 = source
        .client
        .query_one(
            "select pg_terminate_backend(active_pid)::int * active_pid from pg_replication_slots where slot_name = $1",
            &[&slot],
        )
        .await
        .expect("the walsender ends")
        .get(0);
    source
        .wait_count(
            &format!("select count(*) from pg_replication_slots where slot_name = '{slot}' and active and active_pid <> {old}"),
            1,
        )
        .await;
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (url, busy) = (source.url.clone(), busy.clone());
        tokio::spawn(async move {
            let c = connect(&url).await;
            c.batch_execute("set synchronous_commit = local")
                .await
                .expect("local commits");
            let mut n: u64 = 0;
            while busy.load(std::sync::atomic::Ordering::Relaxed) {
                c.batch_execute("insert into crm_elsewhere (v) values (1)")
                    .await
                    .expect("a CRM write elsewhere");
                n += 1;
            }
            n
        })
    };
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let started = std::time::Instant::now();
        let id = source.insert(&format!("Lone {i}"), "now()", "").await;
        target.wait_count(&log_rows(id), 1).await;
        slowest = slowest.max(started.elapsed());
    }
    busy.store(false, std::sync::atomic::Ordering::Relaxed);
    let written = writer.await.expect("writer");
    assert!(
        written > 1_000,
        "the CRM elsewhere wrote only {written} transactions"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "a lone change took {slowest:?} to reach the calendar beside {written} keepalive-only transactions"
    );
    run.stop().await.expect("clean stop");
}
