//! What the simulated clients saw, and the invariants it must satisfy.
//!
//! Safety is checked on every frame as it arrives: nothing reaches a connection twice,
//! messages from one sending connection arrive in the order it sent them, a frame reaches
//! only a connection it concerns, and an ack answers a message its connection sent.
//! Liveness is checked once the world is quiet: every connection still open heard an ack
//! for each message it sent; every message acknowledged `sent` reached
//! each device of its receiver that was online before it was sent and stayed connected;
//! every message acknowledged `queued` reached a device of its receiver in the end,
//! crashes or not; and every watcher's view of presence is the truth.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde_json::Value;

/// A connection as the oracle knows it (by its index in the world).
#[derive(Debug, Default)]
pub struct ConnView {
    /// Its user.
    pub user: String,
    /// Its device (index in the world's devices).
    device: usize,
    /// A v2 device (it resumes and acks), and the `seq` it resumed from.
    resume: Option<u64>,
    /// What its `auth_success` said of the resume.
    resumed: Option<bool>,
    /// The `seq` of every inbox event it got.
    seqs: BTreeSet<u64>,
    /// The crash epoch it lived in.
    pub epoch: u32,
    /// The step it got `auth_success`, once it has.
    pub online_at: Option<u64>,
    /// Closed (by the client, the server or a crash).
    pub closed: bool,
    /// `(sender, messageId)` of every `new_message` it got.
    got: HashSet<(String, String)>,
    /// Per `(sending connection, channel)`, the last send number it got online.
    last_seq: HashMap<(usize, String), u64>,
    /// What it last heard of each user it watches: online or not.
    presence: BTreeMap<String, bool>,
    /// Users it subscribed to and has not unsubscribed from.
    watching: BTreeSet<String>,
    /// Users it ever subscribed to (updates may still be on their way after an
    /// unsubscribe).
    ever_watched: BTreeSet<String>,
    /// Message ids it sent, whose acks it may get.
    pub sent: HashSet<String>,
    /// Direct messages it sent (each attempt) and heard no ack for yet.
    unanswered: usize,
    /// Huddle rooms it asked to enter (a room's signals may reach it only then).
    rooms: HashSet<String>,
}

/// How a message was acknowledged to its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acked {
    /// A device got it.
    Sent,
    /// It is stored for the offline receiver.
    Queued,
    /// Refused (queue full, offline at shutdown, persistence failure).
    Refused,
}

/// A direct message as its sender sent it (the first attempt; retries reuse the id).
#[derive(Debug)]
struct Message {
    receiver: String,
    /// The step of each attempt.
    attempts: Vec<u64>,
    /// The connections that sent an attempt (a message to oneself skips the sending
    /// device).
    senders: Vec<usize>,
    /// The crash epoch of the last attempt.
    epoch: u32,
    /// Every ack the sender got for it.
    acks: Vec<(Acked, u64)>,
}

/// The simulator's bookkeeping and judge.
#[derive(Debug, Default)]
pub struct Oracle {
    /// Every connection ever made, by world index.
    pub conns: Vec<ConnView>,
    /// `(sender, messageId)` → the message.
    messages: BTreeMap<(String, String), Message>,
    /// Groups each user ever asked to join.
    joined: HashSet<(String, String)>,
    /// `(user, messageId)` pairs any connection of the user got, over the whole run.
    reached: HashSet<(String, String, String)>,
    /// The current crash epoch.
    pub epoch: u32,
    /// The current step.
    pub step: u64,
    /// Huddle signals that reached a connection in their room.
    pub huddle_signals: usize,
    /// Devices closed for leaving the inbox bound unacknowledged (4002).
    pub overdue_closes: usize,
    /// History pages read.
    pub history_pages: usize,
    /// Edits that reached a party of their conversation.
    pub edits_seen: usize,
    /// Per v2 device, the highest `seq` it got (what it resumes from).
    device_seq: HashMap<usize, u64>,
    /// Resumes honoured and refused.
    pub resumes: (usize, usize),
    /// Per store start (the high 32 bits of the `seq`s it gives out), every inbox event
    /// `(user, seq)` the store held when it began: its direct messages are what the homes'
    /// dedup windows must begin with.
    held_at_start: HashMap<u64, HashSet<(String, u64)>>,
    /// Per device and direct message, the `seq` of the first event that carried it.
    copies: HashMap<DirectCopy, u64>,
    /// Retries of a message whose last attempt was before a crash.
    pub retried_after_crash: usize,
    /// Messages a device got under two `seq`s as the README allows (the first copy was
    /// not in the window the restart began with: pruned, or lost uncommitted).
    pub allowed_twice: usize,
}

/// One device's copy of a direct message: `(device, inbox user, sender, messageId, the
/// copy to the sender's other devices)`.
type DirectCopy = (usize, String, String, String, bool);

impl Oracle {
    /// A new connection `index` of `user`'s device `device` (a v2 device resumes from
    /// the `seq` given).
    pub fn connected(&mut self, index: usize, user: &str, device: usize, (v2, seq): (bool, u64)) {
        assert_eq!(index, self.conns.len());
        self.conns.push(ConnView {
            user: user.into(),
            epoch: self.epoch,
            device,
            resume: v2.then_some(seq),
            ..ConnView::default()
        });
    }

    /// Connection `conn`'s `auth_success` said this of its resume.
    pub fn greeted(&mut self, conn: usize, resumed: Option<bool>) {
        self.conns[conn].resumed = resumed;
        match resumed {
            Some(true) => self.resumes.0 += 1,
            Some(false) => self.resumes.1 += 1,
            None => {}
        }
    }

    /// A resume was refused: the device re-syncs, and what it gets may repeat what it
    /// got before.
    pub fn resync(&mut self, conn: usize) {
        let device = self.conns[conn].device;
        self.device_seq.remove(&device);
    }

    /// Connection `conn` got an inbox event numbered `seq`: never twice on one
    /// connection, and for a v2 device always above every `seq` it got before, across
    /// its connections (no gap is judged here: events a device is not sent, such as the
    /// copy of its own message, leave gaps).
    pub fn numbered(&mut self, conn: usize, seq: u64) -> Result<(), String> {
        let view = &mut self.conns[conn];
        if !view.seqs.insert(seq) {
            return Err(format!("conn {conn} got seq {seq} twice"));
        }
        if view.resume.is_some() {
            let last = self.device_seq.entry(view.device).or_default();
            if seq <= *last {
                return Err(format!(
                    "conn {conn} (device {}) got seq {seq} after {last}",
                    view.device
                ));
            }
            *last = seq;
        }
        Ok(())
    }

    /// Store start `start` began with the inbox events `held`.
    pub fn started(&mut self, start: u64, held: HashSet<(String, u64)>) {
        self.held_at_start.insert(start, held);
    }

    /// Connection `conn` got direct message `frame` as inbox event `seq`: a device gets
    /// one message under one `seq`, however often its sender retried it and across
    /// crashes. The exception is the one the README's "Dedup" names: a retry in a later
    /// process lifetime whose first copy that lifetime's windows did not begin with
    /// (pruned from the inbox, or lost uncommitted in the crash) reaches devices again.
    pub fn direct_copy(&mut self, conn: usize, seq: u64, frame: &Value) -> Result<(), String> {
        let view = &self.conns[conn];
        let text = |key: &str| frame[key].as_str().unwrap_or_default().to_owned();
        let (sender, id) = (text("senderId"), text("messageId"));
        let copy = text("receiverId") != view.user;
        let key = (view.device, view.user.clone(), sender, id, copy);
        let first = *self.copies.entry(key.clone()).or_insert(seq);
        if first == seq {
            return Ok(());
        }
        let (earlier, later) = (first.min(seq), first.max(seq));
        let (_, user, sender, id, _) = key;
        let start = later >> 32;
        let seeded = self
            .held_at_start
            .get(&start)
            .is_some_and(|held| held.contains(&(user, earlier)));
        if start == earlier >> 32 || seeded {
            return Err(format!(
                "conn {conn} (device {}) got {sender}/{id} as seq {earlier} and again as {later}",
                view.device
            ));
        }
        self.allowed_twice += 1;
        Ok(())
    }

    /// For a connection whose resume was honoured: the `seq` it resumed from and the
    /// `seq`s it got.
    pub fn resumed_view(&self, conn: usize) -> Option<(u64, &BTreeSet<u64>)> {
        let view = &self.conns[conn];
        match (view.resume, view.resumed) {
            (Some(from), Some(true)) => Some((from, &view.seqs)),
            _ => None,
        }
    }

    /// A direct message is sent (or retried) by connection `conn`.
    /// Connection `conn` posts message `message_id` to a group (answered with an ack or
    /// an error, which the oracle does not count).
    pub fn posting(&mut self, conn: usize, message_id: &str) {
        self.conns[conn].sent.insert(message_id.into());
    }

    /// Connection `conn` sends direct message `message_id` to `receiver` (again, for a
    /// retry).
    pub fn sending(&mut self, conn: usize, message_id: &str, receiver: &str) {
        let sender = self.conns[conn].user.clone();
        self.conns[conn].sent.insert(message_id.into());
        self.conns[conn].unanswered += 1;
        let message = self
            .messages
            .entry((sender, message_id.into()))
            .or_insert_with(|| Message {
                receiver: receiver.into(),
                attempts: Vec::new(),
                senders: Vec::new(),
                epoch: 0,
                acks: Vec::new(),
            });
        assert_eq!(
            message.receiver, receiver,
            "a retry names the first receiver"
        );
        if !message.attempts.is_empty() && message.epoch < self.epoch {
            self.retried_after_crash += 1;
        }
        message.attempts.push(self.step);
        message.senders.push(conn);
        message.epoch = self.epoch;
    }

    /// Connection `conn` subscribes to (or unsubscribes from) `user`'s presence.
    pub fn watch(&mut self, conn: usize, user: &str, subscribe: bool) {
        let view = &mut self.conns[conn];
        if subscribe {
            view.watching.insert(user.into());
            view.ever_watched.insert(user.into());
        } else {
            view.watching.remove(user);
        }
    }

    /// Connection `conn` asked to enter huddle room `room`.
    pub fn entering(&mut self, conn: usize, room: &str) {
        self.conns[conn].rooms.insert(room.into());
    }

    /// A user asked to join a group.
    pub fn joining(&mut self, user: &str, group: &str) {
        self.joined.insert((user.into(), group.into()));
    }

    /// Connection `conn` got an ack for `message_id`.
    pub fn acked(&mut self, conn: usize, message_id: &str, acked: Acked) -> Result<(), String> {
        let view = &mut self.conns[conn];
        if !view.sent.contains(message_id) {
            return Err(format!(
                "conn {conn} got an ack for {message_id}, which it never sent"
            ));
        }
        if let Some(message) = self
            .messages
            .get_mut(&(view.user.clone(), message_id.into()))
        {
            message.acks.push((acked, self.step));
            if view.unanswered == 0 {
                return Err(format!("conn {conn} got more acks than it sent messages"));
            }
            view.unanswered -= 1;
        }
        Ok(())
    }

    /// Connection `conn` got a frame (`via_queue`: from its user's offline queue).
    pub fn received(&mut self, conn: usize, frame: &Value, via_queue: bool) -> Result<(), String> {
        let step = self.step;
        let view = &mut self.conns[conn];
        let text = |key: &str| frame[key].as_str().unwrap_or_default().to_owned();
        match frame["type"].as_str().unwrap_or_default() {
            "auth_success" => {
                if view.online_at.is_some() {
                    return Err(format!("conn {conn} got auth_success twice"));
                }
                view.online_at = Some(step);
            }
            "new_message" => {
                let (sender, id) = (text("senderId"), text("messageId"));
                let group = frame["groupId"].as_str();
                let concerned = match group {
                    Some(group) => self.joined.contains(&(view.user.clone(), group.into())),
                    None => text("receiverId") == view.user || sender == view.user,
                };
                if !concerned {
                    return Err(format!("conn {conn} of {} got {frame}", view.user));
                }
                if !view.got.insert((sender.clone(), id.clone())) {
                    return Err(format!("conn {conn} got {sender}/{id} twice"));
                }
                let reached = (view.user.clone(), sender.clone(), id);
                self.reached.insert(reached);
                // content is "<sending conn>:<send number>"
                let content = text("content");
                let (from, seq) = content.split_once(':').ok_or("content without a number")?;
                let key = (
                    from.parse().unwrap_or(usize::MAX),
                    group.unwrap_or("direct").into(),
                );
                let seq: u64 = seq.parse().map_err(|_| "bad send number")?;
                if !via_queue {
                    let last = view.last_seq.entry(key).or_default();
                    if seq <= *last {
                        return Err(format!(
                            "conn {conn} got {sender}'s send {seq} from conn {from} after {last}"
                        ));
                    }
                    *last = seq;
                }
            }
            "signal" if text("kind").starts_with("huddle:") => {
                let room = text("callId");
                if !view.rooms.contains(&room) {
                    return Err(format!(
                        "conn {conn} got a signal of huddle {room}, never entered"
                    ));
                }
                self.huddle_signals += 1;
            }
            "history" => {
                // Only the conversation asked for, newest first.
                let peer = text("peerId");
                let mut last = u64::MAX;
                for message in frame["messages"].as_array().into_iter().flatten() {
                    let pair = [&message["senderId"], &message["receiverId"]];
                    let ours = pair
                        .iter()
                        .all(|u| *u == view.user.as_str() || *u == peer.as_str());
                    let at = message["timestamp"].as_u64().unwrap_or(0);
                    if !ours || at > last {
                        return Err(format!("conn {conn} of {} got history {frame}", view.user));
                    }
                    last = at;
                }
                self.history_pages += 1;
            }
            "message_edited" => {
                let parties = [text("senderId"), text("receiverId")];
                if !parties.contains(&view.user) {
                    return Err(format!("conn {conn} of {} got {frame}", view.user));
                }
                self.edits_seen += 1;
            }
            "presence_state" => {
                for entry in frame["users"].as_array().into_iter().flatten() {
                    let user = entry["userId"].as_str().unwrap_or_default().to_owned();
                    let online = entry["status"].as_str() == Some("online");
                    view.presence.insert(user, online);
                }
            }
            "presence_update" => {
                let user = text("userId");
                if !view.ever_watched.contains(&user) {
                    return Err(format!("conn {conn} got presence of {user}, never watched"));
                }
                view.presence.insert(user, text("status") == "online");
            }
            _ => {}
        }
        Ok(())
    }

    /// Once the world is quiet, before anyone reconnects: acknowledged `sent` messages
    /// reached the devices that were online for them; watchers see the truth.
    pub fn check_quiet(&self) -> Result<(), String> {
        let online_users: HashSet<&str> = self
            .conns
            .iter()
            .filter(|c| !c.closed && c.epoch == self.epoch && c.online_at.is_some())
            .map(|c| c.user.as_str())
            .collect();
        for ((sender, id), message) in &self.messages {
            let Some(&(_, acked_at)) = message.acks.iter().find(|(a, _)| *a == Acked::Sent) else {
                continue;
            };
            if message.epoch != self.epoch {
                continue;
            }
            let first = message.attempts[0];
            for (index, conn) in self.conns.iter().enumerate() {
                let owed = conn.user == message.receiver
                    && !message.senders.contains(&index)
                    && !conn.closed
                    && conn.epoch == self.epoch
                    && conn.online_at.is_some_and(|at| at < first);
                if owed && !conn.got.contains(&(sender.clone(), id.clone())) {
                    return Err(format!(
                        "{sender}/{id} acked sent at step {acked_at} never reached conn \
                         {index} of {}, online since step {:?}",
                        message.receiver, conn.online_at
                    ));
                }
            }
        }
        for (index, conn) in self.conns.iter().enumerate() {
            if conn.closed || conn.epoch != self.epoch || conn.online_at.is_none() {
                continue;
            }
            if conn.unanswered > 0 {
                return Err(format!(
                    "conn {index} heard no ack for {} of the messages it sent",
                    conn.unanswered
                ));
            }
            for user in &conn.watching {
                let truth = online_users.contains(user.as_str());
                if conn.presence.get(user) != Some(&truth) {
                    return Err(format!(
                        "conn {index} sees {user} as {:?}, but online is {truth}",
                        conn.presence.get(user)
                    ));
                }
            }
        }
        Ok(())
    }

    /// At the very end, after every user reconnected and caught up: nothing
    /// acknowledged (`sent` or `queued`: both follow the commit) was lost, crashes or not.
    /// (A message to oneself is had by the device that sent it, whose acks cover it: a
    /// device without `resume` that connects later need not get it, as in v1 a copy to
    /// one's own devices was never queued.)
    pub fn check_nothing_lost(&self) -> Result<(), String> {
        for ((sender, id), message) in &self.messages {
            if *sender == message.receiver {
                continue;
            }
            let acked = message
                .acks
                .iter()
                .any(|(a, _)| matches!(a, Acked::Sent | Acked::Queued));
            let reached = (message.receiver.clone(), sender.clone(), id.clone());
            if acked && !self.reached.contains(&reached) {
                return Err(format!(
                    "{sender}/{id} to {} was acked ({:?}) and never delivered",
                    message.receiver, message.acks
                ));
            }
        }
        Ok(())
    }

    /// How many messages were acknowledged each way (for the run's summary).
    pub fn ack_counts(&self) -> (usize, usize, usize) {
        let mut counts = (0, 0, 0);
        for message in self.messages.values() {
            match message.acks.first().map(|(a, _)| *a) {
                Some(Acked::Sent) => counts.0 += 1,
                Some(Acked::Queued) => counts.1 += 1,
                Some(Acked::Refused) => counts.2 += 1,
                None => {}
            }
        }
        counts
    }
}
