//! What events and app-page POSTs share: one error type naming the field,
//! and the readers that turn form leaves into typed values.
//!
//! Every number in a form body is a digit string (protocol §2.1), every flag
//! is `Y`/`N` or `1`/`0` depending on the field (§3.7, §4.2, §4.3).

use crate::form::{FormError, FormMap, FormValue};
use crate::types::InvalidValue;

/// Why an event delivery or an app-page POST was refused. `field` is the
/// wire name (`auth[member_id]`, `data[CLEAN]`, `AUTH_EXPIRES`); the value is
/// never included, since most fields here are tokens or carry them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The body is not a well-formed form, or broke a [`crate::Limits`].
    #[error(transparent)]
    Form(#[from] FormError),
    /// A required field is absent or empty.
    #[error("missing field `{field}`")]
    Missing { field: &'static str },
    /// A field is present but not what the protocol says it is.
    #[error("invalid field `{field}`: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

/// Errors of [`crate::event::Event::parse`].
pub type EventError = PayloadError;
/// Errors of [`crate::install::AppPagePost::parse`].
pub type InstallError = PayloadError;

pub(crate) fn invalid(field: &'static str, reason: &'static str) -> PayloadError {
    PayloadError::Invalid { field, reason }
}

/// The named part of a map: top-level fields, `auth`, `data`.
#[derive(Clone, Copy)]
pub(crate) struct Fields<'a> {
    map: Option<&'a FormMap>,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(map: &'a FormMap) -> Self {
        Self { map: Some(map) }
    }

    /// The map under `key` (`auth`, `data`). Absent or empty text is an
    /// empty set of fields (empty arrays vanish in form encoding, §2.1);
    /// a non-empty text or a list is refused.
    pub(crate) fn nested(
        map: &'a FormMap,
        key: &str,
        field: &'static str,
    ) -> Result<Self, PayloadError> {
        match map.get(key) {
            None => Ok(Self { map: None }),
            Some(FormValue::Map(m)) => Ok(Self { map: Some(m) }),
            Some(v) if v.is_empty() => Ok(Self { map: None }),
            Some(_) => Err(invalid(field, "must be a set of named fields")),
        }
    }

    pub(crate) fn raw(&self, key: &str) -> Option<&'a FormValue> {
        self.map.and_then(|m| m.get(key))
    }

    /// A leaf's text; absent or empty is `None`; a nested value is refused.
    pub(crate) fn opt(
        &self,
        key: &str,
        field: &'static str,
    ) -> Result<Option<&'a str>, PayloadError> {
        match self.raw(key) {
            None => Ok(None),
            Some(FormValue::Text(s)) if s.is_empty() => Ok(None),
            Some(FormValue::Text(s)) => Ok(Some(s)),
            Some(_) => Err(invalid(field, "must be a single value")),
        }
    }

    pub(crate) fn req(&self, key: &str, field: &'static str) -> Result<&'a str, PayloadError> {
        self.opt(key, field)?.ok_or(PayloadError::Missing { field })
    }

    /// A required field parsed by a domain type's `parse`.
    pub(crate) fn req_with<T>(
        &self,
        key: &str,
        field: &'static str,
        parse: impl FnOnce(&str) -> Result<T, InvalidValue>,
    ) -> Result<T, PayloadError> {
        parse(self.req(key, field)?).map_err(|e| invalid(field, e.reason))
    }

    pub(crate) fn opt_with<T>(
        &self,
        key: &str,
        field: &'static str,
        parse: impl FnOnce(&str) -> Result<T, InvalidValue>,
    ) -> Result<Option<T>, PayloadError> {
        self.opt(key, field)?
            .map(|s| parse(s).map_err(|e| invalid(field, e.reason)))
            .transpose()
    }

    pub(crate) fn req_uint(&self, key: &str, field: &'static str) -> Result<u64, PayloadError> {
        uint(self.req(key, field)?).ok_or(invalid(field, "must be a non-negative integer"))
    }

    pub(crate) fn opt_uint(
        &self,
        key: &str,
        field: &'static str,
    ) -> Result<Option<u64>, PayloadError> {
        self.opt(key, field)?
            .map(|s| uint(s).ok_or(invalid(field, "must be a non-negative integer")))
            .transpose()
    }

    pub(crate) fn req_flag(&self, key: &str, field: &'static str) -> Result<bool, PayloadError> {
        flag(self.req(key, field)?).ok_or(invalid(field, "must be Y/N or 1/0"))
    }

    pub(crate) fn opt_flag(
        &self,
        key: &str,
        field: &'static str,
    ) -> Result<Option<bool>, PayloadError> {
        self.opt(key, field)?
            .map(|s| flag(s).ok_or(invalid(field, "must be Y/N or 1/0")))
            .transpose()
    }

    /// A language code (`en`, `de`, `pt-br`): short, letters/digits/`-_`.
    pub(crate) fn opt_lang(
        &self,
        key: &str,
        field: &'static str,
    ) -> Result<Option<String>, PayloadError> {
        match self.opt(key, field)? {
            None => Ok(None),
            Some(s)
                if s.len() <= 16
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                Ok(Some(s.to_ascii_lowercase()))
            }
            Some(_) => Err(invalid(field, "must be a short language code")),
        }
    }
}

/// A digit string as `u64` (no sign, no spaces, no more than 20 digits).
pub(crate) fn uint(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// An optionally negative digit string as `i64`.
pub(crate) fn int(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Both flag spellings: lifecycle `data` uses `Y`/`N` (ACTIVE, INSTALLED,
/// PAYMENT_EXPIRED) and `1`/`0` (CLEAN, CONFIRMED). Accepting both for every
/// flag costs nothing and survives a portal that switches spelling.
pub(crate) fn flag(s: &str) -> Option<bool> {
    match s {
        "Y" | "y" | "1" => Some(true),
        "N" | "n" | "0" => Some(false),
        _ => None,
    }
}
