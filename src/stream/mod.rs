//! IO: the replication session. [`client`] holds the slot, its lock and the
//! start plan, [`snapshot`] the initial snapshot, [`preflight`] the checks of
//! the server and the publication, [`runner`] the streaming loop and its
//! reconnects, [`echo`] the check that a marked transaction is really
//! calendar-sync's.

pub mod client;
pub mod echo;
pub mod preflight;
pub mod resync;
pub mod runner;
pub mod snapshot;

pub use runner::{run, Shutdown};
