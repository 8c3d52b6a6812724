//! The POST a portal submits into the app's iframe: the installer page
//! (install flow B, §3.3), the app's main page and every widget (§3.5).
//! Flow A installs arrive as an ONAPPINSTALL event instead (§3.2), see
//! [`crate::event`].
//!
//! The query string carries `DOMAIN`, `PROTOCOL`, `LANG`, `APP_SID`; the
//! form body carries the current user's tokens and the placement.

use crate::form::{self, FormMap, Limits};
use crate::payload::{Fields, InstallError, invalid};
use crate::types::{
    AccessToken, AppStatus, ApplicationToken, Endpoint, MemberId, PortalDomain, RefreshToken, Scope,
};

/// The placement code of the app's main page and of the installer (§3.3).
pub const DEFAULT_PLACEMENT: &str = "DEFAULT";

/// One app-page POST, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct AppPagePost {
    /// Query `DOMAIN`: the portal host, possibly with `:port`.
    pub domain: PortalDomain,
    /// Query `PROTOCOL`: `1` https, `0` http.
    pub https: bool,
    /// Query `LANG`: the UI language.
    pub lang: Option<String>,
    /// Query `APP_SID`: a random value per page render (`md5(uniqid())`),
    /// useful only to correlate a page with its JS calls. It is **not** the
    /// application token — CRest stores it as one, which is wrong (§3.5,
    /// §12.10) — so it is a plain string, never an `ApplicationToken`.
    pub app_sid: Option<String>,
    /// Body `AUTH_ID`: the current user's access token.
    pub access_token: AccessToken,
    /// Body `AUTH_EXPIRES`: the token's lifetime **in seconds** (`3600`),
    /// i.e. `expires_in`, not a timestamp. The PHP SDK stores it as an
    /// absolute expiry, which is a bug (§3.5, §12.10).
    pub expires_in: u64,
    /// Body `REFRESH_ID`. Keep it: in flow B the ONAPPINSTALL event may be
    /// delayed, so this may be the first refresh token we see (§3.3).
    pub refresh_token: RefreshToken,
    /// Body `SERVER_ENDPOINT`: absent on older portals (§3.5).
    pub server_endpoint: Option<Endpoint>,
    /// Body `APPLICATION_TOKEN`: the same value as `auth[application_token]`
    /// in events; only newer portals send it (§3.5, §7.6).
    pub application_token: Option<ApplicationToken>,
    /// Body `APPLICATION_SCOPE`, comma-separated; newer portals only.
    pub scope: Option<Vec<Scope>>,
    /// Body `member_id`.
    pub member_id: MemberId,
    /// Body `status`: informational, `app.info` is authoritative (§3.5).
    pub status: AppStatus,
    /// Body `PLACEMENT`: [`DEFAULT_PLACEMENT`] or a widget code.
    pub placement: String,
    /// Body `PLACEMENT_OPTIONS`, a JSON **string**, decoded. `None` when
    /// absent, empty, or the literal `undefined` some telephony placements
    /// send (§3.5).
    pub placement_options: Option<serde_json::Value>,
}

impl AppPagePost {
    /// Decodes and checks the query string and the body.
    pub fn parse(query: &[u8], body: &[u8], limits: &Limits) -> Result<AppPagePost, InstallError> {
        let query = form::decode(query, limits)?;
        let body = form::decode(body, limits)?;
        AppPagePost::from_forms(&query, &body)
    }

    /// Checks an already decoded query and body.
    pub fn from_forms(query: &FormMap, body: &FormMap) -> Result<AppPagePost, InstallError> {
        let q = Fields::new(query);
        let b = Fields::new(body);
        let https = match q.req("PROTOCOL", "PROTOCOL")? {
            "1" => true,
            "0" => false,
            _ => return Err(invalid("PROTOCOL", "must be 1 or 0")),
        };
        let placement = b.req("PLACEMENT", "PLACEMENT")?;
        if placement.len() > 128
            || !placement
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-')
        {
            return Err(invalid("PLACEMENT", "must be a placement code"));
        }
        Ok(AppPagePost {
            domain: q.req_with("DOMAIN", "DOMAIN", PortalDomain::parse)?,
            https,
            lang: q.opt_lang("LANG", "LANG")?,
            app_sid: q.opt("APP_SID", "APP_SID")?.map(str::to_owned),
            access_token: b.req_with("AUTH_ID", "AUTH_ID", AccessToken::parse)?,
            expires_in: b.req_uint("AUTH_EXPIRES", "AUTH_EXPIRES")?,
            refresh_token: b.req_with("REFRESH_ID", "REFRESH_ID", RefreshToken::parse)?,
            server_endpoint: b.opt_with("SERVER_ENDPOINT", "SERVER_ENDPOINT", Endpoint::parse)?,
            application_token: b.opt_with(
                "APPLICATION_TOKEN",
                "APPLICATION_TOKEN",
                ApplicationToken::parse,
            )?,
            scope: b.opt_with("APPLICATION_SCOPE", "APPLICATION_SCOPE", Scope::parse_list)?,
            member_id: b.req_with("member_id", "member_id", MemberId::parse)?,
            status: b.req_with("status", "status", AppStatus::parse)?,
            placement: placement.to_owned(),
            placement_options: placement_options(&b)?,
        })
    }

    /// True for the main page and the installer (`PLACEMENT=DEFAULT`).
    pub fn is_default_placement(&self) -> bool {
        self.placement.eq_ignore_ascii_case(DEFAULT_PLACEMENT)
    }

    /// The portal's REST base, `http(s)://<DOMAIN>/rest/`: the page POST has
    /// no `client_endpoint`, so it is built from `PROTOCOL` and `DOMAIN`.
    pub fn client_endpoint(&self) -> Endpoint {
        Endpoint::for_portal(&self.domain, self.https)
    }
}

fn placement_options(b: &Fields<'_>) -> Result<Option<serde_json::Value>, InstallError> {
    const FIELD: &str = "PLACEMENT_OPTIONS";
    match b.raw(FIELD) {
        None => Ok(None),
        // Tolerate a portal that sends the options as nested form fields.
        Some(form::FormValue::Map(m)) => Ok(Some(m.to_json())),
        Some(form::FormValue::List(_)) => Err(invalid(FIELD, "must be a JSON object")),
        Some(form::FormValue::Text(s)) => {
            let s = s.trim();
            if s.is_empty() || s == "undefined" {
                return Ok(None);
            }
            serde_json::from_str(s)
                .map(Some)
                .map_err(|_| invalid(FIELD, "must be a JSON string"))
        }
    }
}
