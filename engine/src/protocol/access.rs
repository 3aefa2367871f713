//! Group access (PROTOCOL.md v2): a group's settings, who owns and administers it and
//! whether it is invite-only, and the roles they give. Kept by the store (and, in a
//! cluster, in JetStream's bucket of groups) as JSON; enforced by the group's home.

use std::collections::BTreeSet;

use super::Role;

/// Who may do what in a group (PROTOCOL.md v2, "Group access"). The default is a v1
/// group: open to any joiner, owned by no one; only other settings are stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    /// Joining needs an owner's or admin's `group_add`, or the token's `groups` claim.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invite: bool,
    /// Who created it (`group_create`); none for a group a `group_join` made, or once the
    /// owner left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Box<str>>,
    /// Who the owner named admins.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub admins: BTreeSet<Box<str>>,
}

impl Settings {
    /// Whether these are a v1 group's (nothing to store).
    pub fn is_default(&self) -> bool {
        *self == Settings::default()
    }

    /// `user`'s role, taken to be a member.
    pub fn role(&self, user: &str) -> Role {
        if self.owner.as_deref() == Some(user) {
            Role::Owner
        } else if self.admins.contains(user) {
            Role::Admin
        } else {
            Role::Member
        }
    }

    /// The settings once `user` is no longer a member: neither owner nor admin.
    pub fn without(&self, user: &str) -> Settings {
        let mut after = self.clone();
        if after.owner.as_deref() == Some(user) {
            after.owner = None;
        }
        after.admins.remove(user);
        after
    }

    /// As stored: JSON (`{"invite":true,"owner":"u","admins":["a"]}`), small and
    /// readable in the file and in the cluster's bucket.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("settings serialize")
    }

    /// From what [`Settings::encode`] wrote; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Settings> {
        serde_json::from_slice(bytes).ok()
    }

    /// `group`'s settings as the store or the cluster's bucket holds them. A record that
    /// does not parse (another version's, or damaged) closes the group, logged: invite-only
    /// with no owner, so its members stay and nobody new joins, rather than open it to all.
    pub fn from_stored(bytes: &[u8], group: &str) -> Settings {
        Settings::decode(bytes).unwrap_or_else(|| {
            tracing::warn!(
                group,
                "group settings that do not parse: the group is closed"
            );
            Settings {
                invite: true,
                ..Settings::default()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn any_stored_bytes_are_read_or_refused(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..120)) {
            if let Some(settings) = Settings::decode(&bytes) {
                proptest::prop_assert_eq!(Settings::decode(&settings.encode()), Some(settings));
            }
        }
    }

    #[test]
    fn settings_give_roles_and_survive_a_round_trip() {
        let settings = Settings {
            invite: true,
            owner: Some("ann".into()),
            admins: ["bob".into()].into(),
        };
        assert_eq!(settings.role("ann"), Role::Owner);
        assert_eq!(settings.role("bob"), Role::Admin);
        assert_eq!(settings.role("cy"), Role::Member);
        assert_eq!(
            String::from_utf8(settings.encode()).unwrap(),
            r#"{"invite":true,"owner":"ann","admins":["bob"]}"#
        );
        assert_eq!(Settings::decode(&settings.encode()), Some(settings.clone()));
        assert_eq!(Settings::decode(b"{}"), Some(Settings::default()));
        assert_eq!(Settings::decode(b"1"), None);
        let closed = Settings::from_stored(b"{damaged", "g");
        assert!(closed.invite && closed.owner.is_none(), "{closed:?}");
        let without = settings.without("ann").without("bob");
        assert_eq!(without.owner, None);
        assert!(without.admins.is_empty() && without.invite);
    }
}
