//! Parse the command line, set up logging, build the runtime, call the library.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio::sync::watch;

use calendar_sync::cli::{Cli, Command, LogFormat};
use calendar_sync::config::{Config, ConfigError, DbArgs, SyncArgs};
use calendar_sync::error::SyncError;
use calendar_sync::metrics::Metrics;
use calendar_sync::{demo, failures, healthcheck, http, migrate, reconcile, status, stream};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if matches!(cli.command, Command::Demo) {
            "warn"
        } else {
            "info"
        })
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().with_ansi(false).init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
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
            report_fatal(format, &e);
            ExitCode::from(error_code)
        }
    }
}

/// The error that ends the process: as text (`error: ...` and the hint on
/// its own line), or as one JSON log line with `error`, `kind`
/// ([`calendar_sync::error::FatalKind::as_str`]) and `hint` fields.
fn report_fatal(format: LogFormat, e: &anyhow::Error) {
    match format {
        LogFormat::Text => eprintln!("error: {e:#}"),
        LogFormat::Json => match e.downcast_ref::<SyncError>() {
            Some(SyncError::Fatal {
                message,
                hint,
                kind,
            }) => {
                tracing::error!(error = %message, kind = kind.as_str(), hint = %hint, "fatal error: stopping");
            }
            _ => tracing::error!(error = %format!("{e:#}"), "fatal error: stopping"),
        },
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
    try_command(cli).await
}

async fn try_command(cli: Cli) -> anyhow::Result<ExitCode> {
    let format = cli.log_format;
    match cli.command {
        Command::Demo => demo::run().await.map(|()| ExitCode::SUCCESS),
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
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { db, sync, resync } => {
            let mut cfg = config(db, Some(sync))?;
            cfg.resync = resync;
            let (stop_tx, stop_rx) = watch::channel(false);
            let metrics = Metrics::new();
            metrics.set_liveness_limit(cfg.liveness);
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
            let stopping = metrics.clone();
            let signals = tokio::spawn(async move {
                wait_for_signal().await;
                stopping.set_stopping();
                tracing::info!("stop requested (SIGTERM/SIGINT): finishing");
                let _ = stop_tx.send(true);
            });
            let result = stream::run(&cfg, stop_rx, metrics).await;
            signals.abort();
            if let Some(h) = http {
                h.abort();
            }
            result?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Failures { db, action } => {
            let cfg = config(db, None)?;
            failures::run(&cfg, action).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            db,
            json,
            max_lag_seconds,
        } => {
            // Whatever keeps status from reading the databases is "broken" (2).
            let read = async {
                let cfg = config(db, None)?;
                anyhow::Ok(status::status(&cfg, max_lag_seconds).await?)
            };
            match read.await {
                Ok(s) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&s)?);
                    } else {
                        println!("{s}");
                    }
                    Ok(ExitCode::from(s.health.exit_code()))
                }
                Err(e) => {
                    if json {
                        let v = status::unreachable(&format!("{e:#}"));
                        println!("{}", serde_json::to_string_pretty(&v)?);
                    } else {
                        println!("health           broken");
                    }
                    report_fatal(format, &e);
                    Ok(ExitCode::from(status::Health::Broken.exit_code()))
                }
            }
        }
        Command::Healthcheck {
            http_addr,
            timeout_secs,
        } => {
            let Some(addr) = http_addr else {
                eprintln!("unhealthy: CALENDAR_SYNC_HTTP_ADDR is not set (the address `run` serves /healthz on)");
                return Ok(ExitCode::from(1));
            };
            match healthcheck::check(addr, Duration::from_secs(timeout_secs.max(1))).await {
                Ok(()) => {
                    println!("healthy: http://{addr}/healthz answered 200");
                    Ok(ExitCode::SUCCESS)
                }
                Err(reason) => {
                    eprintln!("unhealthy: {reason}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Reconcile { .. } => Ok(ExitCode::SUCCESS),
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
