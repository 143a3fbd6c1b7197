//! calendar-sync's own transactions: the echo protocol, in one place.
//!
//! Writing `interaction.calendar_synced_at` (the stamp, `apply::stamper`)
//! feeds the stream back to itself. Every transaction in which calendar-sync
//! writes to the source starts with [`MARKER`]: a transactional logical
//! message with prefix [`PREFIX`] whose content is a MAC of the transaction's
//! own id, `sha256(key || xid)`, with a key only calendar-sync's role can
//! read (`calendar_sync_echo_key`, migrations/source/0003). The stream
//! recomputes it from the Begin's xid ([`EchoKey::proves`]), so a transaction
//! is recognised as ours from the stream alone:
//!
//! - no lookup, so nothing depends on when the transaction becomes visible
//!   to other sessions (a commit is streamed before it leaves the process
//!   array, and on a Multi-AZ DB cluster while it waits for a standby: the
//!   lookup in `calendar_sync_echo` it replaces missed those, issue 13);
//! - nothing to prune, so a synchronized failover slot that replays older
//!   transactions on a promoted standby still recognises them;
//! - any role may emit the message, but without the key its content proves
//!   nothing: a CRM session cannot hide its changes.
//!
//! The MAC covers the 32-bit xid pgoutput's Begin carries, as 8 bytes
//! big-endian; key and message have fixed lengths, so the secret-prefix
//! construction has no length-extension weakness (a forger would need
//! `sha256(key || x)` for an 8-byte `x` it has not seen). Every consumer of a
//! database reads the same key: two consumers never echo each other.
//!
//! The [`crate::txn::Framer`] decides *when* a marker counts (first in its
//! transaction, before any change); this module decides *whether* it proves
//! the transaction is ours.

use ring::digest;
use tokio_postgres::Client;

use crate::error::{FatalKind, SyncError};

/// Prefix of the transactional logical message that marks our transactions.
pub const PREFIX: &str = "calendar_sync.echo";

/// The marker, as the first statement of each of our source transactions
/// (`$1` the prefix). Emits the message with the MAC computed in the server
/// (the key never travels), and returns one row; returns no row, and emits
/// nothing, when the key is missing, so the caller must check the row count
/// before it writes anything.
pub const MARKER: &str = "select pg_logical_emit_message(true, $1::text,
        sha256(k.key || int8send(pg_current_xact_id()::text::bigint % 4294967296)))
   from calendar_sync_echo_key k";

/// The key, read once per session by the stream.
#[derive(Clone)]
pub struct EchoKey([u8; 32]);

impl std::fmt::Debug for EchoKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EchoKey(..)")
    }
}

impl EchoKey {
    /// From the key's bytes (tests; [`EchoKey::load`] in the service).
    pub fn new(key: [u8; 32]) -> EchoKey {
        EchoKey(key)
    }

    /// Reads the key from the source.
    pub async fn load(source: &Client) -> Result<EchoKey, SyncError> {
        const HINT: &str = "reading calendar_sync_echo_key (has `calendar-sync migrate` run? calendar-sync's role needs select on it)";
        let row = source
            .query_opt("select key from calendar_sync_echo_key", &[])
            .await
            .map_err(|e| SyncError::db(HINT, e))?;
        let Some(row) = row else {
            return Err(SyncError::fatal(
                FatalKind::SchemaMissing,
                "calendar_sync_echo_key is empty: calendar-sync cannot mark its own transactions",
                "run `calendar-sync migrate` (it creates the key); do not delete the row",
            ));
        };
        let key: Vec<u8> = row.try_get(0).map_err(|e| SyncError::db(HINT, e))?;
        let key: [u8; 32] = key.try_into().map_err(|k: Vec<u8>| {
            SyncError::fatal(
                FatalKind::SchemaMissing,
                format!(
                    "calendar_sync_echo_key holds a key of {} bytes, expected 32",
                    k.len()
                ),
                "delete the row and run `calendar-sync migrate` to create a new key (stop every calendar-sync of this database first)",
            )
        })?;
        Ok(EchoKey(key))
    }

    /// The marker content for transaction `xid` (pgoutput Begin's xid).
    pub fn mac(&self, xid: u32) -> [u8; 32] {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&self.0);
        ctx.update(&u64::from(xid).to_be_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// Whether `content`, the message of transaction `xid`, proves it ours.
    pub fn proves(&self, xid: u32, content: &[u8]) -> bool {
        let mac = self.mac(xid);
        // Constant time: the content is attacker-controlled.
        content.len() == mac.len()
            && content
                .iter()
                .zip(mac.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mac_proves_its_own_xid_only() {
        let key = EchoKey::new([7; 32]);
        let mac = key.mac(42);
        assert!(key.proves(42, &mac));
        assert!(!key.proves(43, &mac), "another transaction");
        assert!(!EchoKey::new([8; 32]).proves(42, &mac), "another key");
        assert!(!key.proves(42, &mac[..31]), "truncated");
        assert!(!key.proves(42, b"some_slot_name"), "the old marker content");
        let mut longer = mac.to_vec();
        longer.push(0);
        assert!(!key.proves(42, &longer), "extended");
    }

    #[test]
    fn the_mac_is_sha256_of_key_and_the_xid_as_8_bytes_big_endian() {
        // What the server computes in MARKER: sha256(key || int8send(xid)).
        let key = EchoKey::new([0; 32]);
        let mut input = vec![0u8; 32];
        input.extend_from_slice(&[0, 0, 0, 0, 0, 0, 1, 2]);
        let expected = digest::digest(&digest::SHA256, &input);
        assert_eq!(key.mac(0x0102).as_slice(), expected.as_ref());
    }

    #[test]
    fn debug_never_shows_the_key() {
        assert_eq!(format!("{:?}", EchoKey::new([9; 32])), "EchoKey(..)");
    }
}
