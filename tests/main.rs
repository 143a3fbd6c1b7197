//! One integration-test binary (compiles once), one module per behaviour.
//! Every test gets its own database and slot on the binary's own PostgreSQL.

mod support;

mod mapping;
mod streaming;
