//! Contract §5, transient failures (server restart, terminated sessions, a
//! slot held by another consumer) are retried and replayed without doubling
//! anything or writing the failures table. Fatal ones are in `fatal.rs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use calendar_sync::mapping::Action;
use calendar_sync::mapping::Outcome;
use calendar_sync::pgcluster::LocalCluster;
use tokio::sync::watch;
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

use crate::support::*;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A connection that is not named `calendar-sync`, so that terminating the
/// consumer's sessions by application_name leaves the test's own alone.
pub(crate) async fn own_connect(url: &str, app: &str) -> Result<Client, tokio_postgres::Error> {
    let mut cfg: tokio_postgres::Config = url.parse()?;
    cfg.application_name(app);
    let (client, connection) = cfg.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Connects, retrying while the server is down or starting up (60 s at most).
pub(crate) async fn connect_retrying(url: &str, app: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match own_connect(url, app).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "{app}: no connection within 60 s: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// `db` with its client replaced by one named `recovery-test`.
pub(crate) async fn renamed(db: TestDb) -> TestDb {
    let client = connect_retrying(&db.url, "recovery-test").await;
    TestDb {
        name: db.name,
        url: db.url,
        client,
    }
}

/// A private cluster (the shared one must never be restarted or reconfigured).
pub(crate) async fn private_cluster(
    name: &'static str,
    extra_conf: &'static str,
) -> Arc<LocalCluster> {
    let c = tokio::task::spawn_blocking(move || LocalCluster::start(name, extra_conf))
        .await
        .expect("cluster start task")
        .unwrap_or_else(|e| panic!("cannot start a private PostgreSQL: {e}"));
    Arc::new(c)
}

/// Stops and removes a private cluster off the async worker threads.
pub(crate) async fn remove_cluster(c: Arc<LocalCluster>) {
    tokio::task::spawn_blocking(move || drop(c))
        .await
        .expect("cluster removal task");
}

/// The CRM of `TestDb::crm` (schema, one user, customer and contact) in a new
/// database `name` of a private cluster.
pub(crate) async fn crm_on(cluster: &LocalCluster, name: &str) -> TestDb {
    let admin = connect_retrying(&cluster.url("postgres"), "recovery-test").await;
    admin
        .batch_execute(&format!("create database {name}"))
        .await
        .expect("create database");
    let url = cluster.url(name);
    let client = connect_retrying(&url, "recovery-test").await;
    load_crm(&client).await;
    TestDb {
        name: name.to_string(),
        url,
        client,
    }
}

/// What the writer knows it committed.
#[derive(Debug, Default)]
struct Written {
    /// interaction_id -> subject of the last committed write.
    committed: HashMap<Uuid, String>,
    /// Statements that failed and were retried (or found committed after all).
    errors: u64,
}

const WRITE_INSERT: &str = "insert into interaction (interaction_id, interaction_type, subject, interaction_date, created_by)
     values ($1, 'meeting', $2, now() + interval '1 day', '00000000-0000-4000-8000-000000000001')";
const WRITE_UPDATE: &str = "update interaction set subject = $2 where interaction_id = $1";

/// Inserts (2 of 3) and updates (1 of 3) interactions, one statement per
/// transaction, until `stop`. A failed statement is retried after a
/// reconnect, unless a read shows it committed after all (the reply was
/// lost). `done` counts committed writes.
async fn writer(url: String, stop: watch::Receiver<bool>, done: Arc<AtomicUsize>) -> Written {
    let mut client = connect_retrying(&url, "recovery-writer").await;
    let mut w = Written::default();
    let mut inserted: Vec<Uuid> = Vec::new();
    let mut k: usize = 0;
    while !*stop.borrow() {
        let insert = k % 3 != 2 || inserted.is_empty();
        let (id, subject) = if insert {
            (Uuid::new_v4(), format!("Insert {k}"))
        } else {
            (inserted[(k / 3) % inserted.len()], format!("Update {k}"))
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let sql = if insert { WRITE_INSERT } else { WRITE_UPDATE };
            match client.execute(sql, &[&id, &subject]).await {
                Ok(n) => {
                    assert_eq!(n, 1, "write {k} changed {n} rows");
                    break;
                }
                Err(e) => {
                    w.errors += 1;
                    assert!(
                        Instant::now() < deadline,
                        "write {k} kept failing for 60 s: {e}"
                    );
                    if client.is_closed() {
                        client = connect_retrying(&url, "recovery-writer").await;
                    }
                    match client
                        .query_opt(
                            "select subject from interaction where interaction_id = $1",
                            &[&id],
                        )
                        .await
                    {
                        Ok(Some(r)) if r.get::<_, String>(0) == subject => break,
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }
        }
        if insert {
            inserted.push(id);
        }
        w.committed.insert(id, subject);
        done.fetch_add(1, Ordering::SeqCst);
        k += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    w
}

/// A writer running in the background.
struct Chaos {
    stop: watch::Sender<bool>,
    done: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Written>,
}

impl Chaos {
    fn start(url: &str) -> Chaos {
        let (stop, rx) = watch::channel(false);
        let done = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(writer(url.to_string(), rx, done.clone()));
        Chaos { stop, done, task }
    }

    fn done(&self) -> usize {
        self.done.load(Ordering::SeqCst)
    }

    /// Waits until `n` more writes than now have committed.
    async fn wait_more(&self, n: usize, what: &str) {
        let want = self.done() + n;
        assert!(
            wait_until(Duration::from_secs(60), || async { self.done() >= want }).await,
            "{what}: the writer did not commit {n} more writes within 60 s (it has {})",
            self.done()
        );
    }

    async fn finish(self) -> Written {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(70), self.task)
            .await
            .expect("the writer stops")
            .expect("the writer did not panic")
    }
}

/// The calendar is exactly what the writer committed, nothing doubled, no
/// failure recorded.
async fn assert_calendar_is(db: &TestDb, w: &Written) {
    let source: HashMap<Uuid, String> = db
        .client
        .query("select interaction_id, subject from interaction", &[])
        .await
        .expect("read interactions")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        source.len(),
        w.committed.len(),
        "the source holds exactly the writes the writer saw commit"
    );
    assert!(
        source == w.committed,
        "source differs from the writer's record"
    );
    let events: HashMap<Uuid, String> = db
        .client
        .query(
            "select related_id, title from calendar_events where related_table = 'interaction'",
            &[],
        )
        .await
        .expect("read events")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let wrong: BTreeMap<String, (String, Option<String>)> = w
        .committed
        .iter()
        .filter(|(id, subject)| events.get(*id) != Some(*subject))
        .map(|(id, subject)| (id.to_string(), (subject.clone(), events.get(id).cloned())))
        .take(5)
        .collect();
    assert!(
        wrong.is_empty(),
        "committed interactions without their event or with a stale title (interaction: (subject, title)): {wrong:?}"
    );
    assert_eq!(
        events.len(),
        w.committed.len(),
        "no event without an interaction"
    );
    assert_eq!(
        db.count(
            "select count(*) from (select interaction_id from calendar_sync_log
              where action = 'create' group by interaction_id having count(*) > 1) d"
        )
        .await,
        0,
        "no interaction has two create log rows"
    );
    assert_eq!(
        db.count("select count(*) from calendar_sync_log where action = 'create'")
            .await,
        w.committed.len() as i64,
        "one create log row per interaction"
    );
    assert_eq!(
        db.count("select count(*) from calendar_sync_log where status <> 'success'")
            .await,
        0,
        "no failed log rows"
    );
    assert_eq!(
        db.count("select count(*) from calendar_sync_failures")
            .await,
        0,
        "transient failures never write calendar_sync_failures"
    );
}

fn random_pause() -> Duration {
    Duration::from_millis(100 + (Uuid::new_v4().as_u128() % 400) as u64)
}

fn events_sql() -> &'static str {
    "select count(*) from calendar_events"
}

// ---------------------------------------------------------------------------
// Transient failures
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immediate_server_restart_mid_stream_is_recovered_without_loss_doubles_or_failure_rows()
{
    // synchronous_commit = on: a commit the writer saw survives the crash.
    let cluster = private_cluster(
        "recovery-restart",
        "synchronous_commit = on\nwal_sender_timeout = 10s\nlog_min_messages = warning\n",
    )
    .await;
    let db = crm_on(&cluster, "t_restart").await;
    db.migrate().await;
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    let chaos = Chaos::start(&db.url);

    // Before: writes are being applied.
    assert!(
        wait_until(Duration::from_secs(30), || async {
            db.count(events_sql()).await >= 10
        })
        .await,
        "no events before the restart"
    );

    // During: crash, a short random pause, start again.
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop("immediate"))
        .await
        .expect("stop task")
        .expect("pg_ctl stop -m immediate");
    tokio::time::sleep(random_pause()).await;
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.restart())
        .await
        .expect("restart task")
        .expect("pg_ctl start after the crash");
    drop(db.client);
    let db = TestDb {
        client: connect_retrying(&db.url, "recovery-test").await,
        ..db
    };

    // After: more writes, then everything applied.
    chaos.wait_more(15, "after the restart").await;
    let w = chaos.finish().await;
    assert!(
        w.errors > 0,
        "the writer never saw the server go away: the restart was not mid-stream"
    );
    db.barrier().await;
    assert_calendar_is(&db, &w).await;
    assert!(
        reconnects(&run.metrics) >= 1,
        "the consumer counted no reconnect"
    );
    run.stop().await.expect("clean stop after the recovery");
    remove_cluster(cluster).await;
}

/// Terminates the sessions of this test's consumer; returns how many.
async fn terminate(db: &TestDb, only_walsender: bool) -> i64 {
    let sql = format!(
        "select count(pg_terminate_backend(pid)) from pg_stat_activity
          where datname = $1 and application_name like 'calendar-sync%' {}",
        if only_walsender {
            "and backend_type = 'walsender'"
        } else {
            ""
        }
    );
    db.client
        .query_one(sql.as_str(), &[&db.name])
        .await
        .expect("pg_terminate_backend")
        .get(0)
}

async fn walsender_pid(db: &TestDb) -> Option<i32> {
    db.client
        .query_opt(
            "select active_pid from pg_replication_slots where slot_name = $1",
            &[&db.name],
        )
        .await
        .expect("slot")
        .and_then(|r| r.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_sessions_are_reconnected_and_replayed_without_doubles_or_failure_rows() {
    let db = TestDb::crm().await;
    db.migrate().await;
    let db = renamed(db).await;
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    let chaos = Chaos::start(&db.url);
    assert!(
        wait_until(Duration::from_secs(30), || async {
            db.count(events_sql()).await >= 10
        })
        .await,
        "no events before terminating"
    );

    // The walsender only.
    let old = walsender_pid(&db).await;
    assert_eq!(terminate(&db, true).await, 1, "one walsender terminated");
    assert!(
        wait_until(Duration::from_secs(30), || async {
            reconnects(&run.metrics) >= 1
                && walsender_pid(&db).await.is_some_and(|p| Some(p) != old)
        })
        .await,
        "no new walsender after terminating the old one (reconnects: {})",
        reconnects(&run.metrics)
    );
    chaos.wait_more(10, "after terminating the walsender").await;
    db.barrier().await;

    // Every session: walsender, target, source and lookups.
    let n = terminate(&db, false).await;
    assert!(n >= 4, "terminated {n} sessions, expected the consumer's 4");
    assert!(
        wait_until(Duration::from_secs(30), || async {
            reconnects(&run.metrics) >= 2
        })
        .await,
        "the consumer did not reconnect after all its sessions were terminated"
    );
    chaos.wait_more(10, "after terminating every session").await;
    let w = chaos.finish().await;
    db.barrier().await;
    assert_calendar_is(&db, &w).await;
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_consumer_on_the_same_slot_waits_and_takes_over_when_the_first_stops() {
    let db = TestDb::crm().await;
    db.migrate().await;
    let a = Running::start(db.config());
    wait_streaming(&db).await;
    let first = db
        .insert("Before the deploy", "now() + interval '1 day'", "")
        .await;
    db.wait_count(
        &format!("select count(*) from calendar_events where related_id = '{first}'"),
        1,
    )
    .await;

    let b = Running::start(db.config());
    assert!(
        wait_until(Duration::from_secs(20), || async {
            reconnects(&b.metrics) >= 2
        })
        .await,
        "B did not keep retrying while A holds the slot (reconnects: {}, finished: {})",
        reconnects(&b.metrics),
        b.handle.is_finished()
    );
    assert!(!b.handle.is_finished(), "B gave up while A holds the slot");
    assert_eq!(reconnects(&a.metrics), 0, "A was not disturbed");

    a.stop().await.expect("A stops cleanly");
    let second = db
        .insert("After the deploy", "now() + interval '2 days'", "")
        .await;
    db.wait_count(
        &format!("select count(*) from calendar_events where related_id = '{second}' and title = 'After the deploy'"),
        1,
    )
    .await;
    db.barrier().await;
    assert_eq!(
        b.metrics.action_count(Action::Create, Outcome::Success),
        1,
        "B applied the second insert (and only it)"
    );
    for id in [first, second] {
        assert_eq!(
            db.count(&format!(
                "select count(*) from calendar_sync_log where interaction_id = '{id}'"
            ))
            .await,
            1,
            "exactly one log row for {id}"
        );
    }
    assert_eq!(
        db.count("select count(*) from calendar_sync_failures")
            .await,
        0
    );
    b.stop().await.expect("B stops cleanly");
}

/// A SQLSTATE of a class that is retried (decision 56: XX000 internal_error,
/// fatal before; raised here by a trigger on calendar_events while a switch
/// is on) holds the stream back with backoff and counted reconnects, writes
/// no failure row, and once it passes the change is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_internal_error_is_retried_until_it_passes_without_a_failure_row() {
    let (db, run) = started().await;
    db.client
        .batch_execute(
            "create table trouble (since timestamptz);
             insert into trouble values (now());
             create function internal_trouble() returns trigger language plpgsql as $$
             begin
               if exists (select 1 from trouble) then
                 raise exception 'simulated internal error' using errcode = 'XX000';
               end if;
               return new;
             end $$;
             create trigger internal_trouble before insert on calendar_events
               for each row execute function internal_trouble();",
        )
        .await
        .expect("the trigger");
    let id = db.insert("Through trouble", "now()", "").await;
    let retried = wait_until(Duration::from_secs(30), || async {
        reconnects(&run.metrics) >= 2
    })
    .await;
    assert!(retried, "retried: {} reconnects", reconnects(&run.metrics));
    assert!(!run.handle.is_finished(), "not fatal");
    assert!(db.event(id).await.is_none());

    db.client
        .batch_execute("delete from trouble")
        .await
        .expect("the trouble passes");
    db.wait_count(&log_rows(id, "create", "success"), 1).await;
    db.barrier().await;
    let left = db
        .count(&format!(
            "select (select count(*) from calendar_sync_failures)
                  + ({})",
            log_rows(id, "create", "failed")
        ))
        .await;
    assert_eq!(
        left, 0,
        "a retried error is no row's failure, nor a failed log row"
    );
    run.stop().await.expect("clean stop");
}
