//! Roles: what a user signed in by the host application's token may do beyond chatting.

use serde::{Deserialize, Serialize};

/// A user's role, from the token's `confab_role` claim. Users without one chat, and edit and
/// delete their own messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May delete anyone's message and kick or ban users.
    Moderator,
    /// As a moderator (and, later, whatever administration confab grows).
    Admin,
}

impl Role {
    /// Reads a `confab_role` claim.
    pub fn parse(claim: &str) -> Option<Self> {
        match claim {
            "moderator" => Some(Self::Moderator),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    /// Whether the role may delete others' messages and kick users.
    pub fn moderates(self) -> bool {
        matches!(self, Self::Moderator | Self::Admin)
    }
}
