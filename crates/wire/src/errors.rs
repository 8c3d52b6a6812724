//! The REST and OAuth error catalogue (protocol §6.3, §7.5) and the one
//! decision the client makes from it: [`ErrorClass`].
//!
//! Codes compare case-insensitively: the portal spells some in lower case
//! (`expired_token`, `insufficient_scope`) and some in upper case
//! (`NO_AUTH_FOUND`), and SDKs lower-case them all (protocol §6.2).

use std::fmt;

/// What the client should do about an error. Every [`ErrorCode`] has exactly
/// one class; the reasons are on [`ErrorCode::class`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The access token expired: refresh once and retry (§6.3, §7.4).
    Refresh,
    /// A transient server-side failure: retry later with backoff.
    RetryLater,
    /// The portal's request-rate bucket is full (503): exponential backoff
    /// for the whole portal (§8.1, §8.4).
    RateLimited,
    /// This method's 10-minute execution budget is spent (429): pause this
    /// method only until `time.operating_reset_at` (§8.2, §8.4).
    OperatingLimit,
    /// The method needs an admin's confirmation, which was requested: wait
    /// for ONAPPMETHODCONFIRM (§9).
    ConfirmationWaiting,
    /// An admin denied the method for this token (§9).
    ConfirmationDenied,
    /// The app's subscription ended: stop calling the portal until an
    /// ONAPPPAYMENT or a reinstall says otherwise (§3.8, §6.3 "stop calling").
    /// Not `PortalGone`: the installation and its data stay valid.
    PaymentRequired,
    /// The installation is gone or its credentials are dead (uninstalled,
    /// portal deleted, refresh token rejected): mark it broken and stop
    /// (§6.3 "mark installation broken", §7.7).
    PortalGone,
    /// Retrying the same request cannot help (bad argument, missing rights,
    /// unknown method, …): report it to the caller.
    Fatal,
}

/// One code of the catalogue. Parse with [`ErrorCode::parse`]; anything
/// unknown is kept as [`ErrorCode::Other`] with the code as sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    ExpiredToken,
    InvalidToken,
    NoAuthFound,
    InvalidCredentials,
    InsufficientScope,
    AuthorizationError,
    UserAccessError,
    ApplicationNotFound,
    ErrorOauth,
    PaymentRequired,
    MethodConfirmWaiting,
    MethodConfirmDenied,
    AccessDenied,
    WrongAuthType,
    WrongLicense,
    /// `ERROR_METHOD_NOT_FOUND`.
    MethodNotFound,
    ErrorArgument,
    ErrorCore,
    /// `ERROR_EVENT_NOT_FOUND`.
    EventNotFound,
    /// `ERROR_WRONG_HANDLER_URL`.
    WrongHandlerUrl,
    /// `ERROR_UNSUPPORTED_PROTOCOL`.
    UnsupportedProtocol,
    QueryLimitExceeded,
    OperationTimeLimit,
    OverloadLimit,
    /// `INVALID_REQUEST` (REST "Https required") and OAuth `invalid_request`:
    /// the same code modulo case.
    InvalidRequest,
    /// `ERROR_BATCH_LENGTH_EXCEEDED`.
    BatchLengthExceeded,
    /// `ERROR_BATCH_METHOD_NOT_ALLOWED`.
    BatchMethodNotAllowed,
    InternalServerError,
    /// `ERROR_UNEXPECTED_ANSWER`.
    UnexpectedAnswer,
    PortalDeleted,
    /// `ERROR_MANIFEST_IS_NOT_AVAILABLE`.
    ManifestNotAvailable,
    ConnectionError,
    WrongEncoding,
    CodeEmpty,
    AllowedOnlyIntranetUser,
    /// OAuth: bad or expired refresh token or code (§7.5).
    InvalidGrant,
    /// OAuth: bad client id/secret, or app not installed (§7.5).
    InvalidClient,
    /// OAuth `invalid_scope` (§7.5).
    InvalidScope,
    /// OAuth `wrong_client`, seen with HTTP 200 (§7.5).
    WrongClient,
    /// OAuth `NOT_INSTALLED` "Application not installed" (§7.5).
    NotInstalled,
    /// A code outside the catalogue, as sent (may be empty: some methods
    /// answer with only an `error_description`, §6.2).
    Other(String),
}

/// (code, wire spelling, documented HTTP status). The spelling is the one
/// the portal uses; parsing ignores case.
const CATALOGUE: &[(ErrorCode, &str, Option<u16>)] = {
    use ErrorCode::*;
    &[
        (ExpiredToken, "expired_token", Some(401)),
        (InvalidToken, "invalid_token", Some(401)),
        (NoAuthFound, "NO_AUTH_FOUND", Some(401)),
        // Docs say 403, PY-SDK 401 (§6.3): we keep the docs column.
        (InvalidCredentials, "INVALID_CREDENTIALS", Some(403)),
        // Docs 403, module source 401 (§6.3): docs column.
        (InsufficientScope, "insufficient_scope", Some(403)),
        (AuthorizationError, "authorization_error", Some(401)),
        // Docs and PY-SDK 403; on-prem source 401 (§6.3).
        (UserAccessError, "user_access_error", Some(403)),
        (ApplicationNotFound, "APPLICATION_NOT_FOUND", Some(401)),
        (ErrorOauth, "ERROR_OAUTH", Some(401)),
        // Only an SDK gives a status (401) (§6.3).
        (PaymentRequired, "PAYMENT_REQUIRED", Some(401)),
        (MethodConfirmWaiting, "METHOD_CONFIRM_WAITING", Some(401)),
        (MethodConfirmDenied, "METHOD_CONFIRM_DENIED", Some(403)),
        (AccessDenied, "ACCESS_DENIED", Some(403)),
        (WrongAuthType, "WRONG_AUTH_TYPE", Some(403)),
        (WrongLicense, "WRONG_LICENSE", Some(403)),
        (MethodNotFound, "ERROR_METHOD_NOT_FOUND", Some(404)),
        (ErrorArgument, "ERROR_ARGUMENT", Some(400)),
        (ErrorCore, "ERROR_CORE", Some(400)),
        (EventNotFound, "ERROR_EVENT_NOT_FOUND", Some(400)),
        (WrongHandlerUrl, "ERROR_WRONG_HANDLER_URL", Some(400)),
        (UnsupportedProtocol, "ERROR_UNSUPPORTED_PROTOCOL", Some(400)),
        // 503 since the Dec 2024 docs change, formerly 429 (§8.1, §12.2).
        (QueryLimitExceeded, "QUERY_LIMIT_EXCEEDED", Some(503)),
        (OperationTimeLimit, "OPERATION_TIME_LIMIT", Some(429)),
        (OverloadLimit, "OVERLOAD_LIMIT", Some(503)),
        (InvalidRequest, "INVALID_REQUEST", Some(400)),
        (
            BatchLengthExceeded,
            "ERROR_BATCH_LENGTH_EXCEEDED",
            Some(400),
        ),
        (
            BatchMethodNotAllowed,
            "ERROR_BATCH_METHOD_NOT_ALLOWED",
            Some(405),
        ),
        (InternalServerError, "INTERNAL_SERVER_ERROR", Some(500)),
        (UnexpectedAnswer, "ERROR_UNEXPECTED_ANSWER", Some(500)),
        // Docs 500, module source 403, PY-SDK 410 (§6.3, §12.13): docs column.
        (PortalDeleted, "PORTAL_DELETED", Some(500)),
        (
            ManifestNotAvailable,
            "ERROR_MANIFEST_IS_NOT_AVAILABLE",
            Some(404),
        ),
        (ConnectionError, "CONNECTION_ERROR", Some(401)),
        // Status unconfirmed (§6.3).
        (WrongEncoding, "WRONG_ENCODING", None),
        (CodeEmpty, "CODE_EMPTY", Some(400)),
        (
            AllowedOnlyIntranetUser,
            "ALLOWED_ONLY_INTRANET_USER",
            Some(403),
        ),
        // PHP-SDK maps 400 to invalid_grant (§7.5).
        (InvalidGrant, "invalid_grant", Some(400)),
        // Disputed: PHP-SDK 401, PY-SDK 400 (§7.5); we take 401.
        (InvalidClient, "invalid_client", Some(401)),
        (InvalidScope, "invalid_scope", Some(400)),
        (WrongClient, "wrong_client", Some(200)),
        (NotInstalled, "NOT_INSTALLED", Some(401)),
    ]
};

impl ErrorCode {
    /// Parses a code case-insensitively (surrounding spaces ignored).
    pub fn parse(code: &str) -> ErrorCode {
        let code = code.trim();
        CATALOGUE
            .iter()
            .find(|(_, name, _)| name.eq_ignore_ascii_case(code))
            .map_or_else(|| ErrorCode::Other(code.to_owned()), |(c, _, _)| c.clone())
    }

    fn entry(&self) -> Option<&'static (ErrorCode, &'static str, Option<u16>)> {
        CATALOGUE.iter().find(|(c, _, _)| c == self)
    }

    /// The code as the portal spells it; `Other` gives back what was sent.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::Other(s) => s,
            known => known.entry().map_or("", |(_, name, _)| name),
        }
    }

    /// The HTTP status the documentation gives for this code (where sources
    /// disagree, the docs column of §6.3; see the comments in the table).
    /// `None` for `WRONG_ENCODING` (unconfirmed) and for `Other`.
    pub fn http_status(&self) -> Option<u16> {
        self.entry().and_then(|(_, _, status)| *status)
    }

    /// What the client does about this code.
    pub fn class(&self) -> ErrorClass {
        use ErrorClass as C;
        use ErrorCode::*;
        match self {
            // §6.3: "401 expired_token → refresh once, retry".
            ExpiredToken => C::Refresh,
            // §6.3: "invalid_token/NO_AUTH_FOUND/APPLICATION_NOT_FOUND/
            // ERROR_OAUTH → mark installation broken (likely uninstalled)";
            // §7.7: after uninstall calls fail with these and refresh fails
            // with invalid_grant/NOT_INSTALLED. PORTAL_DELETED: site closed.
            // invalid_grant can also mean two refreshes raced with one
            // rotating token (§7.4); the client coalesces refreshes so that a
            // race cannot happen, which leaves "the refresh token is dead".
            InvalidToken | NoAuthFound | ApplicationNotFound | ErrorOauth | PortalDeleted
            | InvalidGrant | NotInstalled => C::PortalGone,
            // §6.3: "PAYMENT_REQUIRED → stop calling".
            PaymentRequired => C::PaymentRequired,
            // §8.1: 503 leaky bucket per portal.
            QueryLimitExceeded => C::RateLimited,
            // §8.2: per-method budget, reset at `operating_reset_at`.
            OperationTimeLimit => C::OperatingLimit,
            // §9.
            MethodConfirmWaiting => C::ConfirmationWaiting,
            MethodConfirmDenied => C::ConfirmationDenied,
            // Transient: manual overload block (§6.3 OVERLOAD_LIMIT, 503),
            // server faults (500), on-prem portal cannot reach its OAuth
            // server (CONNECTION_ERROR).
            OverloadLimit | InternalServerError | UnexpectedAnswer | ConnectionError => {
                C::RetryLater
            }
            // invalid_client means a wrong client id/secret as often as an
            // uninstalled app (§7.5); treating it as PortalGone would mark
            // every portal broken on one configuration mistake.
            InvalidClient => C::Fatal,
            // Rights, scopes, arguments, licenses, unknown methods: the same
            // request fails the same way again.
            InvalidCredentials
            | InsufficientScope
            | AuthorizationError
            | UserAccessError
            | AccessDenied
            | WrongAuthType
            | WrongLicense
            | MethodNotFound
            | ErrorArgument
            | ErrorCore
            | EventNotFound
            | WrongHandlerUrl
            | UnsupportedProtocol
            | InvalidRequest
            | BatchLengthExceeded
            | BatchMethodNotAllowed
            | ManifestNotAvailable
            | WrongEncoding
            | CodeEmpty
            | AllowedOnlyIntranetUser
            | InvalidScope
            | WrongClient => C::Fatal,
            // Unknown codes: the caller refines this with the HTTP status,
            // see `rest::ApiError::class`.
            Other(_) => C::Fatal,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_parse_in_any_case() {
        assert_eq!(ErrorCode::parse("EXPIRED_TOKEN"), ErrorCode::ExpiredToken);
        assert_eq!(ErrorCode::parse("expired_token"), ErrorCode::ExpiredToken);
        assert_eq!(ErrorCode::parse("no_auth_found"), ErrorCode::NoAuthFound);
        assert_eq!(ErrorCode::parse(" Invalid_Grant "), ErrorCode::InvalidGrant);
        assert_eq!(
            ErrorCode::parse("invalid_request"),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            ErrorCode::parse("SOMETHING_NEW"),
            ErrorCode::Other("SOMETHING_NEW".into())
        );
        assert_eq!(ErrorCode::parse(""), ErrorCode::Other(String::new()));
    }

    #[test]
    fn every_known_code_round_trips_through_its_spelling() {
        for (code, name, status) in CATALOGUE {
            assert_eq!(&ErrorCode::parse(name), code);
            assert_eq!(code.as_str(), *name);
            assert_eq!(code.http_status(), *status);
        }
        assert_eq!(ErrorCode::Other("X".into()).as_str(), "X");
        assert_eq!(ErrorCode::Other("X".into()).http_status(), None);
    }

    #[test]
    fn statuses_follow_the_docs_column() {
        assert_eq!(ErrorCode::QueryLimitExceeded.http_status(), Some(503));
        assert_eq!(ErrorCode::OperationTimeLimit.http_status(), Some(429));
        assert_eq!(ErrorCode::PortalDeleted.http_status(), Some(500));
        assert_eq!(ErrorCode::MethodConfirmDenied.http_status(), Some(403));
        assert_eq!(ErrorCode::MethodNotFound.http_status(), Some(404));
    }

    #[test]
    fn classes_drive_the_client() {
        use ErrorClass as C;
        let cases = [
            ("expired_token", C::Refresh),
            ("invalid_token", C::PortalGone),
            ("NO_AUTH_FOUND", C::PortalGone),
            ("APPLICATION_NOT_FOUND", C::PortalGone),
            ("ERROR_OAUTH", C::PortalGone),
            ("PORTAL_DELETED", C::PortalGone),
            ("invalid_grant", C::PortalGone),
            ("NOT_INSTALLED", C::PortalGone),
            ("QUERY_LIMIT_EXCEEDED", C::RateLimited),
            ("OPERATION_TIME_LIMIT", C::OperatingLimit),
            ("METHOD_CONFIRM_WAITING", C::ConfirmationWaiting),
            ("METHOD_CONFIRM_DENIED", C::ConfirmationDenied),
            ("PAYMENT_REQUIRED", C::PaymentRequired),
            ("OVERLOAD_LIMIT", C::RetryLater),
            ("INTERNAL_SERVER_ERROR", C::RetryLater),
            ("ERROR_ARGUMENT", C::Fatal),
            ("insufficient_scope", C::Fatal),
            ("invalid_client", C::Fatal),
            ("ERROR_METHOD_NOT_FOUND", C::Fatal),
        ];
        for (code, class) in cases {
            assert_eq!(ErrorCode::parse(code).class(), class, "{code}");
        }
    }
}
