//! calendar-sync's own writes to interaction (calendar_synced_at, with the CRM's
//! updated_at trigger) never cause an event write, a log row or a loop, and an
//! idle slot follows the server's WAL.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_writes_with_the_updated_at_trigger_are_ignored_and_the_idle_slot_keeps_up() {
    let db = TestDb::crm().await;
    db.migrate().await;
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    let id = db.insert("Echo", "now()", "").await;
    db.wait_count(
        "select count(*) from interaction where calendar_synced_at is not null",
        1,
    )
    .await;
    db.client
        .execute(
            "update interaction set subject = 'Echo 2' where interaction_id = $1",
            &[&id],
        )
        .await
        .expect("update");
    db.wait_count("select count(*) from calendar_sync_log", 2)
        .await;
    db.barrier().await;
    let stamp = || async {
        db.client
            .query_one(
                "select calendar_synced_at from interaction where interaction_id = $1",
                &[&id],
            )
            .await
            .expect("stamp")
            .get::<_, chrono::DateTime<chrono::Utc>>(0)
    };
    let stamped = stamp().await;
    let applied = run.metrics.action_count(
        calendar_sync::mapping::Action::Update,
        calendar_sync::mapping::Outcome::Success,
    );
    // Two more barriers: with an echo loop, each stamp would be applied as an
    // update (the trigger changed updated_at), stamped again, and so on.
    db.barrier().await;
    db.barrier().await;
    assert_eq!(
        db.count("select count(*) from calendar_sync_log").await,
        2,
        "the log is quiet after catch-up"
    );
    assert_eq!(
        run.metrics.action_count(
            calendar_sync::mapping::Action::Update,
            calendar_sync::mapping::Outcome::Success
        ),
        applied
    );
    let again = stamp().await;
    assert_eq!(stamped, again, "not stamped again");
    // The slot does not hold WAL: once idle, confirmed_flush passes the WAL
    // position the server had (keepalive wal_end is acknowledged).
    let now = pg_current_lsn(&db.client).await;
    let follows = db.wait_slot_passes(&now).await;
    assert!(
        follows,
        "confirmed_flush_lsn did not reach {now} while idle"
    );
    run.stop().await.expect("clean stop");
}

/// Waits until the consumer of `slot` has committed its initial snapshot in `target`.
/// Issue 9: a CRM role may call `pg_logical_emit_message` with calendar-sync's
/// prefix, but that does not make its transaction calendar-sync's: the archive
/// and the delete reach the calendar, and the consumer says what it saw. The
/// role cannot read `calendar_sync_echo_key` (so it cannot make the marker
/// prove anything), not even through default privileges that grant it every
/// new table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crm_transaction_carrying_the_marker_first_is_still_applied() {
    use std::process::{Command, Stdio};
    let db = TestDb::crm().await;
    let crm = format!("{}_crm", db.name);
    db.client
        .batch_execute(&format!(
            "create role {crm};
             grant select, insert, update, delete on all tables in schema public to {crm};
             alter default privileges in schema public grant all on tables to {crm};"
        ))
        .await
        .expect("crm role");
    db.migrate().await;
    let log = std::env::temp_dir().join(format!("calendar-sync-forged-{}.log", db.name));
    let stderr = std::fs::File::create(&log).expect("log file");
    let mut child = spawn_run(&db, &[], Stdio::from(stderr));
    wait_streaming(&db).await;
    let archived = db.insert("Archived by a forger", "now()", "").await;
    let deleted = db.insert("Deleted by a forger", "now()", "").await;
    db.wait_count(
        "select count(*) from calendar_events where event_status = 'scheduled'",
        2,
    )
    .await;

    let user = connect(&db.url).await;
    user.batch_execute(&format!("set role {crm}"))
        .await
        .expect("set role");
    user.batch_execute(&format!(
        "begin;
         select pg_logical_emit_message(true, 'calendar_sync.echo', 'x');
         update interaction set archived = true where interaction_id = '{archived}';
         delete from interaction where interaction_id = '{deleted}';
         commit;"
    ))
    .await
    .expect("the forged transaction");
    db.barrier().await;
    let status: Option<String> = db.event(archived).await.map(|r| r.get("event_status"));
    let gone = db.event(deleted).await.is_none();
    let denied = user
        .query("select key from calendar_sync_echo_key", &[])
        .await
        .err()
        .and_then(|e| e.code().map(|c| c.code().to_string()));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        status.as_deref(),
        Some("cancelled"),
        "the archive reached the calendar"
    );
    assert!(gone, "the delete reached the calendar");
    assert_eq!(
        denied.as_deref(),
        Some("42501"),
        "a CRM role cannot read the echo key"
    );
    assert!(
        stderr.contains("carried calendar-sync's echo marker but is not calendar-sync's"),
        "a warning names the forged marker: {stderr}"
    );
    let _ = std::fs::remove_file(&log);
}

/// A marker emitted after the changes (the consumer may already have applied
/// them when it sees it) hides nothing either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crm_transaction_carrying_the_marker_last_is_still_applied() {
    let db = TestDb::crm().await;
    db.migrate().await;
    let run = Running::start(db.config());
    wait_streaming(&db).await;
    let archived = db.insert("Archived, marker last", "now()", "").await;
    let deleted = db.insert("Deleted, marker last", "now()", "").await;
    db.wait_count(
        "select count(*) from calendar_events where event_status = 'scheduled'",
        2,
    )
    .await;
    db.client
        .batch_execute(&format!(
            "begin;
             update interaction set archived = true where interaction_id = '{archived}';
             delete from interaction where interaction_id = '{deleted}';
             select pg_logical_emit_message(true, 'calendar_sync.echo', 'x');
             commit;"
        ))
        .await
        .expect("the forged transaction");
    db.barrier().await;
    let status: Option<String> = db.event(archived).await.map(|r| r.get("event_status"));
    assert_eq!(status.as_deref(), Some("cancelled"));
    assert!(db.event(deleted).await.is_none(), "the delete was applied");
    run.stop().await.expect("clean stop");
}

/// Two consumers of one database (two slots, each with its own target) both
/// stamp `calendar_synced_at`; each ignores the other's stamps, so neither
/// loops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_on_one_database_never_echo_each_other() {
    use calendar_sync::config::SecretUrl;
    let source = TestDb::crm().await;
    let (ta, tb) = (TestDb::empty().await, TestDb::empty().await);
    let mut a = source.config();
    a.target_url = Some(SecretUrl::new(ta.url.clone()));
    let mut b = source.config();
    b.slot = format!("{}_b", source.name);
    b.target_url = Some(SecretUrl::new(tb.url.clone()));
    let (slot_a, slot_b) = (a.slot.clone(), b.slot.clone());
    calendar_sync::migrate::migrate(&a)
        .await
        .expect("migrate a");
    calendar_sync::migrate::migrate(&b)
        .await
        .expect("migrate b");
    let ra = Running::start(a);
    let rb = Running::start(b);
    wait_streaming_into(&source, &ta, &slot_a).await;
    wait_streaming_into(&source, &tb, &slot_b).await;
    let id = source.insert("Seen twice", "now()", "").await;
    for t in [&ta, &tb] {
        t.wait_count(
            &format!("select count(*) from calendar_sync_log where interaction_id = '{id}'"),
            1,
        )
        .await;
    }
    source
        .wait_count(
            &format!("select count(*) from interaction where interaction_id = '{id}' and calendar_synced_at is not null"),
            1,
        )
        .await;
    let settle = || async {
        source.barrier_for(&ta.client, &slot_a).await;
        source.barrier_for(&tb.client, &slot_b).await;
    };
    settle().await;
    let stamp = || async {
        source
            .client
            .query_one(
                "select calendar_synced_at, updated_at from interaction where interaction_id = $1",
                &[&id],
            )
            .await
            .expect("stamp")
            .get::<_, chrono::DateTime<chrono::Utc>>(0)
    };
    let stamped = stamp().await;
    // With an echo between the two, each stamp is an update for the other
    // (the trigger moved updated_at), which stamps again, and so on.
    settle().await;
    settle().await;
    assert_eq!(stamp().await, stamped, "not stamped again");
    for t in [&ta, &tb] {
        assert_eq!(
            t.count("select count(*) from calendar_sync_log").await,
            1,
            "only the create is logged"
        );
    }
    ra.stop().await.expect("clean stop a");
    rb.stop().await.expect("clean stop b");
}

/// The marker statement and the stream's check agree: the message a real
/// transaction emits with `echo::MARKER` (read back through a pgoutput slot)
/// is proven by `EchoKey` for that transaction's Begin xid, and for no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_marker_the_server_emits_is_proven_by_the_key_for_its_xid_only() {
    use calendar_sync::echo::{EchoKey, MARKER, PREFIX};
    let db = TestDb::crm().await;
    db.migrate().await;
    let key = EchoKey::load(&db.client).await.expect("key");
    db.client
        .execute(
            "select pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&db.name],
        )
        .await
        .expect("slot");
    // Flushed at commit: the SQL decoding functions read flushed WAL only.
    db.client
        .batch_execute("begin; set local synchronous_commit = local")
        .await
        .expect("begin");
    let emitted = db.client.query(MARKER, &[&PREFIX]).await.expect("marker");
    assert_eq!(emitted.len(), 1, "one message");
    db.client.batch_execute("commit").await.expect("commit");
    let frames: Vec<Vec<u8>> = db
        .client
        .query(
            "select data from pg_logical_slot_peek_binary_changes($1::text::name, null, null,
                 'proto_version', '1', 'publication_names', $1::text, 'messages', 'true')",
            &[&db.name],
        )
        .await
        .expect("peek")
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Begin: 'B', final LSN (8), commit time (8), xid (4).
    let begin = frames
        .iter()
        .find(|f| f.first() == Some(&b'B'))
        .expect("a Begin");
    let xid = u32::from_be_bytes(begin[17..21].try_into().expect("4 bytes"));
    // Message: 'M', flags (1), LSN (8), prefix\0, length (4), content.
    let message = frames
        .iter()
        .find(|f| f.first() == Some(&b'M'))
        .expect("a Message");
    assert_eq!(message[1], 1, "transactional");
    let prefix_end = 10
        + message[10..]
            .iter()
            .position(|b| *b == 0)
            .expect("prefix end");
    assert_eq!(&message[10..prefix_end], PREFIX.as_bytes());
    let content = &message[prefix_end + 5..];
    assert_eq!(content.len(), 32, "a SHA-256");
    assert!(key.proves(xid, content), "the stream recognises it");
    assert!(
        !key.proves(xid.wrapping_add(1), content),
        "not another transaction's"
    );
    db.client
        .execute("select pg_drop_replication_slot($1)", &[&db.name])
        .await
        .expect("drop slot");
}
