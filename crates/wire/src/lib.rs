//! `wire`: the Bitrix24 wire formats and nothing else — no I/O, no async, and
//! no panic on any input.

pub mod form;
pub mod types;

pub use form::{FormError, FormMap, FormValue, Limits};
pub use types::{
    AccessToken, AppStatus, ApplicationToken, ClientSecret, Endpoint, EventName, InvalidValue,
    MemberId, PortalDomain, RefreshToken, Scope,
};
