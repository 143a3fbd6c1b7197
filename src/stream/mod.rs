//! IO: the replication session. [`client`] holds the slot, its lock and the
//! start plan, [`snapshot`] the initial snapshot, [`preflight`] the checks of
//! the server and the publication, [`runner`] the streaming loop and its
//! reconnects, [`standby`] what a failover standby must have before an
//! acknowledgement.

pub mod acks;
pub mod client;
pub mod ownership;
pub mod preflight;
pub mod resync;
pub mod runner;
pub mod snapshot;
pub mod standby;

pub use runner::{run, Shutdown};
