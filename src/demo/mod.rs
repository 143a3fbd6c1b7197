//! `calendar-sync demo`: a throw-away PostgreSQL, a small CRM, the sync running,
//! and the calendar printed as interactions change. The interactions are on
//! the coming days at fixed times of day in UTC, the zone the demo prints
//! (issue 15, point 7): a newcomer's first screen shows a review at 10:00,
//! not at whatever hour the demo happened to start.

use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::Client;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::pgcluster::LocalCluster;
use crate::{db, migrate, stream};

/// The starting CRM schema (seed "Existing Tables" + an updated_at trigger).
pub const CRM_SCHEMA: &str = include_str!("crm_schema.sql");

const DEMO_DATA: &str = "
insert into users (user_id, email) values ('00000000-0000-4000-8000-000000000001', 'sam@example.com');
insert into customer (customer_id, name) values
  ('00000000-0000-4000-8000-0000000000c1', 'Acme Corp'),
  ('00000000-0000-4000-8000-0000000000c2', 'Globex');
insert into contact (contact_id, customer_id, first_name, last_name, email) values
  ('00000000-0000-4000-8000-0000000000d1', '00000000-0000-4000-8000-0000000000c1', 'Ada', 'Lovelace', 'ada@acme.test');
insert into interaction (interaction_type, subject, interaction_date, customer_id, contact_id, location,
                         duration_minutes, private_notes, created_by) values
  ('meeting', 'Quarterly review', (date_trunc('day', now() at time zone 'UTC') + interval '2 days 10 hours') at time zone 'UTC', '00000000-0000-4000-8000-0000000000c1',
   '00000000-0000-4000-8000-0000000000d1', 'Acme HQ', 60, 'never shown', '00000000-0000-4000-8000-000000000001'),
  ('phone', 'Renewal call', (date_trunc('day', now() at time zone 'UTC') + interval '1 day 12 hours') at time zone 'UTC', '00000000-0000-4000-8000-0000000000c2',
   null, null, 15, null, '00000000-0000-4000-8000-000000000001'),
  ('visit', 'Old visit (outside the 30-day window)', (date_trunc('day', now() at time zone 'UTC') - interval '90 days' + interval '10 hours') at time zone 'UTC', '00000000-0000-4000-8000-0000000000c2',
   null, 'Globex plant', 0, null, '00000000-0000-4000-8000-000000000001');
";

/// Runs the demo end to end; prints to stdout.
pub async fn run() -> anyhow::Result<()> {
    println!("Starting a throw-away PostgreSQL (wal_level=logical) ...");
    let cluster = tokio::task::spawn_blocking(|| LocalCluster::start("demo", "")).await??;
    let admin = db::connect(
        &crate::config::SecretUrl::new(cluster.url("postgres")),
        "demo admin",
    )
    .await?;
    admin.batch_execute("create database crm").await?;
    let url = cluster.url("crm");
    let crm = db::connect(&crate::config::SecretUrl::new(url.clone()), "demo CRM").await?;
    crm.batch_execute(CRM_SCHEMA).await?;
    crm.batch_execute(DEMO_DATA).await?;
    println!("Loaded a small CRM: 2 customers, 1 contact, 3 interactions (one 90 days old).\n");

    let cfg = Config::new(url, "calendar_sync")?;
    let report = migrate::migrate(&cfg).await?;
    println!(
        "$ calendar-sync migrate   -> applied {:?}, publication created: {}",
        report.applied, report.publication_created
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let metrics = Metrics::new();
    let runner = {
        let cfg = cfg.clone();
        tokio::spawn(async move { stream::run(&cfg, stop_rx, metrics).await })
    };
    println!("$ calendar-sync run       -> slot created, existing interactions copied from its snapshot\n");
    wait_for_log_rows(&crm, 2).await?;
    print_calendar(
        &crm,
        "After the initial snapshot (the 90-day-old visit stays out)",
    )
    .await?;

    crm.batch_execute(
        "insert into interaction (interaction_type, subject, interaction_date, customer_id, duration_minutes, created_by)
         values ('visit', 'Site visit', (date_trunc('day', now() at time zone 'UTC') + interval '3 days 9 hours') at time zone 'UTC',
                 '00000000-0000-4000-8000-0000000000c2', 90, '00000000-0000-4000-8000-000000000001')",
    )
    .await?;
    wait_for_log_rows(&crm, 3).await?;
    print_calendar(&crm, "INSERT interaction 'Site visit'  -> create").await?;

    // To 14:00 UTC of the same day (the demo's zone is UTC): the title and the
    // calendar's start_time agree.
    crm.batch_execute("update interaction set subject = 'Quarterly review (moved to 14:00)', interaction_date = (date_trunc('day', interaction_date at time zone 'UTC') + interval '14 hours') at time zone 'UTC' where subject = 'Quarterly review'").await?;
    wait_for_log_rows(&crm, 4).await?;
    print_calendar(&crm, "UPDATE subject and time         -> update").await?;

    crm.batch_execute("update customer set name = 'Acme Corporation' where name = 'Acme Corp'")
        .await?;
    wait_for_log_rows(&crm, 5).await?;
    print_calendar(
        &crm,
        "UPDATE customer name            -> participants refreshed",
    )
    .await?;

    crm.batch_execute("update interaction set archived = true where subject = 'Renewal call'")
        .await?;
    wait_for_log_rows(&crm, 6).await?;
    print_calendar(&crm, "Archive 'Renewal call'          -> cancel").await?;

    crm.batch_execute("delete from interaction where subject = 'Site visit'")
        .await?;
    wait_for_log_rows(&crm, 7).await?;
    print_calendar(&crm, "DELETE 'Site visit'             -> hard delete").await?;

    let log = crm
        .query(
            "select action, status, count(*) from calendar_sync_log group by 1, 2 order by 1, 2",
            &[],
        )
        .await?;
    println!("calendar_sync_log:");
    for r in log {
        println!(
            "  {:<8} {:<8} {}",
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, i64>(2)
        );
    }
    let _ = stop_tx.send(true);
    runner.await??;
    drop(cluster);
    println!("\nStopped the sync and removed the throw-away cluster.");
    Ok(())
}

async fn wait_for_log_rows(c: &Client, n: i64) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let have: i64 = c
            .query_one("select count(*) from calendar_sync_log", &[])
            .await?
            .get(0);
        if have >= n {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the calendar did not change within 30 s (expected {n} log rows, have {have}); see the log above");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn print_calendar(c: &Client, heading: &str) -> anyhow::Result<()> {
    let rows = c
        .query(
            "select title, to_char(event_date at time zone 'UTC', 'YYYY-MM-DD'), to_char(start_time, 'HH24:MI'),
                    coalesce(to_char(end_time, 'HH24:MI'), 'all day'), event_status, array_to_string(participants, ', ')
               from calendar_events order by event_date",
            &[],
        )
        .await?;
    println!("== {heading}");
    println!(
        "   {:<36} {:<10} {:<13} {:<9} participants",
        "title", "date", "time", "status"
    );
    for r in &rows {
        let time = format!("{}-{}", r.get::<_, String>(2), r.get::<_, String>(3));
        println!(
            "   {:<36} {:<10} {:<13} {:<9} {}",
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            time,
            r.get::<_, String>(4),
            r.get::<_, String>(5)
        );
    }
    if rows.is_empty() {
        println!("   (no events)");
    }
    println!();
    Ok(())
}
