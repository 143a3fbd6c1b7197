//! TLS: `sslmode=verify-full` with `sslrootcert` encrypts and verifies both the
//! SQL and the replication connections; an untrusted server is a fatal error,
//! not an endless retry.

use std::time::Duration;

use calendar_sync::config::Config;

use crate::recovery::{private_cluster, remove_cluster};
use crate::support::*;

fn verify_full(port: u16, db: &str, ca: &std::path::Path) -> String {
    format!(
        "postgres://postgres@localhost:{port}/{db}?sslmode=verify-full&sslrootcert={}",
        ca.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_encrypts_and_verifies_both_connections() {
    let cluster = private_cluster("tls", "").await;
    let ca = cluster.enable_tls().expect("tls on");
    // The harness connects with the default sslmode=prefer: encrypted here.
    let db = TestDb::crm_in(&cluster).await;
    let mut cfg =
        Config::new(verify_full(cluster.port(), &db.name, &ca), &db.name).expect("config");
    cfg.publication = db.name.clone();
    calendar_sync::migrate::migrate(&cfg)
        .await
        .expect("migrate over TLS");
    let run = Running::start(cfg);
    wait_streaming(&db).await;
    let id = db.insert("Encrypted", "now()", "").await;
    db.wait_count(
        &format!("select count(*) from calendar_events where related_id = '{id}'"),
        1,
    )
    .await;
    // Every calendar-sync session, the walsender included, is encrypted.
    let sessions = db
        .count(
            "select count(*) from pg_stat_activity a join pg_stat_ssl s using (pid)
              where a.application_name like 'calendar-sync%' and s.ssl",
        )
        .await;
    let walsender = db
        .count(
            "select count(*) from pg_stat_activity a join pg_stat_ssl s using (pid)
              where a.application_name like 'calendar-sync%' and a.backend_type = 'walsender' and s.ssl",
        )
        .await;
    assert!(
        sessions >= 3 && walsender == 1,
        "{sessions} encrypted sessions, {walsender} walsender"
    );
    run.stop().await.expect("clean stop");
    remove_cluster(cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_server_certificate_is_fatal() {
    let cluster = private_cluster("tlsbad", "").await;
    let ca = cluster.enable_tls().expect("tls on");
    let db = TestDb::crm_in(&cluster).await;
    db.migrate().await;
    // A root that did not sign the server's certificate: the server's own
    // certificate, which is not a CA.
    let wrong = ca.with_file_name("server.crt");
    let mut cfg =
        Config::new(verify_full(cluster.port(), "tlsbad", &wrong), &db.name).expect("config");
    cfg.publication = db.name.clone();
    let mut run = Running::start(cfg);
    let (message, _hint) = fatal_of(&mut run, FatalKind::Config, Duration::from_secs(20)).await;
    assert!(
        message.to_lowercase().contains("certificate") || message.contains("tls"),
        "{message}"
    );
    remove_cluster(cluster).await;
}
