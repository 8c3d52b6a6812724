//! The portal status machine, enforced here and nowhere else.
//!
//! ```text
//!                 ┌──────────── reinstall ─────────────┐
//!                 v                                    │
//! (new) ──> installing ──> installed ──> uninstalled ──> purged
//!               │  ^          │  ^           ^
//!               │  └─ repeat  │  │ re-auth   │
//!               v   install   v  │           │
//!             failed      needs_reauth ──────┘
//! ```
//!
//! A portal row exists only after its install was verified (BRIEF §3
//! invariant 2), so an unverified `ONAPPINSTALL` lives in the inbox, not here.

use std::fmt;
use std::str::FromStr;

/// Where a portal is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortalStatus {
    /// Verified; probe, bindings or (flow B) `installFinish` still to come.
    Installing,
    /// Fully installed: events are accepted and REST calls allowed.
    Installed,
    /// The refresh token was refused (`invalid_grant`): no REST calls until a
    /// new install or app-page open brings fresh tokens.
    NeedsReauth,
    /// `ONAPPUNINSTALL` was received: no REST calls from here on (rights are
    /// revoked, protocol §4.2); data kept per the uninstall policy.
    Uninstalled,
    /// Data removed per the uninstall policy; the row and audit log remain.
    Purged,
    /// The install did not complete (expired, or its setup failed for good).
    Failed,
}

impl PortalStatus {
    pub const ALL: [PortalStatus; 6] = [
        PortalStatus::Installing,
        PortalStatus::Installed,
        PortalStatus::NeedsReauth,
        PortalStatus::Uninstalled,
        PortalStatus::Purged,
        PortalStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PortalStatus::Installing => "installing",
            PortalStatus::Installed => "installed",
            PortalStatus::NeedsReauth => "needs_reauth",
            PortalStatus::Uninstalled => "uninstalled",
            PortalStatus::Purged => "purged",
            PortalStatus::Failed => "failed",
        }
    }

    /// Whether REST calls may be made for a portal in this state
    /// (BRIEF §3 invariant 6).
    pub fn allows_rest(self) -> bool {
        matches!(self, PortalStatus::Installing | PortalStatus::Installed)
    }

    /// Whether `self -> to` is a legal step. Staying in the same state is not
    /// a transition; callers treat it as a no-op.
    pub fn can_become(self, to: PortalStatus) -> bool {
        use PortalStatus::*;
        matches!(
            (self, to),
            (Installing, Installed)
                | (Installing, Failed)
                | (Installing, Uninstalled)
                | (Installing, NeedsReauth)
                | (Installed, Installing)
                | (Installed, NeedsReauth)
                | (Installed, Uninstalled)
                | (NeedsReauth, Installing)
                | (NeedsReauth, Installed)
                | (NeedsReauth, Uninstalled)
                | (Uninstalled, Installing)
                | (Uninstalled, Purged)
                | (Purged, Installing)
                | (Failed, Installing)
                | (Failed, Purged)
        )
    }
}

impl fmt::Display for PortalStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PortalStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PortalStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or(UnknownStatus)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown portal status")]
pub struct UnknownStatus;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in PortalStatus::ALL {
            assert_eq!(s.as_str().parse::<PortalStatus>().unwrap(), s);
        }
        assert!("deleted".parse::<PortalStatus>().is_err());
    }

    #[test]
    fn only_reinstall_leaves_terminal_states() {
        use PortalStatus::*;
        assert!(Purged.can_become(Installing));
        assert!(!Purged.can_become(Installed));
        assert!(!Uninstalled.can_become(Installed));
        assert!(!Failed.can_become(Installed));
        assert!(!Installed.can_become(Purged));
        for s in PortalStatus::ALL {
            assert!(!s.can_become(s), "{s} -> {s} is not a transition");
        }
    }

    #[test]
    fn rest_only_while_installing_or_installed() {
        let allowed: Vec<_> = PortalStatus::ALL
            .into_iter()
            .filter(|s| s.allows_rest())
            .collect();
        assert_eq!(allowed, [PortalStatus::Installing, PortalStatus::Installed]);
    }
}
