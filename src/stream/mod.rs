//! IO: the replication session. [`client`] holds the slot and snapshot logic,
//! [`runner`] the streaming loop and its reconnects, [`echo`] the check that a
//! marked transaction is really calendar-sync's.

pub mod client;
pub mod echo;
pub mod resync;
pub mod runner;

pub use runner::{run, Shutdown};
