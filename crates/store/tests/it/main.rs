//! The store conformance suite: every test in a `conformance!` list runs once
//! against SQLite (`…::sqlite::name`) and once against PostgreSQL
//! (`…::postgres::name`, URL from `B24GATE_TEST_PG_URL`).

mod common;

mod audit;
mod credentials;
mod inbox;
mod jobs;
mod migrations;
mod portal_cache;
mod portals;
mod progress;
mod rate;
mod secrets_at_rest;
