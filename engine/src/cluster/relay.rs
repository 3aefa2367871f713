//! Live events between nodes, over NATS core: typing and call signals for a user's devices
//! on other nodes (docs/cluster.md, "Live delivery").
//!
//! A node subscribes to `chat.live.<user>` while it holds a device of the user, from the
//! first to the last ([`Relay::Watch`], [`Relay::Unwatch`], sent by the user's home shard
//! on this node). A home that delivers a typing or call signal to its own devices also
//! publishes it there ([`Relay::Live`]), so NATS hands it only to the nodes that hold a
//! device of the user, and never back to this node (the client connects with `no_echo`).
//! A call signal for a user with no device on this node is a request: "no responders"
//! means no node has one, and the caller hears `peer_offline`.
//!
//! What a node receives goes to the user's home reactor as a delivery for the devices
//! there ([`Durability::Relayed`]), which is never published again.

use std::{
    borrow::Cow,
    os::fd::{AsRawFd, RawFd},
    sync::{mpsc, Arc},
};

use async_nats::{client::RequestErrorKind, Client};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use hashbrown::HashMap;
use tokio::io::{unix::AsyncFd, Interest};
use tracing::{debug, error};

use crate::{
    protocol::{codes::OutKind, outbound::Outgoing, Priority},
    router::{ConnAddr, Delivery, Durability, Envelope},
    sockets::Doorbell,
    store::DoorbellSet,
};

/// The cluster thread's doorbell, as tokio waits on its eventfd.
struct BellFd(Arc<Doorbell>);

impl AsRawFd for BellFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.fd()
    }
}

/// What a shard asks of the cluster ([`crate::shard::Effect::Cluster`]).
#[derive(Debug)]
pub enum Relay {
    /// A first device of `user` is on this node: live events for the user come here, to
    /// home reactor `home`.
    Watch {
        /// The user.
        user: Arc<str>,
        /// The user's home reactor on this node.
        home: u16,
    },
    /// The last device of `user` on this node is gone.
    Unwatch {
        /// The user.
        user: Arc<str>,
    },
    /// A typing or call signal for `user`'s devices on other nodes.
    Live {
        /// The user.
        user: Arc<str>,
        /// The frame, as written to a socket.
        frame: Outgoing,
        /// Its outbound priority.
        priority: Priority,
        /// For a call signal that no device on this node took: the caller and the call
        /// id, told `peer_offline` when no node takes it either.
        call: Option<(ConnAddr, Box<str>)>,
    },
}

/// What the cluster thread hands a reactor.
#[derive(Debug)]
pub enum Inbound {
    /// Mail for the reactor, as from another reactor.
    Mail(Envelope),
    /// No node holds a device of the receiver of the call signal `reference` from
    /// connection `caller`.
    PeerOffline {
        /// The calling connection.
        caller: ConnAddr,
        /// The call id.
        reference: Box<str>,
    },
}

/// Where the cluster thread delivers to reactors: one channel each, and their doorbells.
pub struct Reactors {
    /// Per reactor, the sending side of its channel.
    pub senders: Vec<std::sync::mpsc::Sender<Inbound>>,
    /// The reactors' doorbells.
    pub doorbells: Arc<dyn DoorbellSet + Send + Sync>,
}

impl Reactors {
    fn send(&self, reactor: usize, inbound: Inbound) {
        let Some(sender) = self.senders.get(reactor) else {
            return;
        };
        if sender.send(inbound).is_ok() {
            self.doorbells.ring(reactor);
        }
    }
}

/// The subject carrying `user`'s live events.
pub(super) fn live_subject(user: &str) -> String {
    format!("chat.live.{}", subject_token(user))
}

/// `user` as one subject token: itself when it is letters, digits, `-` and `_` only,
/// else `~` and its bytes in hex (no plain token starts with `~`, so none collides).
fn subject_token(user: &str) -> Cow<'_, str> {
    let plain = !user.is_empty()
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        return Cow::Borrowed(user);
    }
    let mut token = String::with_capacity(1 + 2 * user.len());
    token.push('~');
    for byte in user.bytes() {
        token.push_str(&format!("{byte:02x}"));
    }
    Cow::Owned(token)
}

/// A live event on the wire: `[kind][priority][the WebSocket frame]`.
fn encode(frame: &Outgoing, priority: Priority) -> Option<Bytes> {
    let kind = match frame.kind {
        OutKind::Typing => 1,
        OutKind::Signal => 2,
        _ => return None,
    };
    let mut payload = BytesMut::with_capacity(2 + frame.bytes.len());
    payload.put_u8(kind);
    payload.put_u8(priority as u8);
    payload.put_slice(&frame.bytes);
    Some(payload.freeze())
}

/// The frame and priority of a live event, or `None` if it is not one.
fn decode(payload: &Bytes) -> Option<(Outgoing, Priority)> {
    let (&kind, rest) = payload.split_first()?;
    let (&priority, _) = rest.split_first()?;
    let kind = match kind {
        1 => OutKind::Typing,
        2 => OutKind::Signal,
        _ => return None,
    };
    let priority = match priority {
        0 => Priority::High,
        1 => Priority::Normal,
        2 => Priority::Low,
        _ => return None,
    };
    let bytes = payload.slice(2..);
    Some((Outgoing { kind, bytes }, priority))
}

/// The cluster thread's side of the relay: the subscriptions of the users this node holds.
pub(super) struct Relayer {
    client: Client,
    reactors: Arc<Reactors>,
    /// Per watched user, the task forwarding its subject (its subscription ends with it).
    watching: HashMap<Arc<str>, tokio::task::JoinHandle<()>>,
}

impl Relayer {
    pub(super) fn new(client: Client, reactors: Arc<Reactors>) -> Relayer {
        Relayer {
            client,
            reactors,
            watching: HashMap::new(),
        }
    }

    /// Carries out what the shards ask, woken by `doorbell`, until every reactor is gone
    /// (the engine stops) or the doorbell cannot be waited on.
    pub(super) async fn run(mut self, relays: mpsc::Receiver<Relay>, doorbell: Arc<Doorbell>) {
        // SAFETY: `BellFd` holds the doorbell, which owns the eventfd and closes it only
        // when dropped: the fd stays open, and is not replaced, while tokio watches it.
        let registered = unsafe {
            AsyncFd::register_with_interest(BellFd(doorbell.clone()), Interest::READABLE)
        };
        let bell = match registered {
            Ok(bell) => bell,
            Err(e) => return error!("cluster: the relay's doorbell cannot be waited on: {e}"),
        };
        loop {
            let Ok(mut ready) = bell.readable().await else {
                return error!("cluster: the relay's doorbell failed");
            };
            ready.clear_ready();
            // Cleared before the channel is drained: a relay sent after this rings again.
            doorbell.clear();
            loop {
                match relays.try_recv() {
                    Ok(relay) => self.carry_out(relay).await,
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            }
        }
    }

    async fn carry_out(&mut self, relay: Relay) {
        match relay {
            Relay::Watch { user, home } => self.watch(user, home).await,
            Relay::Unwatch { user } => {
                if let Some(task) = self.watching.remove(&user) {
                    task.abort();
                }
            }
            Relay::Live {
                user,
                frame,
                priority,
                call,
            } => self.publish(&user, &frame, priority, call),
        }
    }

    /// Subscribes to `user`'s live subject and forwards what comes to reactor `home`.
    async fn watch(&mut self, user: Arc<str>, home: u16) {
        let mut live = match self.client.subscribe(live_subject(&user)).await {
            Ok(live) => live,
            Err(e) => return debug!("cluster: live subscription for {user:?}: {e}"),
        };
        let (client, reactors, watched) =
            (self.client.clone(), self.reactors.clone(), user.clone());
        let task = tokio::spawn(async move {
            while let Some(message) = live.next().await {
                let Some((frame, priority)) = decode(&message.payload) else {
                    continue;
                };
                let delivery = Delivery {
                    user: (*watched).into(),
                    frame,
                    priority,
                    except: None,
                    ack: None,
                    copy_of: None,
                    accepted_ns: 0,
                    durability: Durability::Relayed,
                };
                let mail = Envelope::Deliver(Box::new(delivery));
                reactors.send(usize::from(home), Inbound::Mail(mail));
                // A call signal is a request: the answer says a node took it.
                if let Some(reply) = message.reply {
                    let _ = client.publish(reply, Bytes::new()).await;
                }
            }
        });
        if let Some(old) = self.watching.insert(user, task) {
            old.abort();
        }
    }

    /// Publishes a live event; a call signal as a request whose "no responders" tells
    /// the caller `peer_offline`.
    fn publish(
        &self,
        user: &str,
        frame: &Outgoing,
        priority: Priority,
        call: Option<(ConnAddr, Box<str>)>,
    ) {
        let Some(payload) = encode(frame, priority) else {
            return debug_assert!(false, "not a live event: {:?}", frame.kind);
        };
        let (client, subject) = (self.client.clone(), live_subject(user));
        let reactors = self.reactors.clone();
        tokio::spawn(async move {
            let Some((caller, reference)) = call else {
                if let Err(e) = client.publish(subject, payload).await {
                    debug!("cluster: live event not published: {e}");
                }
                return;
            };
            let answer = client.request(subject, payload).await;
            let nobody = answer.is_err_and(|e| e.kind() == RequestErrorKind::NoResponders);
            if nobody {
                let reactor = usize::from(caller.reactor);
                reactors.send(reactor, Inbound::PeerOffline { caller, reference });
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_are_their_own_token_and_others_are_hex() {
        assert_eq!(live_subject("alice_2-b"), "chat.live.alice_2-b");
        assert_eq!(live_subject("a.b"), "chat.live.~612e62");
        assert_eq!(live_subject("~61"), "chat.live.~7e3631");
        assert_eq!(live_subject(""), "chat.live.~");
        assert_eq!(live_subject("é"), "chat.live.~c3a9");
    }

    #[test]
    fn live_events_round_trip_and_nothing_else_is_one() {
        let frame = Outgoing::text(OutKind::Signal, br#"{"type":"signal"}"#);
        let payload = encode(&frame, Priority::High).unwrap();
        let (back, priority) = decode(&payload).unwrap();
        assert_eq!((back.kind, back.bytes), (frame.kind, frame.bytes));
        assert_eq!(priority, Priority::High);
        let message = Outgoing::text(OutKind::NewMessage, b"{}");
        assert!(encode(&message, Priority::Normal).is_none());
        for bad in [&b""[..], b"\x01", b"\x03\x00x", b"\x01\x07x"] {
            assert!(decode(&Bytes::copy_from_slice(bad)).is_none(), "{bad:?}");
        }
    }
}
