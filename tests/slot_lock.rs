//! The slot's advisory lock (one process per slot) is held for the whole
//! initial snapshot: a snapshot whose lock was lost never commits.

use std::time::Duration;

use crate::support::*;
use crate::timeouts::hold_snapshot_commit;

/// pid of the session holding an advisory lock in `db`.
async fn advisory_lock_holders(db: &TestDb) -> Vec<i32> {
    db.client
        .query(
            "select l.pid from pg_locks l join pg_database d on d.oid = l.database
              where l.locktype = 'advisory' and l.granted and d.datname = current_database()",
            &[],
        )
        .await
        .expect("pg_locks")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The lock session dies (idle timeout, network, here pg_terminate_backend)
/// while the snapshot is copied: a second instance could now drop and
/// recreate the slot, so the first must not commit its snapshot (whose
/// consistent point would then name a slot that no longer exists, and the
/// transactions between the two consistent points would never be applied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_whose_slot_lock_was_lost_never_commits() {
    let db = TestDb::crm().await;
    db.insert("Existing", "now()", "").await;
    db.migrate().await;
    let mut cfg = db.config();
    cfg.lock_timeout = Duration::from_secs(300);
    let mut run = None;
    let progress_lock = hold_snapshot_commit(&db, || run = Some(Running::start(cfg))).await;
    let run = run.expect("started");
    let first_point: String = db
        .client
        .query_one(
            "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = $1",
            &[&db.name],
        )
        .await
        .expect("slot")
        .get(0);
    let holders = advisory_lock_holders(&db).await;
    assert_eq!(holders.len(), 1, "one session holds the slot lock");
    let killed = holders[0];
    db.client
        .execute("select pg_terminate_backend($1)", &[&killed])
        .await
        .expect("terminate the lock session");
    // The consumer should notice while its snapshot still waits, and take
    // the lock again in a new session (to start over).
    let noticed = wait_until(Duration::from_secs(15), || async {
        advisory_lock_holders(&db)
            .await
            .iter()
            .any(|pid| *pid != killed)
    })
    .await;
    progress_lock
        .batch_execute("commit")
        .await
        .expect("release");
    wait_streaming(&db).await;
    db.barrier().await;
    let snapshot_point: String = db
        .client
        .query_one(
            "select snapshot_lsn::text from calendar_sync_progress where slot_name = $1",
            &[&db.name],
        )
        .await
        .expect("progress")
        .get(0);
    assert_ne!(
        snapshot_point, first_point,
        "the snapshot taken under the lost lock was committed"
    );
    assert!(
        noticed,
        "the consumer did not notice that it lost the slot lock"
    );
    assert_eq!(
        db.count("select count(*) from calendar_sync_log where action = 'create'")
            .await,
        1
    );
    run.stop().await.expect("clean stop");
}
