//! `engine`: the b24gate lifecycle. Today it holds the manifest — the
//! configuration that says what every portal should have — and its loader;
//! install, probe, reconcile, update, uninstall and the job runner build on it.

pub mod config;

pub use config::{Config, ConfigError, Secrets};
