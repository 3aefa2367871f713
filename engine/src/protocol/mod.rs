//! The chat protocol of PROTOCOL.md: what clients send (`inbound`), what the server
//! writes (`outbound`, through the small `json` writer), the id rule both share with the
//! HTTP API (`ids`), and token checks (`jwt`).

pub mod access;
pub mod codes;
pub mod ids;
pub mod inbound;
pub mod json;
pub mod jwt;
pub mod outbound;

/// Delivery priority of a message (PROTOCOL.md: `high` overtakes `normal` and `low`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    /// Overtakes everything else queued.
    High = 0,
    /// The default.
    #[default]
    Normal = 1,
    /// Goes after everything else.
    Low = 2,
}

impl Priority {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// Parses the wire name.
    pub fn parse(name: &str) -> Option<Priority> {
        match name {
            "high" => Some(Priority::High),
            "normal" => Some(Priority::Normal),
            "low" => Some(Priority::Low),
            _ => None,
        }
    }
}

/// A member's standing in a group (PROTOCOL.md v2, "Group access").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Role {
    /// Posts and reads.
    #[default]
    Member,
    /// Adds and removes members, named by the owner.
    Admin,
    /// Created the group: names admins, and no one removes it.
    Owner,
}

impl Role {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }
}

/// Milliseconds since the Unix epoch, the protocol's timestamp.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
