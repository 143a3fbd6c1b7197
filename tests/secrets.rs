//! Secrets and row contents stay out of logs and error messages.

use calendar_sync::error::SyncError;

use crate::support::*;

/// A transient database error is logged (and, for the one-shot commands,
/// printed with its whole cause chain): a `Failing row contains (...)` detail,
/// which lists every column of a row (private_notes too), must not be in any
/// of it, while the server's message and SQLSTATE are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_errors_never_carry_a_failing_row_detail() {
    let db = TestDb::empty().await;
    let e = db
        .client
        .batch_execute(
            "do $$ begin raise exception 'could not serialize access'
               using errcode = '40001', detail = 'Failing row contains (1, secret private note).'; end $$",
        )
        .await
        .expect_err("raises");
    let err = SyncError::db("applying a change", e);
    assert!(err.is_transient(), "40001 is transient: {err}");
    let display = err.to_string();
    let debug = format!("{err:?}");
    let chain = format!("{:#}", anyhow::Error::from(err));
    for shown in [&display, &debug, &chain] {
        assert!(!shown.contains("secret private note"), "{shown}");
    }
    assert!(
        display.contains("could not serialize access") && display.contains("40001"),
        "the log line says what happened: {display}"
    );
}

/// Without `sslmode=verify-full` the server is not verified: anyone on the
/// network path can impersonate it (and, with the default `prefer`,
/// downgrade the connection to plaintext) and read the password. Every
/// command says so at start, without the connection string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unverified_server_is_warned_about_at_start() {
    let db = TestDb::crm().await;
    let out = binary()
        .args(["migrate"])
        .env("DATABASE_URL", &db.url)
        .env("CALENDAR_SYNC_PUBLICATION", &db.name)
        .output()
        .expect("run migrate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("WARN")
            && stderr.contains("sslmode=prefer")
            && stderr.contains("verify-full"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(&db.url),
        "no connection string in logs: {stderr}"
    );
}
