//! A separate target database, and private_notes never leaving interaction.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_separate_target_holds_events_log_failures_and_progress() {
    let source = TestDb::crm().await;
    let target = TestDb::empty().await;
    let mut cfg = source.config();
    cfg.target_url = Some(calendar_sync::config::SecretUrl::new(target.url.clone()));
    calendar_sync::migrate::migrate(&cfg)
        .await
        .expect("migrate");
    // Target tables only in the target, no users table there, so no FK. The
    // source holds only what calendar-sync writes there itself.
    assert_eq!(source.count("select count(*) from pg_tables where tablename like 'calendar_%' and tablename not in ('calendar_sync_schema_migrations', 'calendar_sync_echo', 'calendar_sync_echo_key', 'calendar_sync_slot_owner')").await, 0);
    assert_eq!(target.count("select count(*) from pg_tables where tablename in ('calendar_events', 'calendar_sync_log', 'calendar_sync_failures', 'calendar_sync_progress')").await, 4);
    assert_eq!(
        target
            .count(
                "select count(*) from pg_constraint where conname like 'calendar_events_%_by_fkey'"
            )
            .await,
        0
    );

    let run = Running::start(cfg);
    let pre = source
        .insert(
            "Before start",
            "now()",
            &format!("customer_id='{CUSTOMER}'"),
        )
        .await;
    let ok = wait_until(std::time::Duration::from_secs(30), || async {
        target.count("select count(*) from calendar_events").await == 1
    })
    .await;
    assert!(ok, "snapshot reached the target");
    let id = source
        .insert(
            "Separate",
            "now()",
            &format!("customer_id='{CUSTOMER}';contact_id='{CONTACT}'"),
        )
        .await;
    target.wait_count(&format!("select count(*) from calendar_events where related_id = '{id}' and participants = array['Acme Corp', 'Ada Lovelace']"), 1).await;
    // An unknown created_by is fine without a users table in the target.
    source
        .client
        .execute(
            &format!("delete from interaction where interaction_id = '{pre}'"),
            &[],
        )
        .await
        .expect("delete");
    target.wait_count(&format!("select count(*) from calendar_sync_log where interaction_id = '{pre}' and action = 'delete'"), 1).await;
    // calendar_synced_at is stamped in the source after the target commit,
    // and its echo is ignored.
    source.wait_count(&format!("select count(*) from interaction where interaction_id = '{id}' and calendar_synced_at is not null"), 1).await;
    source.barrier_in(&target.client).await;
    assert_eq!(
        target.count("select count(*) from calendar_sync_log").await,
        3
    );
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_notes_appear_nowhere_in_the_target_or_the_stream() {
    let db = TestDb::crm().await;
    db.migrate().await;
    let published: Vec<String> = db
        .client
        .query_one("select attnames::text[] from pg_publication_tables where pubname = $1 and tablename = 'interaction'", &[&db.name])
        .await
        .expect("publication")
        .get(0);
    assert!(
        !published.iter().any(|c| c == "private_notes"),
        "{published:?}"
    );
    assert!(published.iter().any(|c| c == "description"));
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    let id = db
        .insert(
            "Secretive",
            "now()",
            "private_notes='TOP-SECRET-4711';description='public'",
        )
        .await;
    db.client
        .execute("update interaction set private_notes = 'TOP-SECRET-4712', subject = 'Secretive 2' where interaction_id = $1", &[&id])
        .await
        .expect("update");
    db.wait_count("select count(*) from calendar_sync_log", 2)
        .await;
    // Every text-like column of every calendar-sync table.
    let columns = db
        .client
        .query(
            "select table_name::text, column_name::text from information_schema.columns
              where table_schema = 'public' and table_name like 'calendar_%'
                and data_type in ('text', 'character varying', 'ARRAY')",
            &[],
        )
        .await
        .expect("columns");
    assert!(columns.len() > 5);
    for c in columns {
        let (t, col): (String, String) = (c.get(0), c.get(1));
        let n = db
            .count(&format!(
                "select count(*) from {t} where {col}::text like '%TOP-SECRET%'"
            ))
            .await;
        assert_eq!(n, 0, "{t}.{col} holds private_notes");
    }
    run.stop().await.expect("clean stop");
}
