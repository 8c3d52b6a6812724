//! `client`: the REST and OAuth client for Bitrix24 — the only crate that
//! knows HTTP to Bitrix24 (BRIEF invariant 7), and nothing about the
//! database. Section numbers (§) refer to the protocol reference,
//! `bitrix24-protocol.md`.
//!
//! | module | what | main items |
//! |---|---|---|
//! | `client` | the call loop: refusals, refresh, limits, retries, renames | [`Client`], [`PortalClient`], [`CallOptions`], [`ClientStats`], [`is_read_method`] |
//! | `batch` | `batch` with chunking, references, `halt` (§5.15) | [`Batch`], [`BatchOutcome`], [`CommandOutcome`] |
//! | `list` | `list_all` streams, keyset and offset strategies (§6.1) | [`ListOptions`], [`ListStrategy`] |
//! | [`env`] | what the client needs from its environment | [`CredentialStore`], [`RateLimiter`], [`PortalTarget`], [`TokenSet`] |
//! | [`memory`] | in-process implementations of those | [`MemoryCredentialStore`], [`MemoryRateLimiter`] |
//! | `config` | every knob, the platform's numbers as defaults (§8) | [`ClientConfig`], [`OAuthApp`], [`AllowList`], [`RateConfig`], [`OperatingConfig`], [`RetryPolicy`], [`Timeouts`] |
//! | `clock` | the one clock; tests move it | [`Clock`] |
//! | `error` | the one error type; no secret in any variant | [`Error`], [`Confirmation`] |
//!
//! Secrets never reach a log line or an error (BRIEF invariant 4): tokens
//! travel only in request bodies, which are never logged; webhook URLs carry
//! their code, so only their host is ever shown.

mod batch;
mod client;
mod clock;
mod config;
pub mod env;
mod error;
mod list;
pub mod memory;
mod oauth;

pub use batch::{Batch, BatchOutcome, CommandOutcome, MAX_COMMANDS};
pub use client::{CallOptions, Client, ClientStats, PortalClient, is_read_method};
pub use clock::Clock;
pub use config::{
    AllowList, BreakerConfig, ClientConfig, MAX_REQUEST_TIMEOUT, OAuthApp, OperatingConfig,
    RateConfig, RetryPolicy, Timeouts,
};
pub use env::{
    Bucket, CredentialStore, EnvError, Plan, PortalTarget, RateLimiter, StoredCredentials,
    TokenSet, sha256_fingerprint,
};
pub use error::{Confirmation, Error, TransportKind};
pub use list::{ListOptions, ListStrategy, PAGE, supports_keyset};
pub use memory::{MemoryCredentialStore, MemoryRateLimiter};
pub use wire::{ApiError, Success, Time};
