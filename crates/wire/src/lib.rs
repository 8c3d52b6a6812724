//! `wire`: the Bitrix24 wire formats and nothing else — no I/O, no async, and
//! no panic on any input. Section numbers (§) refer to the protocol
//! reference, `bitrix24-protocol.md`.
//!
//! | module | what | main items |
//! |---|---|---|
//! | [`form`] | PHP-style form bodies (`http_build_query` / `parse_str`) | [`form::decode`], [`form::encode`], [`FormMap`], [`FormValue`], [`Limits`], [`FormError`] |
//! | [`event`] | event deliveries (§2, §3.7, §4) | [`Event::parse`], [`EventAuth`], [`UserAuth`], [`EventData`] |
//! | [`install`] | the iframe POST to installer, app page and widgets (§3.5) | [`AppPagePost::parse`] |
//! | [`rest`] | REST envelopes, `batch`, OAuth token answers (§5.15, §6, §7.3) | [`rest::parse_response`], [`rest::parse_token_response`], [`Success`], [`ApiError`], [`BatchResult`], [`TokenResponse`], [`RestError`] |
//! | [`errors`] | the error catalogue and what to do about each code (§6.3, §7.5) | [`ErrorCode`], [`ErrorClass`] |
//! | [`types`] | domain newtypes that parse; secrets that redact themselves | [`MemberId`], [`PortalDomain`], [`EventName`], [`Scope`], [`Endpoint`], [`AppStatus`], [`ApplicationToken`], [`AccessToken`], [`RefreshToken`], [`ClientSecret`] |
//!
//! Event and app-page errors share one type, [`PayloadError`] (aliases
//! [`EventError`], [`InstallError`]): it names the wire field and never
//! carries a value.

pub mod errors;
pub mod event;
pub mod form;
pub mod install;
mod payload;
pub mod rest;
pub mod types;

pub use errors::{ErrorClass, ErrorCode};
pub use event::{
    AppInstall, AppMethodConfirm, AppPayment, AppTest, AppUninstall, AppUpdate, Event, EventAuth,
    EventData, UserAuth,
};
pub use form::{FormError, FormMap, FormValue, Limits};
pub use install::AppPagePost;
pub use payload::{EventError, InstallError, PayloadError};
pub use rest::{ApiError, BatchResult, RestError, Success, Time, TokenResponse};
pub use types::{
    AccessToken, AppStatus, ApplicationToken, ClientSecret, Endpoint, EventName, InvalidValue,
    MemberId, PortalDomain, RefreshToken, Scope,
};
