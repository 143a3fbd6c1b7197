//! IO: the replication session. [`client`] holds the slot and snapshot logic,
//! [`runner`] the streaming loop and its reconnects.

pub mod client;
pub mod runner;

pub use runner::{run, Shutdown};
