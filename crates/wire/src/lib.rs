//! `wire`: the Bitrix24 wire formats and nothing else — no I/O, no async, and
//! no panic on any input.

pub mod types;

pub use types::{
    AccessToken, ApplicationToken, ClientSecret, EventName, InvalidValue, MemberId, PortalDomain,
    RefreshToken, Scope,
};
