//! One module per BRIEF §6 scenario that can run today.

pub mod emulator;
pub mod fleet;
pub mod ingest;
pub mod offline_drain;
pub mod rest_bulk;
