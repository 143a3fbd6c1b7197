//! One integration-test binary (compiles once), one module per behaviour.
//! Every test gets its own database and slot on the binary's own PostgreSQL.

mod support;

mod batching;
mod concurrent_migrate;
mod crash;
mod deploy_files;
mod echo;
mod edge_paths;
mod failover;
mod failures;
mod fatal;
mod idle;
mod live_crm;
mod mapping;
mod ops;
mod pg_version;
mod plans;
mod process;
mod reconcile;
mod recovery;
mod relations;
mod replica_identity;
mod schema_change;
mod secrets;
mod slot_failover;
mod slot_lock;
mod slot_ownership;
mod snapshot;
mod status;
mod streaming;
mod target;
mod timeouts;
mod tls;
