//! Participant names, kept in LSN order (`calendar_sync_party_names`, see
//! migration target/0002), and the refresh of `participants` after a customer
//! or contact changed (contract §3: "A rename of a customer or contact
//! refreshes `participants` of its events").
//!
//! Names are looked up in the target, as of the source transaction being
//! applied, not in the live source tables: a replay after an outage then
//! decides exactly as the first pass did. The refresh is one set-based
//! statement per changed customer or contact, however many events show it.

use tokio_postgres::types::PgLsn;
use uuid::Uuid;

use super::{db, Applier, TxnState};
use crate::changes::Party;
use crate::error::SyncError;
use crate::mapping::Action;
use crate::metrics::Status;

impl Party {
    /// `calendar_sync_party_names.party`.
    pub fn as_str(self) -> &'static str {
        match self {
            Party::Customer => "customer",
            Party::Contact => "contact",
        }
    }
}

impl Applier {
    /// A customer or contact was inserted or updated (`name`: its display
    /// name), or deleted (`deleted`): record the name and refresh
    /// `participants` of the events that show it.
    pub async fn party_changed(
        &mut self,
        party: Party,
        id: Uuid,
        name: Option<String>,
        deleted: bool,
    ) -> Result<(), SyncError> {
        let (lsn, _) = self.ensure_target_txn().await?;
        let result = if deleted {
            self.target
                .execute(&self.t.delete_party_name, &[&party.as_str(), &id])
                .await
        } else {
            self.target
                .execute(&self.t.upsert_party_name, &[&party.as_str(), &id, &name])
                .await
        };
        result.map_err(db("recording a customer/contact name"))?;
        let refresh = match party {
            Party::Customer => &self.t.refresh_by_customer,
            Party::Contact => &self.t.refresh_by_contact,
        };
        let updated = self
            .target
            .execute(refresh, &[&id, &PgLsn::from(lsn)])
            .await
            .map_err(db("refreshing participants"))?;
        if updated > 0 {
            tracing::debug!(?party, %id, events = updated, "refreshed participants");
        }
        if let TxnState::Open { counts, .. } = &mut self.state {
            counts.extend(std::iter::repeat_n(
                (Action::Update, Status::Success),
                updated as usize,
            ));
        }
        Ok(())
    }

    /// The display names of a customer and a contact, as of the transaction
    /// being applied.
    pub(super) async fn lookup_names(
        &self,
        customer: Option<Uuid>,
        contact: Option<Uuid>,
    ) -> Result<(Option<String>, Option<String>), tokio_postgres::Error> {
        if customer.is_none() && contact.is_none() {
            return Ok((None, None));
        }
        let r = self
            .target
            .query_one(&self.t.party_names, &[&customer, &contact])
            .await?;
        Ok((r.get(0), r.get(1)))
    }

    /// Initial snapshot: records a batch of names.
    pub async fn copy_party_names(
        &mut self,
        party: Party,
        ids: &[Uuid],
        names: &[Option<String>],
    ) -> Result<(), SyncError> {
        self.ensure_target_txn().await?;
        self.target
            .execute(&self.t.copy_party_names, &[&party.as_str(), &ids, &names])
            .await
            .map_err(db("copying customer/contact names"))?;
        Ok(())
    }
}
