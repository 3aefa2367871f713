//! Conversation history through the store: chat messages that reach a device are kept
//! (queued ones are kept by the enqueue itself), `history` requests read a page back, and
//! a `read_receipt` without `senderId` asks the store who sent the message.

use bytes::Bytes;

use super::core::Reactor;
use crate::{
    protocol::{inbound::Change, now_ms, outbound, Priority},
    router::ConnAddr,
    store::{Amend, Amendment, Command},
    ws::frame,
};

impl Reactor {
    /// Asks the store for a page of `user`'s conversation with `peer`.
    pub(super) fn request_history(
        &mut self,
        slot: usize,
        generation: u32,
        user: &str,
        query: (&str, Option<u64>, usize),
    ) {
        let (peer, before, limit) = query;
        let command = Command::History {
            user: user.into(),
            peer: peer.into(),
            before,
            limit,
            requester: self.addr(slot, generation),
        };
        if self.store.send(command).is_err() {
            let text = "history cannot be read: the gateway is shutting down";
            self.send_error(slot, generation, "store_unavailable", text, None);
        }
    }

    /// Writes `history {peerId, messages}` (or the store's error) to the requester.
    pub(super) fn answer_history(
        &mut self,
        requester: ConnAddr,
        peer: &str,
        messages: &[Bytes],
        error: Option<&str>,
    ) {
        let (slot, generation) = (requester.slot as usize, requester.generation);
        if let Some(why) = error {
            let text = format!("history could not be read: {why}");
            return self.send_error(slot, generation, "store_error", &text, None);
        }
        self.json.clear();
        outbound::history(&mut self.json, peer, messages);
        let frame = frame::encode_text(&self.json);
        self.send(slot, generation, frame, Priority::Normal);
    }

    /// `message_edit`, `message_delete`, `reaction_add`, `reaction_remove`: the store
    /// applies the change to history (an edit or delete only from the message's sender),
    /// then the other side and the actor's other devices hear of it.
    pub(super) fn amend(
        &mut self,
        slot: usize,
        generation: u32,
        actor: &str,
        (message_id, peer): (&str, &str),
        change: &Change<'_>,
    ) {
        let amend = Amend {
            actor: actor.into(),
            peer: peer.into(),
            message_id: message_id.into(),
            change: Amendment::from_change(change),
            requester: self.addr(slot, generation),
        };
        if self.store.send(Command::Amend(Box::new(amend))).is_err() {
            let text = "the message cannot be changed: the gateway is shutting down";
            self.send_error(
                slot,
                generation,
                "store_unavailable",
                text,
                Some(message_id),
            );
        }
    }

    /// The store's answer to [`Reactor::amend`].
    pub(super) fn on_amended(&mut self, amend: Amend, found: bool, error: Option<String>) {
        let requester = amend.requester;
        let (slot, generation) = (requester.slot as usize, requester.generation);
        let reference = Some(&*amend.message_id);
        if let Some(why) = error {
            let text = format!("the message could not be changed: {why}");
            return self.send_error(slot, generation, "store_error", &text, reference);
        }
        if !found {
            let text =
                "no such message in this conversation (edits and deletes only by its sender)";
            return self.send_error(slot, generation, "not_found", text, reference);
        }
        self.json.clear();
        let who = (&*amend.message_id, &*amend.actor, &*amend.peer);
        outbound::amended(&mut self.json, who, &amend.change.as_change(), now_ms());
        let frame = frame::encode_text(&self.json);
        if amend.peer != amend.actor {
            self.deliver_durable(&amend.peer, frame.clone(), Priority::Normal);
        }
        self.deliver(&amend.actor, frame, Priority::Normal, Some(requester), None);
    }

    /// A `read_receipt` without `senderId`: the store finds the sender.
    pub(super) fn find_sender(&mut self, slot: usize, generation: u32, reader: &str, id: &str) {
        let command = Command::FindSender {
            reader: reader.into(),
            message_id: id.into(),
            requester: self.addr(slot, generation),
        };
        if self.store.send(command).is_err() {
            let text = "the message's sender cannot be looked up: the gateway is shutting down";
            self.send_error(slot, generation, "store_unavailable", text, Some(id));
        }
    }

    /// The store's answer to [`Reactor::find_sender`]: the receipt goes to the sender
    /// (queued if it is offline), or the reader hears that no such message reached it.
    pub(super) fn on_sender_found(
        &mut self,
        requester: ConnAddr,
        reader: &str,
        message_id: &str,
        sender: Option<Box<str>>,
        error: Option<String>,
    ) {
        let (slot, generation) = (requester.slot as usize, requester.generation);
        match (sender, error) {
            (Some(sender), _) => self.send_read_receipt(&sender, message_id, reader),
            (None, Some(why)) => {
                let text = format!("the message's sender could not be looked up: {why}");
                self.send_error(slot, generation, "store_error", &text, Some(message_id));
            }
            (None, None) => {
                let text = "no message with this id was delivered or queued to you";
                self.send_error(slot, generation, "not_found", text, Some(message_id));
            }
        }
    }

    /// Sends `read_receipt {messageId, readerId}` to every device of `sender`, queued if
    /// none is online.
    pub(super) fn send_read_receipt(&mut self, sender: &str, message_id: &str, reader: &str) {
        self.json.clear();
        outbound::read_receipt(&mut self.json, message_id, reader, now_ms());
        let frame = frame::encode_text(&self.json);
        self.deliver_durable(sender, frame, Priority::Normal);
    }
}
