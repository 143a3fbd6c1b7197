//! Two first deploys at once: both `migrate`s succeed.

use calendar_sync::migrate;

use crate::support::*;

/// Every step of `migrate`, the publication included, runs under its advisory
/// lock: concurrent runs on a fresh database both succeed, and the
/// publication exists once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrates_on_a_fresh_database_both_succeed() {
    for _round in 0..3 {
        let db = TestDb::crm().await;
        let cfg = db.config();
        let runs = (0..4).map(|_| {
            let cfg = cfg.clone();
            tokio::spawn(async move { migrate::migrate(&cfg).await })
        });
        let mut created = 0;
        for run in runs.collect::<Vec<_>>() {
            let report = run
                .await
                .expect("no panic")
                .unwrap_or_else(|e| panic!("a concurrent migrate failed: {e}"));
            created += usize::from(report.publication_created);
        }
        assert_eq!(created, 1, "exactly one run created the publication");
        assert_eq!(
            db.count("select count(*) from calendar_sync_schema_migrations")
                .await,
            8,
            "every migration once (target 0001-0004, source 0001-0004)"
        );
    }
}
