//! One integration-test binary (compiles once), one module per behaviour.
//! Every test gets its own database and slot on the binary's own PostgreSQL.

mod support;

mod echo;
mod mapping;
mod process;
mod snapshot;
mod streaming;
mod target;
