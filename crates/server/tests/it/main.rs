//! The server driven over real HTTP on loopback, on a real SQLite store.

mod helpers;
mod hostile;
mod ingest;
mod observability;
