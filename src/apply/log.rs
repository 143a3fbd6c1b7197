//! `calendar_sync_log` and `calendar_sync_failures` writes.

use tokio_postgres::types::PgLsn;
use tokio_postgres::Client;
use uuid::Uuid;

use super::sql::TargetStatements;
use crate::lsn::Lsn;
use crate::mapping::Action;
use crate::metrics::Status;

#[allow(clippy::too_many_arguments)]
pub(super) async fn insert_log(
    c: &Client,
    t: &TargetStatements,
    interaction: Uuid,
    event: Option<Uuid>,
    action: Action,
    status: Status,
    error: Option<&str>,
    by: Uuid,
    lsn: Lsn,
) -> Result<(), tokio_postgres::Error> {
    c.execute(
        &t.insert_log,
        &[
            &interaction,
            &event,
            &action.as_str(),
            &status.as_str(),
            &error,
            &by,
            &PgLsn::from(lsn),
        ],
    )
    .await
    .map(|_| ())
}

/// Opens the interaction's failure, or updates its open one (contract §7).
pub(super) async fn record_failure(
    c: &Client,
    t: &TargetStatements,
    interaction: Uuid,
    action: Action,
    message: &str,
    retry: bool,
) -> Result<(), tokio_postgres::Error> {
    let stack: Option<&str> = None;
    c.execute(
        &t.record_failure,
        &[&interaction, &action.as_str(), &message, &stack, &retry],
    )
    .await
    .map(|_| ())
}
