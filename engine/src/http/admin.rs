//! The operator's API (`/api/admin/*`, behind the API token like every `/api/*` call):
//! which path and method ask what, and their bodies, parsed and validated into an
//! [`AdminRequest`]. Knows nothing of reactors; `shard::admin` answers.
//!
//! | call | asks |
//! |---|---|
//! | `GET /api/admin/users/{user}/devices` | the user's devices (on every node) |
//! | `POST /api/admin/disconnect` `{"user_id","device_id"?,"code"?}` | close them |
//! | `POST /api/admin/presence` `{"user_ids":[…]}` | presence of up to 1,000 users |
//! | `GET /api/admin/groups/{group}/members` | a group's members and roles |
//! | `POST /api/admin/groups/{group}/members` `{"user_id","role"?}` | add a member |
//! | `DELETE /api/admin/groups/{group}/members/{user}` | remove one |
//!
//! In a cluster the calls about users (devices, disconnect, presence) go to every node
//! too: [`AdminRequest::to_node`] and [`AdminRequest::from_node`] are their form on NATS.
//!
//! Not a hot path: bodies are parsed with serde_json.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    api::{check_id, id as string_id, parse_json as json, ApiError},
    request::percent_decode,
};
use crate::protocol::Role;

/// The most users one presence call may name.
pub const PRESENCE_USERS_MAX: usize = 1000;
/// The close code of a disconnect that names none: policy violation, which tells a client
/// library not to reconnect at once.
pub const DISCONNECT_CODE_DEFAULT: u16 = 1008;
/// The path every admin call starts with.
pub const PREFIX: &str = "/api/admin/";

/// One operator's request, validated. Those about users are said to other nodes as JSON
/// tagged with `"call"`; a group's are answered by one node and never leave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminRequest {
    /// A user's devices online.
    Devices {
        /// The user.
        user: String,
    },
    /// Close a user's devices, or one of them.
    Disconnect {
        /// The user.
        user: String,
        /// Only this device (all of them when `None`).
        device: Option<String>,
        /// The close code they get.
        code: u16,
    },
    /// Whether each user is online, and when each was last seen.
    Presence {
        /// The users, at most [`PRESENCE_USERS_MAX`], each once.
        users: Vec<String>,
    },
    /// A group's members, owner, admins and whether it is invite-only.
    #[serde(skip)]
    Members {
        /// The group.
        group: String,
    },
    /// Add a member (with a role) to a group, or remove one: an operator may do what an
    /// owner may, whoever is in the group.
    #[serde(skip)]
    Membership {
        /// The group.
        group: String,
        /// The member.
        user: String,
        /// `Some(role)`: add with this role (member or admin); `None`: remove.
        role: Option<Role>,
    },
}

impl AdminRequest {
    /// Whether the call asks about users, whose devices may be on any node (a group's
    /// call is answered by the group's home alone).
    pub fn about_users(&self) -> bool {
        matches!(
            self,
            AdminRequest::Devices { .. }
                | AdminRequest::Disconnect { .. }
                | AdminRequest::Presence { .. }
        )
    }

    /// The call as said to the other nodes of a cluster (one [`about_users`](Self::about_users)).
    pub fn to_node(&self) -> Vec<u8> {
        debug_assert!(self.about_users(), "a group's call stays on its node");
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A call another node said, checked as the HTTP API checks its own: ids, the number
    /// of users, the close code.
    pub fn from_node(said: &[u8]) -> Result<AdminRequest, String> {
        let call: AdminRequest = serde_json::from_slice(said).map_err(|e| e.to_string())?;
        let checked = |id: &str, what| check_id(id, what).map_err(|e| e.message);
        match &call {
            AdminRequest::Devices { user } => checked(user, "user_id")?,
            AdminRequest::Disconnect { user, device, code } => {
                checked(user, "user_id")?;
                if let Some(device) = device {
                    checked(device, "device_id")?;
                }
                if !close_code_allowed(*code) {
                    return Err(format!("close code {code} is not one an operator gives"));
                }
            }
            AdminRequest::Presence { users } => {
                if users.is_empty() || users.len() > PRESENCE_USERS_MAX {
                    return Err(format!("{} users asked", users.len()));
                }
                for user in users {
                    checked(user, "user_ids[]")?;
                }
            }
            AdminRequest::Members { .. } | AdminRequest::Membership { .. } => {
                unreachable!("never deserialized: skipped variants")
            }
        }
        Ok(call)
    }
}

/// The close codes a disconnect may give: normal, going away, policy, or an
/// application's own.
fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000 | 1001 | 1008 | 3000..=4999)
}

/// The methods a path under [`PREFIX`] takes, or `None` for a path that is not an admin
/// call.
pub fn methods(path: &str) -> Option<&'static [&'static str]> {
    let rest = path.strip_prefix(PREFIX)?;
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.as_slice() {
        ["disconnect"] | ["presence"] => Some(&["POST"]),
        ["users", _, "devices"] => Some(&["GET"]),
        ["groups", _, "members"] => Some(&["GET", "POST"]),
        ["groups", _, "members", _] => Some(&["DELETE"]),
        _ => None,
    }
}

/// Parses the call at `path` (one [`methods`] takes, with `method` among them) and its
/// `body`.
pub fn parse(method: &str, path: &str, body: &[u8]) -> Result<AdminRequest, ApiError> {
    let rest = path.strip_prefix(PREFIX).unwrap_or_default();
    let segments: Vec<&str> = rest.split('/').collect();
    match (method, segments.as_slice()) {
        ("POST", ["disconnect"]) => parse_disconnect(body),
        ("POST", ["presence"]) => parse_presence(body),
        ("GET", ["users", user, "devices"]) => Ok(AdminRequest::Devices {
            user: path_id(user, "user_id")?,
        }),
        ("GET", ["groups", group, "members"]) => Ok(AdminRequest::Members {
            group: path_id(group, "group_id")?,
        }),
        ("POST", ["groups", group, "members"]) => parse_add(path_id(group, "group_id")?, body),
        ("DELETE", ["groups", group, "members", user]) => Ok(AdminRequest::Membership {
            group: path_id(group, "group_id")?,
            user: path_id(user, "user_id")?,
            role: None,
        }),
        _ => Err(ApiError::bad_request("no such admin call")),
    }
}

/// A percent-encoded id in the path, checked as the WebSocket checks ids.
fn path_id(segment: &str, what: &str) -> Result<String, ApiError> {
    let id = percent_decode(segment)
        .ok_or_else(|| ApiError::bad_request(format!("the {what} is not percent-encoded UTF-8")))?;
    check_id(&id, what)?;
    Ok(id)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    user_id: Option<Value>,
    device_id: Option<Value>,
    code: Option<Value>,
}

fn parse_disconnect(body: &[u8]) -> Result<AdminRequest, ApiError> {
    let fields: DisconnectBody = json(body)?;
    let user = string_id(fields.user_id.as_ref(), "user_id")?;
    let device = match &fields.device_id {
        None => None,
        Some(value) => Some(string_id(Some(value), "device_id")?),
    };
    let code = match &fields.code {
        None => DISCONNECT_CODE_DEFAULT,
        Some(value) => value
            .as_u64()
            .and_then(|c| u16::try_from(c).ok())
            .filter(|&c| close_code_allowed(c))
            .ok_or_else(|| {
                ApiError::bad_request("'code' must be 1000, 1001, 1008, or from 3000 to 4999")
            })?,
    };
    Ok(AdminRequest::Disconnect { user, device, code })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceBody {
    user_ids: Option<Vec<Value>>,
}

fn parse_presence(body: &[u8]) -> Result<AdminRequest, ApiError> {
    let fields: PresenceBody = json(body)?;
    let Some(ids) = fields.user_ids else {
        return Err(ApiError::bad_request("missing field 'user_ids'"));
    };
    if ids.is_empty() || ids.len() > PRESENCE_USERS_MAX {
        return Err(ApiError::bad_request(format!(
            "'user_ids' must name from 1 to {PRESENCE_USERS_MAX} users"
        )));
    }
    let mut users = Vec::with_capacity(ids.len());
    for value in &ids {
        let user = string_id(Some(value), "user_ids[]")?;
        if !users.contains(&user) {
            users.push(user);
        }
    }
    Ok(AdminRequest::Presence { users })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    user_id: Option<Value>,
    role: Option<Value>,
}

fn parse_add(group: String, body: &[u8]) -> Result<AdminRequest, ApiError> {
    let fields: AddBody = json(body)?;
    let user = string_id(fields.user_id.as_ref(), "user_id")?;
    let role = match fields.role.as_ref().map(|r| r.as_str()) {
        None | Some(Some("member")) => Role::Member,
        Some(Some("admin")) => Role::Admin,
        Some(_) => {
            return Err(ApiError::bad_request(
                "'role' must be \"member\" or \"admin\"",
            ))
        }
    };
    Ok(AdminRequest::Membership {
        group,
        user,
        role: Some(role),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_call_is_found_by_path_and_method() {
        assert_eq!(methods("/api/admin/disconnect"), Some(&["POST"][..]));
        assert_eq!(
            methods("/api/admin/users/a%20b/devices"),
            Some(&["GET"][..])
        );
        assert_eq!(
            methods("/api/admin/groups/g/members"),
            Some(&["GET", "POST"][..])
        );
        assert_eq!(
            methods("/api/admin/groups/g/members/u"),
            Some(&["DELETE"][..])
        );
        assert_eq!(methods("/api/admin/users/u"), None);
        assert_eq!(methods("/api/stats"), None);
        assert_eq!(
            parse("GET", "/api/admin/users/%C3%A9lise/devices", b""),
            Ok(AdminRequest::Devices {
                user: "élise".into()
            })
        );
        let err = parse("GET", "/api/admin/users/a%20b/devices", b"").unwrap_err();
        assert!(err.message.contains("user_id"), "{err:?}");
        assert_eq!(
            parse("DELETE", "/api/admin/groups/team/members/bob", b""),
            Ok(AdminRequest::Membership {
                group: "team".into(),
                user: "bob".into(),
                role: None
            })
        );
    }

    #[test]
    fn bodies_are_checked_and_defaults_filled() {
        let disconnect = parse("POST", "/api/admin/disconnect", br#"{"user_id":"u"}"#);
        assert_eq!(
            disconnect,
            Ok(AdminRequest::Disconnect {
                user: "u".into(),
                device: None,
                code: DISCONNECT_CODE_DEFAULT
            })
        );
        let one = parse(
            "POST",
            "/api/admin/disconnect",
            br#"{"user_id":7,"device_id":"phone","code":4100}"#,
        );
        assert_eq!(
            one,
            Ok(AdminRequest::Disconnect {
                user: "7".into(),
                device: Some("phone".into()),
                code: 4100
            })
        );
        for bad in [
            &br#"{"user_id":"u","code":1006}"#[..],
            br#"{"user_id":"u","code":"x"}"#,
            br#"{"device_id":"d"}"#,
            br#"{"user_id":"u","extra":1}"#,
            b"{not json",
        ] {
            let err = parse("POST", "/api/admin/disconnect", bad).unwrap_err();
            assert_eq!(err.status, 400, "{err:?}");
        }
        let presence = parse(
            "POST",
            "/api/admin/presence",
            br#"{"user_ids":["a","b","a"]}"#,
        );
        assert_eq!(
            presence,
            Ok(AdminRequest::Presence {
                users: vec!["a".into(), "b".into()]
            })
        );
        let many: Vec<String> = (0..=PRESENCE_USERS_MAX).map(|i| format!("u{i}")).collect();
        let body = serde_json::json!({ "user_ids": many }).to_string();
        let err = parse("POST", "/api/admin/presence", body.as_bytes()).unwrap_err();
        assert!(err.message.contains("1000"), "{err:?}");
        let added = parse(
            "POST",
            "/api/admin/groups/team/members",
            br#"{"user_id":"bob","role":"admin"}"#,
        );
        assert_eq!(
            added,
            Ok(AdminRequest::Membership {
                group: "team".into(),
                user: "bob".into(),
                role: Some(Role::Admin)
            })
        );
        let err = parse(
            "POST",
            "/api/admin/groups/team/members",
            br#"{"user_id":"bob","role":"owner"}"#,
        )
        .unwrap_err();
        assert!(err.message.contains("role"), "{err:?}");
    }

    #[test]
    fn calls_about_users_cross_nodes_checked_again() {
        for call in [
            AdminRequest::Devices { user: "é".into() },
            AdminRequest::Disconnect {
                user: "u".into(),
                device: Some("d".into()),
                code: 4000,
            },
            AdminRequest::Presence {
                users: vec!["a".into(), "b".into()],
            },
        ] {
            assert!(call.about_users());
            assert_eq!(AdminRequest::from_node(&call.to_node()), Ok(call));
        }
        let group = AdminRequest::Members { group: "g".into() };
        assert!(!group.about_users());
        for bad in [
            &br#"{"call":"members","group":"g"}"#[..],
            br#"{"call":"devices","user":"a b"}"#,
            br#"{"call":"disconnect","user":"u","device":null,"code":1006}"#,
            br#"{"call":"presence","users":[]}"#,
            br#"{"call":"devices","user":"u","extra":1}"#,
            b"{not json",
        ] {
            let said = String::from_utf8_lossy(bad);
            assert!(AdminRequest::from_node(bad).is_err(), "{said}");
        }
    }
}
