//! The server the tests run on is the one that was asked for. CI runs this
//! binary once per PostgreSQL major with `CALENDAR_SYNC_PG_BINDIR` pointing at
//! that major's binaries and `CALENDAR_SYNC_EXPECT_PG_MAJOR` naming it
//! (`.ci/run`): a run that silently fell back to other binaries would pass on
//! the wrong server.

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_server_is_the_major_asked_for() {
    let db = TestDb::empty().await;
    let row = db
        .client
        .query_one(
            "select current_setting('server_version_num')::int, version()",
            &[],
        )
        .await
        .expect("server version");
    let (num, version): (i32, String) = (row.get(0), row.get(1));
    assert!(
        num >= 140000,
        "the tests ran on {version}; calendar-sync supports PostgreSQL 14 or newer"
    );
    if let Ok(want) = std::env::var("CALENDAR_SYNC_EXPECT_PG_MAJOR") {
        let want: i32 = want.trim().parse().unwrap_or_else(|_| {
            panic!("CALENDAR_SYNC_EXPECT_PG_MAJOR is {want:?}, expected a major such as 17")
        });
        assert_eq!(
            num / 10000,
            want,
            "CALENDAR_SYNC_EXPECT_PG_MAJOR={want} (CALENDAR_SYNC_PG_BINDIR={:?}), but the tests ran on {version}",
            std::env::var("CALENDAR_SYNC_PG_BINDIR").ok()
        );
    }
}
