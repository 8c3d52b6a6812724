//! The server driven over real HTTP on loopback, on a real SQLite store.

mod helpers;
mod ingest;
mod observability;
