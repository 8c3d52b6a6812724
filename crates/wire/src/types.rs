//! Domain newtypes that parse ("parse, don't validate"): a handler that holds a
//! `MemberId` knows it is 32 lowercase hex characters, never an unchecked string.
//!
//! Secret types (`ApplicationToken`, `AccessToken`, `RefreshToken`) redact
//! themselves in `Debug` and `Display`; the only way to read one is
//! `expose_secret()`, which makes every use visible in review (BRIEF §3,
//! invariant 4: secrets never reach a log line, an error or a panic message).

use std::fmt;

/// Why a value did not parse into a domain type. It names the type and the
/// rule, never the rejected value (which may be a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: {reason}")]
pub struct InvalidValue {
    pub kind: &'static str,
    pub reason: &'static str,
}

fn invalid(kind: &'static str, reason: &'static str) -> InvalidValue {
    InvalidValue { kind, reason }
}

/// A portal's identifier: 32 hex characters, stable across domain renames
/// (protocol §2.3). Stored lower-cased.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberId(String);

impl MemberId {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if s.len() != 32 {
            return Err(invalid("member_id", "must be 32 hex characters"));
        }
        if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid("member_id", "must be 32 hex characters"));
        }
        Ok(Self(s.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemberId({})", self.0)
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A portal's host name, optionally with a port, without scheme or path
/// (`example.bitrix24.com`, `acme.localhost:8443`). Lower-cased.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortalDomain(String);

impl PortalDomain {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        const KIND: &str = "portal domain";
        if s.is_empty() || s.len() > 253 {
            return Err(invalid(KIND, "must be 1 to 253 characters"));
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        if let Some(p) = port
            && (p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(invalid(KIND, "port must be digits"));
        }
        if host.is_empty()
            || host.starts_with('.')
            || host.ends_with('.')
            || host.contains("..")
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(invalid(
                KIND,
                "must be a host name of letters, digits, '-' and '.'",
            ));
        }
        Ok(Self(s.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host without the port.
    pub fn host(&self) -> &str {
        self.0.rsplit_once(':').map_or(&self.0, |(h, _)| h)
    }
}

impl fmt::Debug for PortalDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PortalDomain({})", self.0)
    }
}

impl fmt::Display for PortalDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An event code, stored upper-case (`ONCRMDEALADD`); Bitrix24 accepts any
/// case on `event.bind` and always sends upper case (protocol §2.2, §5.1).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventName(String);

impl EventName {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if s.is_empty() || s.len() > 128 {
            return Err(invalid("event name", "must be 1 to 128 characters"));
        }
        if !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(invalid("event name", "must be letters, digits and '_'"));
        }
        Ok(Self(s.to_ascii_uppercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventName({})", self.0)
    }
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One permission scope (`crm`, `user_brief`, `placement`). Lower-cased.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(String);

impl Scope {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let s = s.trim();
        if s.is_empty() || s.len() > 64 {
            return Err(invalid("scope", "must be 1 to 64 characters"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        {
            return Err(invalid(
                "scope",
                "must be letters, digits, '_', '.' and '-'",
            ));
        }
        Ok(Self(s.to_ascii_lowercase()))
    }

    /// Parses the comma-separated list real payloads carry
    /// (`crm,placement,user_brief`). Spaces are accepted as separators too,
    /// because one doc page says "separated by spaces" (protocol §2.3, §12.3).
    pub fn parse_list(s: &str) -> Result<Vec<Scope>, InvalidValue> {
        let mut out: Vec<Scope> = Vec::new();
        for part in s.split([',', ' ']).filter(|p| !p.trim().is_empty()) {
            let scope = Scope::parse(part)?;
            if !out.contains(&scope) {
                out.push(scope);
            }
        }
        Ok(out)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scope({})", self.0)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A REST base URL as Bitrix24 sends it: `client_endpoint`
/// (`https://<portal>/rest/`) or `server_endpoint`
/// (`https://oauth.bitrix.info/rest/`). Always taken from the payload, never
/// hard-coded: two OAuth hosts exist (protocol §1, §12.11). Stored with a
/// trailing `/` so that `format!("{endpoint}{method}")` is the call URL.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint(String);

impl Endpoint {
    /// Accepts an `http://` or `https://` URL with a host and no whitespace,
    /// query or fragment; plain `http` is allowed because on-premise portals
    /// and the emulator use it (protocol §10, §12.12).
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        const KIND: &str = "endpoint";
        if s.is_empty() || s.len() > 2048 {
            return Err(invalid(KIND, "must be 1 to 2048 characters"));
        }
        let rest = if let Some(r) = s.strip_prefix("https://") {
            r
        } else if let Some(r) = s.strip_prefix("http://") {
            r
        } else {
            return Err(invalid(KIND, "must start with http:// or https://"));
        };
        if !s.bytes().all(|b| b.is_ascii_graphic()) || s.contains(['?', '#']) {
            return Err(invalid(
                KIND,
                "must be a URL without spaces, query or fragment",
            ));
        }
        let host = rest.split('/').next().unwrap_or_default();
        if host.is_empty() || PortalDomain::parse(host).is_err() {
            return Err(invalid(KIND, "must have a valid host"));
        }
        let mut url = s.to_owned();
        if !url.ends_with('/') {
            url.push('/');
        }
        Ok(Self(url))
    }

    /// `http(s)://<domain>/rest/`, the REST base of a portal known by its
    /// domain (app-page POSTs have no `client_endpoint`, §3.5). Infallible:
    /// a `PortalDomain` is always a valid host.
    pub fn for_portal(domain: &PortalDomain, https: bool) -> Self {
        let scheme = if https { "https" } else { "http" };
        Self(format!("{scheme}://{domain}/rest/"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host (with port, if any) of the URL, lower-cased.
    pub fn host(&self) -> String {
        let rest = self.0.split_once("://").map_or(self.0.as_str(), |(_, r)| r);
        rest.split('/')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase()
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({})", self.0)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The app's status letter on a portal (`auth[status]`, `status`, the
/// payment event's `STATUS`; protocol §2.3). Informational only: the trusted
/// value comes from `app.info` (§3.5), which is why an unknown letter is kept
/// as `Other` instead of rejecting a delivery that is never retried (§2.6).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AppStatus {
    /// `L`: a local app.
    Local,
    /// `F`: free.
    Free,
    /// `D`: demo.
    Demo,
    /// `T`: trial.
    Trial,
    /// `P`: paid.
    Paid,
    /// `S`: subscription (SDKs and module source know it; docs barely do).
    Subscription,
    /// Any other short code, upper-cased.
    Other(String),
}

impl AppStatus {
    /// Parses a status code, case-insensitively. Accepts 1 to 8 ASCII
    /// letters; anything else is not a status.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(invalid("app status", "must be 1 to 8 letters"));
        }
        let up = s.to_ascii_uppercase();
        Ok(match up.as_str() {
            "L" => Self::Local,
            "F" => Self::Free,
            "D" => Self::Demo,
            "T" => Self::Trial,
            "P" => Self::Paid,
            "S" => Self::Subscription,
            _ => Self::Other(up),
        })
    }

    /// The wire spelling (`L`, `F`, …).
    pub fn as_str(&self) -> &str {
        match self {
            Self::Local => "L",
            Self::Free => "F",
            Self::Demo => "D",
            Self::Trial => "T",
            Self::Paid => "P",
            Self::Subscription => "S",
            Self::Other(s) => s,
        }
    }
}

impl fmt::Display for AppStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! secret_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name(String);

        impl $name {
            /// Accepts 1 to 512 printable ASCII characters, no spaces.
            pub fn parse(s: &str) -> Result<Self, InvalidValue> {
                if s.is_empty() || s.len() > 512 {
                    return Err(invalid($kind, "must be 1 to 512 characters"));
                }
                if !s.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(invalid($kind, "must be printable ASCII without spaces"));
                }
                Ok(Self(s.to_owned()))
            }

            /// The secret itself. Every call site is a place where the
            /// secret leaves its wrapper: keep them few and never log them.
            pub fn expose_secret(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "([redacted])"))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("[redacted]")
            }
        }
    };
}

secret_type!(
    /// The per-app-per-portal shared secret every delivery carries in
    /// `auth[application_token]` (protocol §7.6). The gateway keeps only a
    /// keyed hash of it.
    ApplicationToken,
    "application token"
);
secret_type!(
    /// An OAuth access token (protocol §7.4: lives one hour).
    AccessToken,
    "access token"
);
secret_type!(
    /// An OAuth refresh token. Single-use in practice: every refresh returns
    /// a new one (protocol §7.4).
    RefreshToken,
    "refresh token"
);
secret_type!(
    /// The app's OAuth client secret; sent only to the OAuth server.
    ClientSecret,
    "client secret"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_id_is_32_hex_lowercased() {
        let m = MemberId::parse("D897063E1CE7C5EB9F04B9751EEF5915").unwrap();
        assert_eq!(m.as_str(), "d897063e1ce7c5eb9f04b9751eef5915");
        assert!(MemberId::parse("d897063e1ce7c5eb9f04b9751eef591").is_err());
        assert!(MemberId::parse("g897063e1ce7c5eb9f04b9751eef5915").is_err());
        assert!(MemberId::parse("").is_err());
    }

    #[test]
    fn domain_accepts_host_and_port_only() {
        assert_eq!(
            PortalDomain::parse("Example.Bitrix24.com")
                .unwrap()
                .as_str(),
            "example.bitrix24.com"
        );
        let d = PortalDomain::parse("acme.localhost:8443").unwrap();
        assert_eq!(d.host(), "acme.localhost");
        for bad in [
            "",
            "https://x.bitrix24.com",
            "x.bitrix24.com/rest",
            ".x.com",
            "x..com",
            "x.com:",
            "x.com:abc",
            "x com",
        ] {
            assert!(PortalDomain::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn event_name_is_uppercased() {
        assert_eq!(
            EventName::parse("onCrmDealAdd").unwrap().as_str(),
            "ONCRMDEALADD"
        );
        assert!(EventName::parse("ON CRM").is_err());
    }

    #[test]
    fn scope_list_splits_commas_and_spaces() {
        let s = Scope::parse_list("crm,placement user_brief,crm").unwrap();
        let names: Vec<_> = s.iter().map(Scope::as_str).collect();
        assert_eq!(names, ["crm", "placement", "user_brief"]);
        assert!(Scope::parse_list("").unwrap().is_empty());
    }

    #[test]
    fn endpoint_requires_http_url_and_adds_slash() {
        let e = Endpoint::parse("https://Example.bitrix24.com/rest").unwrap();
        assert_eq!(e.as_str(), "https://Example.bitrix24.com/rest/");
        assert_eq!(e.host(), "example.bitrix24.com");
        assert!(Endpoint::parse("http://acme.localhost:8443/rest/").is_ok());
        let d = PortalDomain::parse("acme.localhost:8443").unwrap();
        let built = Endpoint::for_portal(&d, false);
        assert_eq!(Endpoint::parse(built.as_str()).unwrap(), built);
        assert_eq!(built.as_str(), "http://acme.localhost:8443/rest/");
        for bad in [
            "",
            "ftp://x.com/",
            "https://",
            "https:///rest/",
            "https://x.com/a b",
            "https://x.com/?a=1",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn app_status_letters() {
        assert_eq!(AppStatus::parse("l").unwrap(), AppStatus::Local);
        assert_eq!(AppStatus::parse("S").unwrap(), AppStatus::Subscription);
        assert_eq!(AppStatus::parse("x").unwrap(), AppStatus::Other("X".into()));
        assert!(AppStatus::parse("").is_err());
        assert!(AppStatus::parse("1").is_err());
    }

    #[test]
    fn secrets_redact_in_debug_and_display() {
        let value = "51856fefc120afa4b628cc82d3935cce";
        let t = ApplicationToken::parse(value).unwrap();
        let a = AccessToken::parse(value).unwrap();
        let r = RefreshToken::parse(value).unwrap();
        let c = ClientSecret::parse(value).unwrap();
        for shown in [
            format!("{t:?} {t}"),
            format!("{a:?} {a}"),
            format!("{r:?} {r}"),
            format!("{c:?} {c}"),
        ] {
            assert!(!shown.contains(value), "{shown}");
            assert!(shown.contains("redacted"), "{shown}");
        }
        assert_eq!(t.expose_secret(), value);
    }
}
