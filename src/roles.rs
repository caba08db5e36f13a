//! Roles per room: what a user may do in one room. `reader` receives and pages history,
//! `member` also posts (everyone not named otherwise), `moderator` also kicks, mutes and
//! deletes. A role comes from the identity (a static user's `roles` table or a signed token's
//! `roles` claim) and is fixed for the connection's life; every frame a session or the API
//! handles asks here before it changes anything.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Reader,
    #[default]
    Member,
    Moderator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Member => "member",
            Role::Moderator => "moderator",
        }
    }

    pub fn may_post(self) -> bool {
        self >= Role::Member
    }

    pub fn may_moderate(self) -> bool {
        self == Role::Moderator
    }
}

/// Roles by room; a room not named gives [`Role::Member`].
pub type RoomRoles = BTreeMap<String, Role>;

/// The role of an identity with `roles` in `room`.
pub fn role_in(roles: Option<&RoomRoles>, room: &str) -> Role {
    roles.and_then(|r| r.get(room)).copied().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unnamed_rooms_give_member_and_only_moderators_moderate() {
        let roles: RoomRoles =
            serde_json::from_str(r#"{"lobby":"moderator","news":"reader"}"#).unwrap();
        assert_eq!(role_in(Some(&roles), "lobby"), Role::Moderator);
        assert_eq!(role_in(Some(&roles), "news"), Role::Reader);
        assert_eq!(role_in(Some(&roles), "other"), Role::Member);
        assert_eq!(role_in(None, "lobby"), Role::Member);
        assert!(!Role::Reader.may_post() && Role::Member.may_post());
        assert!(!Role::Member.may_moderate() && Role::Moderator.may_moderate());
        assert!(serde_json::from_str::<RoomRoles>(r#"{"lobby":"admin"}"#).is_err());
    }
}
