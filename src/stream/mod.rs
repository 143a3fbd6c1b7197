//! IO: the replication session. [`client`] holds the slot, its lock and the
//! start plan, [`snapshot`] the initial snapshot, [`preflight`] the checks of
//! the server and the publication, [`session`] a session from start to stop
//! and the reconnects, [`runner`] the streaming loop, [`acks`] what may be
//! reported as flushed, [`standby`] what a failover standby must have before
//! an acknowledgement, [`ownership`] whose the slot is, [`resync`] the
//! start-over.

pub mod acks;
pub mod client;
pub mod ownership;
pub mod preflight;
pub mod resync;
pub mod runner;
pub mod session;
pub mod snapshot;
pub mod standby;

pub use runner::Shutdown;
pub use session::run;
