//! A CRM transaction that is streamed but not visible yet ([`HeldCommit`]),
//! and waiting until the walsender sent a position ([`wait_sent`]): the
//! live-CRM tests' tools (issue 13).

use std::time::Duration;

use super::*;

/// A CRM transaction whose commit is streamed but not visible: its session
/// commits with `synchronous_commit = on` on the test cluster, whose
/// synchronous standby (`ghost`) never answers, so the commit record is
/// written and decoded while the transaction stays in progress for every
/// other session, until [`HeldCommit::release`] cancels the wait (the
/// transaction then shows as committed). Issue 13.
pub struct HeldCommit {
    pid: i32,
    url: String,
    admin: Client,
    task: Option<JoinHandle<Result<(), tokio_postgres::Error>>>,
}

impl HeldCommit {
    /// Runs `sql` (statements, without begin/commit) in one transaction of a
    /// new session on `db` and returns once its commit waits for the standby.
    pub async fn start(db: &TestDb, sql: &str) -> HeldCommit {
        let session = connect(&db.url).await;
        let pid: i32 = session
            .query_one("select pg_backend_pid()", &[])
            .await
            .expect("pid")
            .get(0);
        let body = format!("set synchronous_commit = on; begin; {sql}; commit;");
        let task = tokio::spawn(async move { session.batch_execute(&body).await });
        let admin = connect(&db.url).await;
        let held = wait_until(Duration::from_secs(30), || async {
            if task.is_finished() {
                return true;
            }
            admin
                .query_one(
                    "select count(*) from pg_stat_activity where pid = $1 and wait_event = 'SyncRep'",
                    &[&pid],
                )
                .await
                .expect("pg_stat_activity")
                .get::<_, i64>(0)
                == 1
        })
        .await;
        if !held {
            let row = admin
                .query_opt(
                    "select state, wait_event_type, wait_event, query from pg_stat_activity where pid = $1",
                    &[&pid],
                )
                .await
                .expect("pg_stat_activity");
            let seen = row.map(|r| {
                format!(
                    "{:?} {:?} {:?} {:?}",
                    r.get::<_, Option<String>>(0),
                    r.get::<_, Option<String>>(1),
                    r.get::<_, Option<String>>(2),
                    r.get::<_, Option<String>>(3)
                )
            });
            panic!("the held commit did not start waiting for the standby: {seen:?}");
        }
        if task.is_finished() {
            let r = task.await.expect("join");
            panic!("the held transaction ended instead of waiting for the standby: {r:?}");
        }
        HeldCommit {
            pid,
            url: db.url.clone(),
            admin,
            task: Some(task),
        }
    }

    /// The WAL insert position now: past the held transaction's commit record.
    pub async fn after(&self) -> String {
        pg_current_lsn(&self.admin).await
    }

    /// Ends the wait: the transaction becomes visible (committed).
    pub async fn release(mut self) {
        self.admin
            .execute("select pg_cancel_backend($1)", &[&self.pid])
            .await
            .expect("cancel the synchronous-commit wait");
        let Some(task) = self.task.take() else {
            return;
        };
        let result = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the held commit ends after its release")
            .expect("join");
        result
            .expect("the held transaction committed (a cancelled wait is a warning, not an error)");
    }
}

impl Drop for HeldCommit {
    /// A test that failed before its release still ends the wait: a held
    /// transaction would delay every slot creation of the cluster.
    fn drop(&mut self) {
        if self.task.is_none() {
            return;
        }
        let (url, pid) = (self.url.clone(), self.pid);
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let c = connect(&url).await;
                let _ = c.execute("select pg_cancel_backend($1)", &[&pid]).await;
            });
        })
        .join();
    }
}

/// Waits until the walsender of `slot` has sent WAL up to `lsn`: the consumer
/// has received everything committed before it.
pub async fn wait_sent(db: &TestDb, slot: &str, lsn: &str) {
    let sent = wait_until(Duration::from_secs(30), || async {
        db.client
            .query_one(
                "select count(*) from pg_stat_replication r join pg_replication_slots s on s.active_pid = r.pid
                  where s.slot_name = $1 and r.sent_lsn >= $2::text::pg_lsn",
                &[&slot, &lsn],
            )
            .await
            .expect("pg_stat_replication")
            .get::<_, i64>(0)
            == 1
    })
    .await;
    assert!(
        sent,
        "the walsender of {slot} did not send {lsn} within 30 s"
    );
}
