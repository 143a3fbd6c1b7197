//! Barriers: customer/contact changes and TRUNCATE interaction, written after
//! the pending chunk so that every change sees the state before it.
//!
//! Participant names are kept in LSN order (`calendar_sync_party_names`, see
//! migration target/0002) and looked up there, as of the source transaction
//! being applied, not in the live source tables: a replay after an outage then
//! decides exactly as the first pass did. A rename refreshes `participants` of
//! every event showing it in one set-based statement (contract §3).

use tokio_postgres::types::PgLsn;
use uuid::Uuid;

use super::{db, Writer};
use crate::error::SyncError;
use crate::lsn::Lsn;
use crate::mapping::Action;
use crate::mapping::Outcome;
use crate::participants::Party;

impl Writer {
    /// A customer or contact was inserted or updated (`name`: its display
    /// name), or deleted: record the name and refresh `participants` of the
    /// events that show it.
    pub(super) async fn party_changed(
        &mut self,
        lsn: Lsn,
        party: Party,
        id: Uuid,
        name: Option<String>,
        deleted: bool,
    ) -> Result<(), SyncError> {
        self.ensure_open().await?;
        let refresh = match party {
            Party::Customer => &self.t.refresh_by_customer,
            Party::Contact => &self.t.refresh_by_contact,
        };
        // One round trip. The refresh finds the events by a non-unique key
        // (`customer_id` / `contact_id`): planned afresh each time (custom
        // plan, for this statement only), since a generic plan made while
        // `calendar_events` was small would scan all of it for every rename
        // (see `sql`'s module docs). Not for the whole session: the foreign
        // key checks of every event insert would be planned per row too.
        let t = &self.target;
        let party_name = party.as_str();
        let lsn = PgLsn::from(lsn);
        let record: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&party_name, &id, &name, &deleted];
        let by: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&id, &lsn];
        let (recorded, custom, updated, generic) = tokio::join!(
            t.execute(&self.t.record_party_name, &record),
            t.batch_execute("set local plan_cache_mode = force_custom_plan"),
            t.execute(refresh, &by),
            t.batch_execute("set local plan_cache_mode = auto"),
        );
        recorded.map_err(db("recording a customer/contact name"))?;
        custom.map_err(db("planning the participants refresh"))?;
        let updated = updated.map_err(db("refreshing participants"))?;
        generic.map_err(db("planning the participants refresh"))?;
        if updated > 0 {
            tracing::debug!(?party, %id, events = updated, "refreshed participants");
        }
        if let Some(b) = self.batch.as_mut() {
            b.count(Action::Update, Outcome::Success, updated);
        }
        Ok(())
    }

    /// TRUNCATE of interaction: every interaction event goes, one log row each.
    pub(super) async fn truncate(&mut self, lsn: Lsn) -> Result<(), SyncError> {
        self.ensure_open().await?;
        let n = self
            .target
            .execute(&self.t.truncate_events, &[&PgLsn::from(lsn)])
            .await
            .map_err(db("deleting events after TRUNCATE interaction"))?;
        tracing::info!(events = n, lsn = %lsn, "interaction truncated: deleted its events");
        if let Some(b) = self.batch.as_mut() {
            b.count(Action::Delete, Outcome::Success, n);
        }
        Ok(())
    }

    /// Initial snapshot: records a batch of names.
    pub async fn copy_party_names(
        &mut self,
        party: Party,
        ids: &[Uuid],
        names: &[Option<String>],
    ) -> Result<(), SyncError> {
        self.ensure_open().await?;
        self.target
            .execute(&self.t.copy_party_names, &[&party.as_str(), &ids, &names])
            .await
            .map_err(db("copying customer/contact names"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_party_reads_back_as_itself_and_nothing_else_is_one() {
        for p in [Party::Customer, Party::Contact] {
            assert_eq!(Party::parse(p.as_str()), Some(p));
        }
        assert_eq!(Party::parse("Contact"), None);
        assert_eq!(Party::parse(""), None);
    }
}
