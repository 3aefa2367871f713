//! The protocol's closed sets of names, typed: what a client sends ([`MessageKind`]),
//! what the server writes ([`OutKind`]) and why it refuses ([`ErrorCode`]). Each is an
//! enum whose index counts it in [`crate::stats`] and whose name is its wire name, so a
//! new kind is one line here.

/// Declares an enum of wire names with its `NAMES` (in index order), `COUNT`, `name()`
/// and `index()`.
macro_rules! wire_names {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $wire:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every wire name, in index order.
            pub const NAMES: &'static [&'static str] = &[$($wire,)+];
            /// How many there are.
            pub const COUNT: usize = Self::NAMES.len();
            /// Every value, in index order.
            const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The wire name.
            pub const fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => $wire, )+
                }
            }

            /// Where it is counted (its position in [`Self::NAMES`]).
            pub const fn index(self) -> usize {
                self as usize
            }

            /// The value at `index`, if there is one.
            pub fn from_index(index: usize) -> Option<Self> {
                Self::ALL.get(index).copied()
            }
        }
    };
}

wire_names! {
    /// What a client message is (`invalid`: it could not be parsed).
    pub enum MessageKind {
        /// `auth`.
        Auth = "auth",
        /// `ack`.
        Ack = "ack",
        /// `send_message`.
        SendMessage = "send_message",
        /// `typing`.
        Typing = "typing",
        /// `read_receipt`.
        ReadReceipt = "read_receipt",
        /// `ping`.
        Ping = "ping",
        /// `presence_subscribe`.
        PresenceSubscribe = "presence_subscribe",
        /// `presence_unsubscribe`.
        PresenceUnsubscribe = "presence_unsubscribe",
        /// `history`.
        History = "history",
        /// `group_join`.
        GroupJoin = "group_join",
        /// `group_leave`.
        GroupLeave = "group_leave",
        /// `group_create`.
        GroupCreate = "group_create",
        /// `group_add`.
        GroupAdd = "group_add",
        /// `group_remove`.
        GroupRemove = "group_remove",
        /// `group_message`.
        GroupMessage = "group_message",
        /// `signal`.
        Signal = "signal",
        /// `message_edit`.
        MessageEdit = "message_edit",
        /// `message_delete`.
        MessageDelete = "message_delete",
        /// `reaction_add`.
        ReactionAdd = "reaction_add",
        /// `reaction_remove`.
        ReactionRemove = "reaction_remove",
        /// `auth_refresh`.
        AuthRefresh = "auth_refresh",
        /// A text frame that is not a message the protocol knows.
        Invalid = "invalid",
    }
}

wire_names! {
    /// What a frame or response the server queues is: the `type` of a JSON message,
    /// `http` for an HTTP response, `control` for a WebSocket control frame.
    pub enum OutKind {
        /// `new_message`.
        NewMessage = "new_message",
        /// `message_ack`.
        MessageAck = "message_ack",
        /// `auth_success`.
        AuthSuccess = "auth_success",
        /// `error`.
        Error = "error",
        /// `pong`.
        Pong = "pong",
        /// `typing`.
        Typing = "typing",
        /// `read_receipt`.
        ReadReceipt = "read_receipt",
        /// `presence_state`.
        PresenceState = "presence_state",
        /// `presence_update`.
        PresenceUpdate = "presence_update",
        /// `delivery_receipt`.
        DeliveryReceipt = "delivery_receipt",
        /// `history`.
        History = "history",
        /// `group_member`.
        GroupMember = "group_member",
        /// `signal`.
        Signal = "signal",
        /// `message_edited`.
        MessageEdited = "message_edited",
        /// `message_deleted`.
        MessageDeleted = "message_deleted",
        /// `reaction_added`.
        ReactionAdded = "reaction_added",
        /// `reaction_removed`.
        ReactionRemoved = "reaction_removed",
        /// `auth_refreshed`.
        AuthRefreshed = "auth_refreshed",
        /// An HTTP response.
        Http = "http",
        /// A WebSocket control frame (close, ping, pong).
        Control = "control",
        /// Anything else (no frame the server writes today).
        Other = "other",
    }
}

impl OutKind {
    /// Whether messages of this kind are inbox events (PROTOCOL.md v2): numbered by
    /// `seq` and kept until a device acknowledges them.
    pub fn is_inbox_event(self) -> bool {
        matches!(
            self,
            OutKind::NewMessage
                | OutKind::ReadReceipt
                | OutKind::DeliveryReceipt
                | OutKind::MessageEdited
                | OutKind::MessageDeleted
                | OutKind::ReactionAdded
                | OutKind::ReactionRemoved
                | OutKind::GroupMember
        )
    }
}

wire_names! {
    /// Why the server refuses a message: the `code` of an `error` reply.
    pub enum ErrorCode {
        /// Not JSON, or not a JSON object.
        BadJson = "bad_json",
        /// A field is missing, of the wrong type or out of range.
        BadRequest = "bad_request",
        /// A `type` the protocol does not have.
        UnknownType = "unknown_type",
        /// Anything but `auth` before `auth`.
        NotAuthenticated = "not_authenticated",
        /// The token was missing, invalid or expired (the connection then closes).
        AuthFailed = "auth_failed",
        /// The receiver has no device online and the message is never queued.
        PeerOffline = "peer_offline",
        /// The store could not keep what the message needed.
        PersistenceFailed = "persistence_failed",
        /// Only members may post to (or huddle in) a group.
        NotMember = "not_member",
        /// No such message.
        NotFound = "not_found",
        /// Over `--rate-limit`.
        RateLimited = "rate_limited",
        /// The store could not read what was asked.
        StoreError = "store_error",
        /// The store is gone (the gateway is shutting down).
        StoreUnavailable = "store_unavailable",
        /// Over `--groups-per-user-max`.
        TooManyGroups = "too_many_groups",
        /// It needs the cluster, and NATS is out of reach (`--cluster`).
        ClusterUnavailable = "cluster_unavailable",
        /// The group does not let this user do that (an invite-only group, an owner's
        /// or admin's action).
        Forbidden = "forbidden",
        /// `group_create` of a group that exists.
        Conflict = "conflict",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_indices_agree() {
        for (i, name) in MessageKind::NAMES.iter().enumerate() {
            assert_eq!(MessageKind::NAMES[i], *name);
        }
        assert_eq!(MessageKind::Invalid.index(), MessageKind::COUNT - 1);
        assert_eq!(ErrorCode::TooManyGroups.name(), "too_many_groups");
        assert_eq!(OutKind::NAMES[OutKind::Control.index()], "control");
    }

    #[test]
    fn indices_lead_back_to_their_values() {
        for (i, name) in OutKind::NAMES.iter().enumerate() {
            assert_eq!(OutKind::from_index(i).map(OutKind::name), Some(*name));
        }
        assert_eq!(OutKind::from_index(OutKind::COUNT), None);
    }
}
