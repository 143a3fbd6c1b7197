//! Parse the command line, set up logging, build the runtime, call the library.

use std::process::ExitCode;

use clap::Parser;
use tokio::sync::watch;

use calendar_sync::cli::{Cli, Command};
use calendar_sync::config::{Config, ConfigError, DbArgs, SyncArgs};
use calendar_sync::metrics::Metrics;
use calendar_sync::{demo, failures, http, migrate, reconcile, status, stream};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(if matches!(cli.command, Command::Demo) {
                    "warn"
                } else {
                    "info"
                })
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // `reconcile` keeps 1 for "drift found": its errors exit 2.
    let error_code = if matches!(cli.command, Command::Reconcile { .. }) {
        2
    } else {
        1
    };
    match runtime.block_on(try_main(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(error_code)
        }
    }
}

async fn try_main(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Reconcile {
        db,
        sync,
        dry_run,
        json,
    } = cli.command
    {
        let cfg = config(db, Some(sync))?;
        let report = reconcile::reconcile(&cfg, dry_run).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!("{report}");
        }
        return Ok(ExitCode::from(report.exit_code()));
    }
    try_command(cli).await.map(|()| ExitCode::SUCCESS)
}

async fn try_command(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo => demo::run().await,
        Command::Migrate { db } => {
            let cfg = config(db, None)?;
            let report = migrate::migrate(&cfg).await?;
            println!(
                "migrations applied: {}; publication {}: {}",
                if report.applied.is_empty() {
                    "none (up to date)".to_string()
                } else {
                    report.applied.join(", ")
                },
                cfg.publication,
                if report.publication_created {
                    "created"
                } else {
                    "exists"
                }
            );
            Ok(())
        }
        Command::Run { db, sync, resync } => {
            let mut cfg = config(db, Some(sync))?;
            cfg.resync = resync;
            let (stop_tx, stop_rx) = watch::channel(false);
            let metrics = Metrics::new();
            let http = match cfg.http_addr {
                Some(addr) => {
                    let listener = http::bind(addr).await.map_err(|e| {
                        anyhow::anyhow!("cannot listen on CALENDAR_SYNC_HTTP_ADDR={addr}: {e}")
                    })?;
                    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
                    Some(tokio::spawn(http::serve(
                        listener,
                        metrics.clone(),
                        stop_rx.clone(),
                    )))
                }
                None => None,
            };
            let signals = tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("stop requested (SIGTERM/SIGINT): finishing");
                let _ = stop_tx.send(true);
            });
            let result = stream::run(&cfg, stop_rx, metrics).await;
            signals.abort();
            if let Some(h) = http {
                h.abort();
            }
            result?;
            Ok(())
        }
        Command::Failures { db, action } => {
            let cfg = config(db, None)?;
            failures::run(&cfg, action).await?;
            Ok(())
        }
        Command::Status { db, json } => {
            let cfg = config(db, None)?;
            let s = status::status(&cfg).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("{s}");
            }
            Ok(())
        }
        Command::Reconcile { .. } => Ok(()),
    }
}

/// The validated configuration; warns once about connections that do not
/// verify the server.
fn config(db: DbArgs, sync: Option<SyncArgs>) -> Result<Config, ConfigError> {
    let cfg = Config::from_args(db, sync)?;
    for warning in cfg.tls_warnings() {
        tracing::warn!("{warning}");
    }
    Ok(cfg)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
