//! The client's one error type. No variant carries a token, a webhook code
//! or a URL with either (BRIEF invariant 4): transport errors are stripped of
//! their URL, hosts are shown without paths.

use wire::{ApiError, MemberId, RestError};

use crate::env::EnvError;

/// A method-confirmation result (protocol §9): the call was not made and
/// waits for an admin (`METHOD_CONFIRM_WAITING`) or was denied
/// (`METHOD_CONFIRM_DENIED`). The approval binds to the access token, so the
/// engine parks the call under this fingerprint and replays it with the same
/// token after `ONAPPMETHODCONFIRM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmation {
    pub method: String,
    /// [`crate::CredentialStore::fingerprint`] of the token the approval binds to.
    pub token_fingerprint: String,
}

/// How a transport failure happened, which decides whether the request may
/// have been processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// No connection was made: the request was never sent.
    Connect,
    /// The per-request timeout elapsed after sending: it may have been processed.
    Timeout,
    /// The connection broke after sending: it may have been processed.
    Other,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// Invariant 6: the portal's status does not allow REST calls.
    #[error("portal {member_id} is {status}: no REST call made")]
    PortalInactive { member_id: MemberId, status: String },
    #[error("portal {0} is unknown to the credential store")]
    UnknownPortal(MemberId),
    #[error("portal {0} has no stored credentials")]
    NoCredentials(MemberId),
    /// The refresh token was refused; calls stay refused until a reinstall
    /// or an app-page open brings new tokens.
    #[error("portal {0} needs re-authorisation (refresh token refused)")]
    NeedsReauth(MemberId),
    /// Invariant 3: a host outside the allow-list (or plain http where it is
    /// not allowed). Shown as `scheme://host`, never with a path.
    #[error("outbound host {0} is not allowed")]
    HostNotAllowed(String),
    #[error("Bitrix24 error in {method}: {error}")]
    Api { method: String, error: ApiError },
    #[error("{} waits for an admin's confirmation", .0.method)]
    ConfirmationWaiting(Confirmation),
    #[error("{} was denied by an admin", .0.method)]
    ConfirmationDenied(Confirmation),
    /// The method's operating-time budget is spent until `reset_at` (Unix
    /// seconds), later than the call's deadline allows waiting.
    #[error("{method} is over its operating-time budget until {reset_at}")]
    OperatingLimit { method: String, reset_at: i64 },
    #[error("transport error ({kind:?}) calling {method}: {message}")]
    Transport {
        method: String,
        kind: TransportKind,
        message: String,
    },
    #[error("the call's deadline passed ({method})")]
    Deadline { method: String },
    /// A non-2xx answer without an error envelope, or a malformed body.
    #[error("bad response to {method}: {error}")]
    Response { method: String, error: RestError },
    /// The token endpoint answered something that is not a complete token
    /// pair (nothing was stored).
    #[error("refresh failed: {0}")]
    Refresh(String),
    #[error("redirect refused: {0}")]
    Redirect(String),
    /// Too many retries for this portal in a short time: its outbound calls
    /// pause until `until_ms` (Unix milliseconds).
    #[error("outbound calls to {portal} are paused after a retry storm (until {until_ms})")]
    CircuitOpen { portal: String, until_ms: i64 },
    #[error("credential store or rate limiter: {0}")]
    Env(#[from] EnvError),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    /// The Bitrix24 error, if the server sent one.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            Error::Api { error, .. } => Some(error),
            _ => None,
        }
    }

    /// The confirmation this call waits for or was denied.
    pub fn confirmation(&self) -> Option<&Confirmation> {
        match self {
            Error::ConfirmationWaiting(c) | Error::ConfirmationDenied(c) => Some(c),
            _ => None,
        }
    }
}
