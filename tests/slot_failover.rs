//! `CALENDAR_SYNC_SLOT_FAILOVER` (issue 14): on PostgreSQL 17+ the slot is
//! created as a failover slot, an existing one is altered, and `status`
//! shows it; before 17 it is a configuration error. Runs on whichever major
//! the suite runs on (CI: 15, 17, 18).

use std::time::Duration;

use crate::support::*;

async fn server_major(db: &TestDb) -> i32 {
    db.client
        .query_one(
            "select current_setting('server_version_num')::int / 10000",
            &[],
        )
        .await
        .expect("version")
        .get(0)
}

async fn slot_failover(db: &TestDb) -> Option<bool> {
    db.client
        .query_one(
            "select (select (to_jsonb(s) ->> 'failover')::boolean from pg_replication_slots s where slot_name = $1)",
            &[&db.name],
        )
        .await
        .expect("slot")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_slot_is_created_or_altered_on_17_and_refused_before() {
    let db = TestDb::crm().await;
    db.migrate().await;
    let mut cfg = db.config();
    cfg.slot_failover = true;
    if server_major(&db).await < 17 {
        let mut run = Running::start(cfg);
        let (message, hint) = fatal_of(&mut run, FatalKind::Config, Duration::from_secs(20)).await;
        assert!(
            message.contains("CALENDAR_SYNC_SLOT_FAILOVER=true"),
            "{message}"
        );
        assert!(hint.contains("CALENDAR_SYNC_SLOT_FAILOVER=false"), "{hint}");
        // This test's slot only: the cluster is shared with the tests
        // running meanwhile, which have slots of their own.
        assert_eq!(
            db.count(&format!(
                "select count(*) from pg_replication_slots where slot_name = '{}'",
                db.name
            ))
            .await,
            0,
            "no slot was created"
        );
        return;
    }
    // Created as a failover slot.
    let run = Running::start(cfg.clone());
    wait_streaming(&db).await;
    assert_eq!(slot_failover(&db).await, Some(true));
    run.stop().await.expect("clean stop");

    // A slot made without it is altered at the next start, and streams on.
    db.wait_count(
        &format!(
            "select count(*) from pg_replication_slots where slot_name = '{}' and not active",
            db.name
        ),
        1,
    )
    .await;
    let mut plain = db.config();
    plain.slot_failover = false;
    let run = Running::start(plain.clone());
    wait_streaming(&db).await;
    run.stop().await.expect("clean stop");
    assert_eq!(
        slot_failover(&db).await,
        Some(true),
        "false leaves it as it is"
    );
    db.client
        .execute("select pg_drop_replication_slot($1)", &[&db.name])
        .await
        .ok();
    // Dropped: the plain config creates a plain slot (a new snapshot).
    db.client
        .execute(
            "delete from calendar_sync_progress where slot_name = $1",
            &[&db.name],
        )
        .await
        .expect("forget progress");
    let run = Running::start(plain);
    wait_streaming(&db).await;
    run.stop().await.expect("clean stop");
    assert_eq!(slot_failover(&db).await, Some(false));
    db.wait_count(
        &format!(
            "select count(*) from pg_replication_slots where slot_name = '{}' and not active",
            db.name
        ),
        1,
    )
    .await;
    let run = Running::start(cfg);
    wait_streaming(&db).await;
    assert_eq!(slot_failover(&db).await, Some(true), "altered at start");
    let id = db.insert("After the alter", "now()", "").await;
    db.wait_count(
        &format!("select count(*) from calendar_events where related_id = '{id}'"),
        1,
    )
    .await;
    run.stop().await.expect("clean stop");

    // status shows it, and warns: no synchronized_standby_slots here.
    let st = calendar_sync::status::status(&db.config(), 60)
        .await
        .expect("status");
    assert_eq!(st.slot_failover, Some(true));
    assert!(
        st.problems
            .iter()
            .any(|p| p.contains("synchronized_standby_slots")),
        "{:?}",
        st.problems
    );
}
