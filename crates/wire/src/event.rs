//! Event deliveries (protocol §2): a form-encoded POST with `event`,
//! `event_handler_id`, `ts`, `auth[…]` and `data[…]`.
//!
//! [`Event::parse`] checks the envelope and the `auth` fields against the
//! presence matrix of §2.4, and types `data` for the lifecycle events (§3.7,
//! §4). Any other event keeps its `data` as a [`FormValue`] tree.
//!
//! Presence decisions, where the reference leaves room:
//!
//! - `auth[application_token]` is required — it is the only authenticity
//!   check for token-less events (§2.7) — except for ONAPPPAYMENT, whose
//!   docs example omits it (§2.4, §4.4).
//! - The user token set (`access_token`, `expires`, `expires_in`, `scope`,
//!   `user_id`, `status`) is read when `auth[access_token]` is present, and
//!   then all six are required: they are generated together (§2.3). Events
//!   triggered by a robot or agent have none (§2.3), so [`EventAuth::user`]
//!   is `None`.
//! - For ONAPPUNINSTALL and ONAPPMETHODCONFIRM (`sendAuth=false`, §4.2,
//!   §4.3) tokens are **ignored** if present, not rejected: rejecting would
//!   drop an uninstall that is never retried (§2.6), while ignoring
//!   guarantees nothing downstream stores a token the protocol says cannot
//!   exist.
//! - `auth[refresh_token]` is read only for ONAPPINSTALL, ONAPPUPDATE,
//!   ONAPPTEST and ONOFFLINEEVENT (`sendRefreshToken`, §2.3) and is then
//!   required with the user token set; elsewhere it is ignored (including the
//!   undocumented `OnSubscriptionRenew`, §4.7).
//! - `event_handler_id` is optional: it is diagnostic, and refusing a
//!   delivery for it would lose the event for good (§2.6). `ts` is required.

use std::fmt;

use crate::form::{self, FormMap, FormValue, Limits};
use crate::payload::{EventError, Fields, int, invalid};
use crate::types::{
    AccessToken, AppStatus, ApplicationToken, Endpoint, EventName, MemberId, PortalDomain,
    RefreshToken, Scope,
};

pub const ONAPPINSTALL: &str = "ONAPPINSTALL";
pub const ONAPPUPDATE: &str = "ONAPPUPDATE";
pub const ONAPPUNINSTALL: &str = "ONAPPUNINSTALL";
pub const ONAPPMETHODCONFIRM: &str = "ONAPPMETHODCONFIRM";
pub const ONAPPPAYMENT: &str = "ONAPPPAYMENT";
pub const ONAPPTEST: &str = "ONAPPTEST";
pub const ONOFFLINEEVENT: &str = "ONOFFLINEEVENT";

/// One decoded, checked delivery.
#[derive(Clone)]
pub struct Event {
    /// `event`, upper-cased.
    pub name: EventName,
    /// `event_handler_id`: the binding row that produced this delivery.
    pub handler_id: Option<u64>,
    /// `ts`: Unix time the portal queued the event (§2.2).
    pub ts: u64,
    pub auth: EventAuth,
    pub data: EventData,
    raw: FormMap,
}

/// The `auth[…]` fields (§2.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventAuth {
    /// The portal's stable key: survives domain renames (§7.7).
    pub member_id: MemberId,
    pub domain: PortalDomain,
    /// `https://<portal>/rest/`: where REST calls go.
    pub client_endpoint: Endpoint,
    /// The OAuth server's REST base; the token URL derives from it (§7.1).
    pub server_endpoint: Endpoint,
    /// Always present except possibly for ONAPPPAYMENT (see module docs).
    pub application_token: Option<ApplicationToken>,
    /// The token set of the user on whose behalf the event fired; `None`
    /// for robot/agent-triggered events and token-less lifecycle events.
    pub user: Option<UserAuth>,
}

/// The user token set of an event (§2.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserAuth {
    pub access_token: AccessToken,
    /// Absolute expiry, Unix time (undocumented but always sent, §2.3).
    pub expires: u64,
    /// Lifetime in seconds (3600).
    pub expires_in: u64,
    /// Comma-separated on the wire.
    pub scope: Vec<Scope>,
    /// The Bitrix24 user the token belongs to.
    pub user_id: u64,
    pub status: AppStatus,
    /// Only for the four `sendRefreshToken` events, where it is required.
    pub refresh_token: Option<RefreshToken>,
}

/// `data`, typed by event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventData {
    AppInstall(AppInstall),
    AppUpdate(AppUpdate),
    AppUninstall(AppUninstall),
    AppMethodConfirm(AppMethodConfirm),
    AppPayment(AppPayment),
    AppTest(AppTest),
    /// ONOFFLINEEVENT: "new rows in your offline queue"; its `data` is
    /// empty or absent (§4.6) and is still reachable via [`Event::raw_data`].
    OfflineEvent,
    /// Any other event: `data` as sent (`None` when absent).
    Other(Option<FormValue>),
}

/// ONAPPINSTALL `data` (§3.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppInstall {
    /// Text: docs show `1.0.0`, the module source an integer (§3.7).
    pub version: String,
    pub active: bool,
    /// Whether installation finished; `Y` in practice (§3.7).
    pub installed: bool,
    pub language_id: Option<String>,
}

/// ONAPPUPDATE `data` (§4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppUpdate {
    pub version: String,
    pub previous_version: String,
    pub language_id: Option<String>,
}

/// ONAPPUNINSTALL `data` (§4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppUninstall {
    /// The admin ticked "delete application data". An absent `CLEAN` reads
    /// as `false`: keeping data is the reversible choice.
    pub clean: bool,
    pub language_id: Option<String>,
}

/// ONAPPMETHODCONFIRM `data` (§4.3, §9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppMethodConfirm {
    /// The access token the decision is bound to (a secret).
    pub token: AccessToken,
    pub method: String,
    pub confirmed: bool,
    pub language_id: Option<String>,
}

/// ONAPPPAYMENT `data` (§4.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppPayment {
    /// The app's market code.
    pub code: String,
    pub version: String,
    pub status: AppStatus,
    pub payment_expired: bool,
    /// Days left; negative after expiry.
    pub days: i64,
    pub language_id: Option<String>,
}

/// ONAPPTEST `data` (§4.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppTest {
    /// The parameters given to `event.test`; `None` when there were none.
    pub query: Option<FormValue>,
    pub language_id: Option<String>,
}

impl Event {
    /// Decodes and checks a delivery body.
    pub fn parse(body: &[u8], limits: &Limits) -> Result<Event, EventError> {
        Event::from_form(form::decode(body, limits)?)
    }

    /// Checks an already decoded body.
    pub fn from_form(raw: FormMap) -> Result<Event, EventError> {
        let top = Fields::new(&raw);
        let name = top.req_with("event", "event", EventName::parse)?;
        let handler_id = top.opt_uint("event_handler_id", "event_handler_id")?;
        let ts = top.req_uint("ts", "ts")?;
        let auth = parse_auth(&raw, name.as_str())?;
        let data = parse_data(&raw, name.as_str())?;
        Ok(Event {
            name,
            handler_id,
            ts,
            auth,
            data,
            raw,
        })
    }

    /// The whole decoded body, as sent. It contains the tokens: never log it.
    pub fn raw(&self) -> &FormMap {
        &self.raw
    }

    /// `data` as sent; `None` when absent.
    pub fn raw_data(&self) -> Option<&FormValue> {
        self.raw.get("data")
    }

    /// `data` as canonical JSON (keys sorted, see
    /// [`FormValue::canonical_json`]); `null` when absent. Two deliveries of
    /// the same change give the same string, whatever their field order, so
    /// it can feed a dedupe key — hash it first: ONAPPMETHODCONFIRM's `data`
    /// contains an access token.
    pub fn canonical_data(&self) -> String {
        self.raw_data()
            .map_or_else(|| "null".to_owned(), FormValue::canonical_json)
    }
}

impl fmt::Debug for Event {
    // `raw` is left out: it holds the tokens that the typed fields redact.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("name", &self.name)
            .field("handler_id", &self.handler_id)
            .field("ts", &self.ts)
            .field("auth", &self.auth)
            .field("data", &self.data)
            .finish_non_exhaustive()
    }
}

fn parse_auth(raw: &FormMap, event: &str) -> Result<EventAuth, EventError> {
    let a = Fields::nested(raw, "auth", "auth")?;
    let member_id = a.req_with("member_id", "auth[member_id]", MemberId::parse)?;
    let domain = a.req_with("domain", "auth[domain]", PortalDomain::parse)?;
    let client_endpoint =
        a.req_with("client_endpoint", "auth[client_endpoint]", Endpoint::parse)?;
    let server_endpoint =
        a.req_with("server_endpoint", "auth[server_endpoint]", Endpoint::parse)?;
    let application_token = if event == ONAPPPAYMENT {
        a.opt_with(
            "application_token",
            "auth[application_token]",
            ApplicationToken::parse,
        )?
    } else {
        Some(a.req_with(
            "application_token",
            "auth[application_token]",
            ApplicationToken::parse,
        )?)
    };
    let tokens_allowed = !matches!(event, ONAPPUNINSTALL | ONAPPMETHODCONFIRM);
    let refresh_allowed = matches!(
        event,
        ONAPPINSTALL | ONAPPUPDATE | ONAPPTEST | ONOFFLINEEVENT
    );
    // Checked only where tokens may exist, so that an ignored token cannot
    // fail the event by being malformed either.
    let has_token = tokens_allowed && a.opt("access_token", "auth[access_token]")?.is_some();
    let user = if has_token {
        Some(UserAuth {
            access_token: a.req_with("access_token", "auth[access_token]", AccessToken::parse)?,
            expires: a.req_uint("expires", "auth[expires]")?,
            expires_in: a.req_uint("expires_in", "auth[expires_in]")?,
            scope: a.req_with("scope", "auth[scope]", Scope::parse_list)?,
            user_id: a.req_uint("user_id", "auth[user_id]")?,
            status: a.req_with("status", "auth[status]", AppStatus::parse)?,
            refresh_token: if refresh_allowed {
                Some(a.req_with("refresh_token", "auth[refresh_token]", RefreshToken::parse)?)
            } else {
                None
            },
        })
    } else {
        None
    };
    Ok(EventAuth {
        member_id,
        domain,
        client_endpoint,
        server_endpoint,
        application_token,
        user,
    })
}

fn parse_data(raw: &FormMap, event: &str) -> Result<EventData, EventError> {
    let d = Fields::nested(raw, "data", "data");
    // Unknown events may send anything as `data`; only lifecycle events
    // must have named fields.
    let lifecycle = matches!(
        event,
        ONAPPINSTALL | ONAPPUPDATE | ONAPPUNINSTALL | ONAPPMETHODCONFIRM | ONAPPPAYMENT | ONAPPTEST
    );
    if !lifecycle {
        return Ok(match event {
            ONOFFLINEEVENT => EventData::OfflineEvent,
            _ => EventData::Other(raw.get("data").cloned()),
        });
    }
    let d = d?;
    let lang = |d: &Fields<'_>| d.opt_lang("LANGUAGE_ID", "data[LANGUAGE_ID]");
    Ok(match event {
        ONAPPINSTALL => EventData::AppInstall(AppInstall {
            version: d.req("VERSION", "data[VERSION]")?.to_owned(),
            active: d.req_flag("ACTIVE", "data[ACTIVE]")?,
            installed: d.req_flag("INSTALLED", "data[INSTALLED]")?,
            language_id: lang(&d)?,
        }),
        ONAPPUPDATE => EventData::AppUpdate(AppUpdate {
            version: d.req("VERSION", "data[VERSION]")?.to_owned(),
            previous_version: d
                .req("PREVIOUS_VERSION", "data[PREVIOUS_VERSION]")?
                .to_owned(),
            language_id: lang(&d)?,
        }),
        ONAPPUNINSTALL => EventData::AppUninstall(AppUninstall {
            clean: d.opt_flag("CLEAN", "data[CLEAN]")?.unwrap_or(false),
            language_id: lang(&d)?,
        }),
        ONAPPMETHODCONFIRM => EventData::AppMethodConfirm(AppMethodConfirm {
            token: d.req_with("TOKEN", "data[TOKEN]", AccessToken::parse)?,
            method: d.req("METHOD", "data[METHOD]")?.to_owned(),
            confirmed: d.req_flag("CONFIRMED", "data[CONFIRMED]")?,
            language_id: lang(&d)?,
        }),
        ONAPPPAYMENT => EventData::AppPayment(AppPayment {
            code: d.req("CODE", "data[CODE]")?.to_owned(),
            version: d.req("VERSION", "data[VERSION]")?.to_owned(),
            status: d.req_with("STATUS", "data[STATUS]", AppStatus::parse)?,
            payment_expired: d.req_flag("PAYMENT_EXPIRED", "data[PAYMENT_EXPIRED]")?,
            days: int(d.req("DAYS", "data[DAYS]")?)
                .ok_or(invalid("data[DAYS]", "must be an integer"))?,
            language_id: lang(&d)?,
        }),
        // ONAPPTEST, the last lifecycle event.
        _ => EventData::AppTest(AppTest {
            query: d.raw("QUERY").filter(|q| !q.is_empty()).cloned(),
            language_id: lang(&d)?,
        }),
    })
}
