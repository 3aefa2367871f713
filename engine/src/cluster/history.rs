//! Conversation history in JetStream: a cluster node's side of the store for history,
//! edits, deletes, reactions and the message index (docs/cluster.md, "History"), spoken
//! over the relay's own NATS connection like [`super::inboxes`]. Every node reads and
//! writes the same history, and none keeps it on its own disk.
//!
//! - Streams `CHAT_HISTORY_<shard>` hold every conversation, subject
//!   `chat.history.<shard>.<lower user>.<higher user>`, each in its shard ([`Shards`]). Its entries are the conversation's
//!   messages (`new_message` JSON) and the changes to them (edits, deletes, reactions),
//!   each with header `Chat-Prev`: the conversation's entry before it. A node appends with
//!   a compare-and-set on the conversation's last entry (`Nats-Expected-Last-Subject-
//!   Sequence`), so the entries make one chain per conversation however many nodes write.
//!   A node remembers each conversation's last entry only while it appends to it; else
//!   it assumes a new conversation, and a refusal says where the conversation ends.
//! - A page is read newest first along the chain, one direct get by sequence after
//!   another (nats-server 2.9 has no get of a subject's previous message, and its get of
//!   the next one reads every message in between): changes met on the way apply to the
//!   message they name when it is reached. The chain is in the order messages were
//!   stored, which is not always the order they were sent (a message whose storing
//!   waited for NATS comes after later ones), so a page is ordered by the time each was
//!   sent, as on one node: each entry says when it was stored (`Chat-Stored`, the
//!   appending node's clock), and the walk goes on past a full page until the entries
//!   were stored before the page's oldest message was sent (give or take
//!   [`CLOCK_SKEW`]), so no message sent later is left behind.
//! - Buckets `chat_received_<shard>` index each message by its receiver and id: its value is the
//!   sender and the inbox `seq`. It finds the sender of a `read_receipt` without
//!   `senderId`, lets an edit check who sent the message, and recognises a retry after
//!   JetStream's 2-minute duplicate window: a message is indexed with a create-only write
//!   first, and kept in its conversation only if the create succeeds, or the key names
//!   another sender, or this very message (its first answer was lost). Meanwhile its
//!   entry waits in its conversation's queue, so entries keep their order.
//! - Writes that a cut from NATS, a timeout or an unavailable JetStream interrupts go
//!   again (after 0.5 s, or once the streams are back); a page or a change asked for
//!   meanwhile fails (`cluster_unavailable`).

use std::{collections::VecDeque, sync::Arc, time::Duration};

use bytes::Bytes;
use hashbrown::HashMap;
use serde_json::Value;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{
    inboxes::{KeptChat, StreamSettings},
    received::{index_bucket, index_key, index_stream, parse_index, IndexKey},
    relay::{from_subject_token, subject_token},
    requests::{self, direct_get, Requests, STREAM_DIFFERS, WRONG_LAST_SEQUENCE},
    shards::Shards,
    wire,
};
use crate::store::{
    answers,
    history::{self, Page},
    Amend, Amendment, Command, Failure, Reply, StoreStats, Waiter,
};

/// The streams of the conversations: `CHAT_HISTORY_<shard>`.
const STREAM: &str = "CHAT_HISTORY";
/// The header naming a conversation's entry before this one (0: none).
const PREV_HEADER: &str = "Chat-Prev";
/// The header saying what an entry is: `m <sender> <message id> <sent at ms>` for a
/// message, `c <actor> <sender> <message id>` for a change (each id a subject token).
const ENTRY_HEADER: &str = "Chat-Entry";
/// The header saying when an entry was appended (Unix ms, the appending node's clock).
const STORED_HEADER: &str = "Chat-Stored";
/// How far apart the nodes' clocks may be: a page's walk goes this much further back
/// than the stored times say it need.
const CLOCK_SKEW: u64 = 5_000;
/// A page's walk keeps at most this many times its limit of messages before it stops.
const PAGE_WALK_MAX: usize = 4;
/// How long JetStream keeps a message id to recognise a retry.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Entries waiting to be appended, over every conversation: past it a message's entry
/// is dropped (and counted as a persistence failure) rather than held without bound.
const WAITING_MAX: usize = 65_536;
/// How long after a failed set-up of the streams it is asked for again, if messages wait.
const SETUP_AGAIN_AFTER: Duration = Duration::from_secs(2);
/// How long a message waits after JetStream was unavailable, before it is sent again.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// What a finished append answers.
enum Then {
    /// A message kept: counted.
    Recorded,
    /// A change: its asker hears it was made.
    Amended(Box<Amend>),
}

/// One entry to append to a conversation.
struct Entry {
    /// Its number on this node, by which its index check finds it.
    id: u64,
    /// Appendable: a change at once, a message once its index check said so.
    checked: bool,
    /// `ENTRY_HEADER`'s value.
    what: String,
    /// For a message: its `Nats-Msg-Id`, which makes a retry within the duplicate window
    /// land on the first copy.
    msg_id: Option<String>,
    payload: Bytes,
    then: Then,
}

/// A message's index check: its key is written create-only, and its entry, waiting in
/// its conversation's tail meanwhile (so that entries keep their order), is appended
/// once the check passes.
struct Keep {
    subject: String,
    /// The entry's id.
    entry: u64,
    key: IndexKey,
    sender: Box<str>,
    /// The index value: the sender and the inbox event's `seq`, which tells this
    /// message's own earlier attempt (the same `seq`) from a client's retry that its
    /// receiver's inbox stored again (another one).
    value: String,
}

/// A conversation's appends: the last entry's sequence when known, and the entries
/// waiting behind the one under way (one at a time, so a node never races itself).
#[derive(Default)]
struct Tail {
    last: Option<u64>,
    busy: bool,
    waiting: VecDeque<Entry>,
    /// After a refusal JetStream may get over (a leader being elected), appends wait
    /// until then.
    paused_until: Option<Instant>,
}

/// A message in a conversation: its sender and id.
type MessageKey = (Box<str>, Box<str>);

/// A page read under way, along a conversation's chain.
struct PageRead {
    /// The conversation's shard, whose stream the chain is read from.
    shard: u16,
    requester: Waiter,
    peer: Box<str>,
    before: u64,
    page: Page,
    /// Messages sent before `before` met on the way, with when each was sent.
    found: Vec<(u64, Bytes)>,
    /// The send times of the newest `limit` of them (the smallest on top).
    newest: std::collections::BinaryHeap<std::cmp::Reverse<u64>>,
    limit: usize,
    /// Changes met on the way, by `(sender, message id)`, newest first.
    changes: HashMap<MessageKey, Vec<(Box<str>, Amendment)>>,
}

impl PageRead {
    /// A message sent at `at` met on the way (`before` was checked).
    fn found(&mut self, at: u64, json: Bytes) {
        self.found.push((at, json));
        self.newest.push(std::cmp::Reverse(at));
        if self.newest.len() > self.limit {
            self.newest.pop();
        }
    }

    /// Whether the walk may stop at an entry stored at `stored_ms`: the page is full, and
    /// every entry before it was stored, so sent, before the page's oldest message was
    /// sent (or enough was read).
    fn walked_far_enough(&self, stored_ms: u64) -> bool {
        if self.found.len() >= self.limit.saturating_mul(PAGE_WALK_MAX) {
            return true;
        }
        match self.newest.peek() {
            Some(&std::cmp::Reverse(oldest)) if self.newest.len() >= self.limit => {
                stored_ms.saturating_add(CLOCK_SKEW) < oldest
            }
            _ => false,
        }
    }

    /// The page: what was found, newest sent first; `more` when older messages remain.
    fn finish(mut self, more: bool) -> (usize, Reply) {
        self.found.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
        let mut cut = false;
        for (at, json) in std::mem::take(&mut self.found) {
            if !self.page.offer(at, json) {
                cut = true;
                break;
            }
        }
        let page = self.page.finish(more || cut);
        answers::history_answer(self.requester, &self.peer, page, None)
    }
}

/// An edit, delete or reaction being checked against the index.
struct AmendCheck {
    amend: Box<Amend>,
    /// Checking whether the actor sent it (else whether the peer did, for a reaction).
    own: bool,
}

/// A request on its way to JetStream.
enum Pending {
    /// The creation of stream `n` (the conversations' shards, then the index's).
    Setup(usize),
    /// A message's create-only index write: its entry follows if it is new.
    Index(Box<Keep>),
    /// The index key existed: whose message it names.
    IndexHeld(Box<Keep>),
    /// An index write over another sender's message with the same id.
    IndexOver,
    /// An append to a conversation.
    Append { subject: String, entry: Entry },
    /// The next entry of a page.
    Page(Box<PageRead>),
    /// The index's answer to a `read_receipt`: who sent the message (checked against
    /// the `senderId` it named, if any).
    Sender {
        requester: Waiter,
        reader: Box<str>,
        message_id: Box<str>,
        named: Option<Box<str>>,
    },
    /// The index's answer for an edit, delete or reaction.
    Amend(Box<AmendCheck>),
}

/// The history's side of the relay's connection.
pub(super) struct History {
    streams: StreamSettings,
    /// The streams are known on this connection.
    ready: bool,
    /// The index's stream was set up once: it is there for inboxes' retry checks.
    indexed: bool,
    /// Commands that came before the streams were known.
    held: Vec<Command>,
    /// Requests under way (answers to `<inbox>k<number>`).
    requests: Requests<Pending>,
    tails: HashMap<String, Tail>,
    /// Messages waiting to be indexed (while the streams are not known, or until
    /// `index_paused_until` after JetStream was unavailable).
    to_index: Vec<Keep>,
    index_paused_until: Option<Instant>,
    /// When the streams' set-up, which failed, is asked for again.
    setup_again_at: Option<Instant>,
    /// Messages waiting, in `to_index` and every tail.
    waiting: usize,
    /// Entries numbered so far.
    entries: u64,
    stats: Arc<StoreStats>,
    /// The wall clock each entry's `Chat-Stored` is read from.
    wall_ms: fn() -> u64,
}

impl History {
    /// The history of a relay whose answers come to `inbox` (`_INBOX.<random>.`), in
    /// streams made with `streams` (kept `--retention-days`), counted in `stats`.
    pub(super) fn new(inbox: &str, streams: StreamSettings, stats: Arc<StoreStats>) -> History {
        History {
            requests: Requests::new(inbox, 'k'),
            streams,
            ready: false,
            indexed: false,
            held: Vec::new(),
            tails: HashMap::new(),
            to_index: Vec::new(),
            index_paused_until: None,
            setup_again_at: None,
            waiting: 0,
            entries: 0,
            stats,
            wall_ms: crate::protocol::now_ms,
        }
    }

    /// Dates entries by `wall_ms` instead of the system's clock (a simulator's).
    #[cfg(any(test, feature = "simulation"))]
    pub(super) fn with_wall_clock(mut self, wall_ms: fn() -> u64) -> History {
        self.wall_ms = wall_ms;
        self
    }

    /// Whether the message index's stream was set up on any connection so far (it
    /// outlives a reconnection, so inboxes keep looking retries up while the streams
    /// are made sure of again).
    pub(super) fn indexed(&self) -> bool {
        self.indexed
    }

    /// Whether `command` is one this side carries out.
    pub(super) fn takes(command: &Command) -> bool {
        matches!(
            command,
            Command::History { .. } | Command::FindSender { .. } | Command::Amend(_)
        )
    }

    /// The relay is connected: the streams are made sure of, then what waited goes on.
    pub(super) fn connected(&mut self, out: &mut bytes::BytesMut) {
        self.set_up(0, out);
    }

    /// The relay lost its connection: reads and changes under way fail (their askers
    /// hear `cluster_unavailable`); messages under way are appended again later.
    pub(super) fn disconnected(&mut self) -> Vec<(usize, Reply)> {
        self.ready = false;
        let mut replies = Vec::new();
        let pending = self.requests.drain();
        for pending in pending {
            self.fail(pending, &mut replies);
        }
        for command in std::mem::take(&mut self.held) {
            replies.extend(answers::unread_answer(&command, Failure::Unreachable));
        }
        replies
    }

    /// Keeps a chat message its receiver's inbox kept.
    pub(super) fn record(&mut self, kept: KeptChat, out: &mut bytes::BytesMut) {
        let KeptChat {
            user: receiver,
            chat,
            json,
            seq,
        } = kept;
        if self.waiting >= WAITING_MAX {
            warn!("cluster: too many history entries wait for JetStream; one is dropped");
            self.stats
                .failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        let (sender, id) = (subject_token(&chat.sender), subject_token(&chat.message_id));
        let subject = conversation_subject(self.streams.shards, &chat.sender, &receiver);
        let entry = self.new_entry(format!("m {sender} {id} {}", chat.timestamp_ms), json);
        let keep = Keep {
            subject: subject.clone(),
            value: format!("{sender} {seq}"),
            entry: entry.id,
            key: index_key(self.streams.shards, &receiver, &chat.message_id),
            sender: chat.sender.as_ref().into(),
        };
        let entry = Entry {
            msg_id: Some(format!("{sender} {id} {}", subject_token(&receiver))),
            checked: false,
            ..entry
        };
        self.enqueue(subject, entry);
        self.waiting += 1;
        if self.ready {
            self.index(keep, out);
        } else {
            self.to_index.push(keep);
            self.ask_set_up(out);
        }
    }

    /// An entry to append, numbered.
    fn new_entry(&mut self, what: String, payload: Bytes) -> Entry {
        self.entries += 1;
        Entry {
            id: self.entries,
            checked: true,
            what,
            msg_id: None,
            payload,
            then: Then::Recorded,
        }
    }

    /// Asks for the streams again if their last set-up failed.
    fn ask_set_up(&mut self, out: &mut bytes::BytesMut) {
        let setting_up = self
            .requests
            .iter()
            .any(|(_, p)| matches!(p, Pending::Setup(_)));
        if !setting_up {
            self.set_up(0, out);
        }
    }

    /// One command from a reactor ([`History::takes`]).
    pub(super) fn command(
        &mut self,
        command: Command,
        connected: bool,
        out: &mut bytes::BytesMut,
    ) -> Vec<(usize, Reply)> {
        let mut replies = Vec::new();
        if !connected {
            replies.extend(answers::unread_answer(&command, Failure::Unreachable));
        } else if !self.ready {
            self.held.push(command);
            self.ask_set_up(out);
        } else {
            self.carry_out(command, out);
        }
        replies
    }

    fn carry_out(&mut self, command: Command, out: &mut bytes::BytesMut) {
        match command {
            Command::History {
                user,
                peer,
                before,
                limit,
                requester,
            } => {
                let shards = self.streams.shards;
                let subject = conversation_subject(shards, &user, &peer);
                let shard = shards.of_pair(&user, &peer);
                let read = PageRead {
                    shard,
                    requester,
                    peer,
                    before: before.unwrap_or(u64::MAX),
                    page: Page::new(limit),
                    found: Vec::new(),
                    newest: std::collections::BinaryHeap::new(),
                    limit: limit.max(1),
                    changes: HashMap::new(),
                };
                let body = serde_json::json!({"last_by_subj": subject}).to_string();
                let pending = Pending::Page(Box::new(read));
                let stream = Shards::stream(STREAM, shard);
                self.request(out, &direct_get(&stream), body.as_bytes(), pending);
            }
            Command::FindSender {
                reader,
                message_id,
                named,
                requester,
            } => {
                let key = index_key(self.streams.shards, &reader, &message_id);
                let pending = Pending::Sender {
                    requester,
                    reader,
                    message_id,
                    named,
                };
                self.request(out, &direct_get(&key.stream()), &key.get(), pending);
            }
            Command::Amend(amend) => {
                let key = index_key(self.streams.shards, &amend.peer, &amend.message_id);
                let check = AmendCheck { amend, own: true };
                let pending = Pending::Amend(Box::new(check));
                self.request(out, &direct_get(&key.stream()), &key.get(), pending);
            }
            other => warn!("cluster: not a history command: {other:?}"),
        }
    }

    /// JetStream's answer to request `id` (`<inbox>k<id>`).
    pub(super) fn answered(
        &mut self,
        id: &[u8],
        status: Option<u16>,
        headers: &[u8],
        payload: &Bytes,
        out: &mut bytes::BytesMut,
    ) -> Vec<(usize, Reply)> {
        let mut replies = Vec::new();
        let Some(pending) = self.requests.answered(id) else {
            return replies;
        };
        let answer: Value = serde_json::from_slice(payload).unwrap_or_default();
        match pending {
            Pending::Setup(stream) => {
                let made = status.is_none()
                    && (answer.get("error").is_none()
                        || answer["error"]["err_code"].as_u64() == Some(STREAM_DIFFERS));
                if made {
                    self.set_up(stream + 1, out);
                } else {
                    warn!(
                        "cluster: the history streams could not be set up ({}); is JetStream enabled (-js)?",
                        api_error(status, &answer)
                    );
                    self.setup_again_at = Some(Instant::now() + SETUP_AGAIN_AFTER);
                    for command in std::mem::take(&mut self.held) {
                        replies.extend(answers::unread_answer(&command, Failure::Refused));
                    }
                }
            }
            Pending::Index(keep) => match answer["seq"].as_u64().filter(|_| status.is_none()) {
                Some(seq) if seq > 0 => self.checked(&keep, true, out),
                _ if error_code(&answer) == Some(WRONG_LAST_SEQUENCE) => {
                    let (stream, body) = (keep.key.stream(), keep.key.get());
                    let pending = Pending::IndexHeld(keep);
                    self.request(out, &direct_get(&stream), &body, pending);
                }
                _ if unavailable(status, &answer) => {
                    self.to_index.push(*keep);
                    self.index_paused_until = Some(Instant::now() + RETRY_AFTER);
                }
                _ => {
                    warn!(
                        "cluster: a message was not indexed, nor kept in history: {}",
                        api_error(status, &answer)
                    );
                    self.stats
                        .failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.checked(&keep, false, out);
                }
            },
            Pending::IndexHeld(keep) => {
                let held = status.is_none().then_some(&payload[..]);
                if held == Some(keep.value.as_bytes()) {
                    // This message's own earlier attempt (its answer was lost): on with
                    // its entry, which JetStream keeps once by its message id.
                    self.checked(&keep, true, out);
                } else if held.and_then(parse_index).as_deref() == Some(&*keep.sender) {
                    debug!("cluster: a retry the history holds already, not kept twice");
                    self.checked(&keep, false, out);
                } else {
                    // Another sender's message with the same id: the index names the
                    // newest, as on one node.
                    let subject_of_key = keep.key.subject();
                    let value = keep.value.clone();
                    self.request(out, &subject_of_key, value.as_bytes(), Pending::IndexOver);
                    self.checked(&keep, true, out);
                }
            }
            Pending::IndexOver => {}
            Pending::Append { subject, entry } => {
                match answer["seq"].as_u64().filter(|_| status.is_none()) {
                    Some(seq) if seq > 0 => {
                        let tail = self.tails.entry(subject.clone()).or_default();
                        if answer["duplicate"].as_bool() != Some(true) {
                            tail.last = Some(seq);
                        }
                        tail.busy = false;
                        self.appended(entry, &mut replies);
                        self.append_next(&subject, out);
                    }
                    _ if error_code(&answer) == Some(WRONG_LAST_SEQUENCE)
                        && wrong_last_sequence(&answer).is_some() =>
                    {
                        // Another node appended meanwhile (or the conversation is not
                        // new): after its last entry, then.
                        let tail = self.tails.entry(subject.clone()).or_default();
                        tail.last = wrong_last_sequence(&answer);
                        tail.busy = false;
                        if matches!(entry.then, Then::Recorded) {
                            self.waiting += 1;
                        }
                        tail.waiting.push_front(entry);
                        self.append_next(&subject, out);
                    }
                    _ => {
                        let tail = self.tails.entry(subject.clone()).or_default();
                        tail.busy = false;
                        tail.last = None;
                        let recorded = matches!(entry.then, Then::Recorded);
                        if recorded && unavailable(status, &answer) {
                            tail.waiting.push_front(entry);
                            tail.paused_until = Some(Instant::now() + RETRY_AFTER);
                            self.waiting += 1;
                        } else {
                            let why = api_error(status, &answer);
                            let failure = match unavailable(status, &answer) {
                                true => Failure::Unreachable,
                                false => Failure::Refused,
                            };
                            self.append_failed(entry, &why, failure, &mut replies);
                            self.append_next(&subject, out);
                        }
                    }
                }
            }
            Pending::Page(read) => {
                self.page_step(*read, status, headers, payload, out, &mut replies)
            }
            Pending::Sender {
                requester,
                reader,
                message_id,
                named,
            } => {
                // The index keeps one sender per message id: a receipt naming another
                // finds nothing.
                let (sender, error) = match status {
                    None => {
                        let sender = parse_index(payload);
                        let named_other = named.is_some() && sender != named;
                        (sender.filter(|_| !named_other), None)
                    }
                    Some(404) => (None, None),
                    Some(_) => (None, Some(Failure::Refused)),
                };
                let found = (&*reader, &*message_id, sender);
                replies.push(answers::sender_answer(requester, found, error));
            }
            Pending::Amend(check) => self.amend_step(*check, status, payload, out, &mut replies),
        }
        replies
    }

    /// Fails the requests JetStream did not answer within [`requests::REQUEST_WAIT`], and sends
    /// again what waited (`connected`: the relay is).
    pub(super) fn expire(
        &mut self,
        now: Instant,
        connected: bool,
        out: &mut bytes::BytesMut,
    ) -> Vec<(usize, Reply)> {
        let mut replies = Vec::new();
        for pending in self.requests.late(now) {
            if matches!(pending, Pending::Setup(_)) {
                warn!("cluster: JetStream did not answer the history streams' set-up");
                self.setup_again_at = Some(now + SETUP_AGAIN_AFTER);
            }
            let subject = match &pending {
                Pending::Append { subject, .. } => Some(subject.clone()),
                _ => None,
            };
            self.fail(pending, &mut replies);
            if let Some(subject) = subject {
                self.append_next(&subject, out);
            }
        }
        self.resume(now, connected, out);
        replies
    }

    /// Sends again what waited for JetStream to be available, once its pause is over;
    /// asks for the streams again if their set-up failed and messages wait.
    fn resume(&mut self, now: Instant, connected: bool, out: &mut bytes::BytesMut) {
        if !self.ready {
            let due = self.setup_again_at.is_some_and(|at| at <= now);
            if due && connected && self.waiting > 0 {
                self.setup_again_at = None;
                self.ask_set_up(out);
            }
            return;
        }
        if self.index_paused_until.is_some_and(|until| until <= now) {
            self.index_paused_until = None;
            for keep in std::mem::take(&mut self.to_index) {
                self.index(keep, out);
            }
        }
        let mut due: Vec<String> = self
            .tails
            .iter()
            .filter(|(_, tail)| tail.paused_until.is_some_and(|until| until <= now))
            .map(|(subject, _)| subject.clone())
            .collect();
        // In a fixed order (the map's is random per process).
        due.sort_unstable();
        for subject in due {
            self.append_next(&subject, out);
        }
    }

    /// Asks for stream `n` (each shard's conversations, then each shard's index), or,
    /// past the last, goes on with what waited.
    fn set_up(&mut self, n: usize, out: &mut bytes::BytesMut) {
        let (max_age, replicas) = (
            self.streams.retention.as_nanos() as u64,
            self.streams.replicas,
        );
        let shards = usize::from(self.streams.shards.count());
        let config = match n {
            n if n < shards => serde_json::json!({
                "name": Shards::stream(STREAM, n as u16),
                "subjects": [format!("chat.history.{n}.>")],
                "storage": "file",
                "retention": "limits",
                "max_age": max_age,
                "duplicate_window": DUPLICATE_WINDOW.as_nanos() as u64,
                "allow_direct": true,
                "num_replicas": replicas,
            }),
            n if n < 2 * shards => serde_json::json!({
                "name": index_stream((n - shards) as u16),
                "subjects": [format!("$KV.{}.>", index_bucket((n - shards) as u16))],
                "storage": "file",
                "retention": "limits",
                "max_msgs_per_subject": 1,
                "max_age": max_age,
                "discard": "new",
                "allow_rollup_hdrs": true,
                "deny_delete": true,
                "allow_direct": true,
                "num_replicas": replicas,
            }),
            _ => return self.now_ready(out),
        };
        let name = config["name"].as_str().unwrap_or_default().to_owned();
        let subject = format!("$JS.API.STREAM.CREATE.{name}");
        self.request(
            out,
            &subject,
            config.to_string().as_bytes(),
            Pending::Setup(n),
        );
    }

    /// The streams are known: the commands held run, and every conversation's waiting
    /// entries go on.
    fn now_ready(&mut self, out: &mut bytes::BytesMut) {
        let shards = self.streams.shards.count();
        info!(stream = STREAM, shards, "cluster: history in JetStream");
        self.ready = true;
        self.indexed = true;
        self.setup_again_at = None;
        for command in std::mem::take(&mut self.held) {
            self.carry_out(command, out);
        }
        for keep in std::mem::take(&mut self.to_index) {
            self.index(keep, out);
        }
        let mut subjects: Vec<String> = self.tails.keys().cloned().collect();
        subjects.sort_unstable();
        for subject in subjects {
            if let Some(tail) = self.tails.get_mut(&subject) {
                tail.last = None;
                tail.busy = false;
            }
            self.append_next(&subject, out);
        }
    }

    /// Writes a message's index key, create-only: its entry follows if it is new.
    fn index(&mut self, keep: Keep, out: &mut bytes::BytesMut) {
        let value = keep.value.clone();
        let headers = [("Nats-Expected-Last-Subject-Sequence", "0")];
        let subject_of_key = keep.key.subject();
        let pending = Pending::Index(Box::new(keep));
        let to = (subject_of_key.as_str(), &headers[..]);
        self.requests.send(out, to, value.as_bytes(), pending);
    }

    /// Puts `entry` behind the conversation's others.
    fn enqueue(&mut self, subject: String, entry: Entry) {
        self.tails
            .entry(subject)
            .or_default()
            .waiting
            .push_back(entry);
    }

    /// A message's index check is over: its entry is appended in its turn (`keep`), or
    /// taken out of its conversation's tail.
    fn checked(&mut self, check: &Keep, keep: bool, out: &mut bytes::BytesMut) {
        let Some(tail) = self.tails.get_mut(&check.subject) else {
            return;
        };
        let Some(at) = tail.waiting.iter().position(|e| e.id == check.entry) else {
            return;
        };
        if keep {
            tail.waiting[at].checked = true;
        } else {
            tail.waiting.remove(at);
            self.waiting -= 1;
        }
        self.append_next(&check.subject, out);
    }

    /// Appends the conversation's next waiting entry, unless one is under way: after
    /// its last entry.
    fn append_next(&mut self, subject: &str, out: &mut bytes::BytesMut) {
        if !self.ready {
            return;
        }
        let Some(tail) = self.tails.get_mut(subject) else {
            return;
        };
        if tail.busy
            || tail
                .paused_until
                .is_some_and(|until| until > Instant::now())
        {
            return;
        }
        tail.paused_until = None;
        // Not known: a new conversation is the common case, and if it is not, the
        // compare-and-set's refusal says where it ends.
        let last = tail.last.unwrap_or(0);
        match tail.waiting.front() {
            // Its index check is under way: the conversation waits for it.
            Some(entry) if !entry.checked => return,
            Some(_) => {}
            None => {
                // Nothing waits: the tail is forgotten.
                self.tails.remove(subject);
                return;
            }
        }
        let Some(entry) = tail.waiting.pop_front() else {
            return;
        };
        tail.busy = true;
        if matches!(entry.then, Then::Recorded) {
            self.waiting -= 1;
        }
        // The entry waits on the answer; what goes out is borrowed from copies (the
        // payload's is a reference count).
        let (last, what, msg_id) = (last.to_string(), entry.what.clone(), entry.msg_id.clone());
        let payload = entry.payload.clone();
        let stored = (self.wall_ms)().to_string();
        let mut headers = vec![
            ("Nats-Expected-Last-Subject-Sequence", last.as_str()),
            (PREV_HEADER, last.as_str()),
            (ENTRY_HEADER, what.as_str()),
            (STORED_HEADER, stored.as_str()),
        ];
        if let Some(msg_id) = &msg_id {
            headers.push(("Nats-Msg-Id", msg_id.as_str()));
        }
        let pending = Pending::Append {
            subject: subject.to_owned(),
            entry,
        };
        self.requests
            .send(out, (subject, &headers), &payload, pending);
    }

    /// An entry is appended: a message is counted, a change's asker hears.
    fn appended(&mut self, entry: Entry, replies: &mut Vec<(usize, Reply)>) {
        match entry.then {
            Then::Recorded => {
                self.stats
                    .recorded
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Then::Amended(amend) => replies.push(amended(amend, true, None)),
        }
    }

    /// An entry could not be appended (`why`): a message is counted as a persistence
    /// failure, a change's asker hears `failure`.
    fn append_failed(
        &mut self,
        entry: Entry,
        why: &str,
        failure: Failure,
        replies: &mut Vec<(usize, Reply)>,
    ) {
        warn!("cluster: a history entry was not kept: {why}");
        match entry.then {
            Then::Recorded => {
                self.stats
                    .failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Then::Amended(amend) => replies.push(amended(amend, false, Some(failure))),
        }
    }

    /// What a request that failed (cut from NATS, or no answer in time) leaves: a message
    /// waits to be kept once the streams are back, or after a pause; a read or change
    /// fails.
    fn fail(&mut self, pending: Pending, replies: &mut Vec<(usize, Reply)>) {
        let unreachable = Some(Failure::Unreachable);
        match pending {
            // Kept for later: at once once the streams are back, or after a pause.
            Pending::Index(keep) | Pending::IndexHeld(keep) => {
                self.to_index.push(*keep);
                if self.ready {
                    self.index_paused_until = Some(Instant::now() + RETRY_AFTER);
                }
            }
            Pending::Append { subject, entry } => {
                let ready = self.ready;
                let tail = self.tails.entry(subject).or_default();
                tail.busy = false;
                tail.last = None;
                match entry.then {
                    Then::Recorded => {
                        tail.waiting.push_front(entry);
                        if ready {
                            tail.paused_until = Some(Instant::now() + RETRY_AFTER);
                        }
                        self.waiting += 1;
                    }
                    Then::Amended(amend) => replies.push(amended(amend, false, unreachable)),
                }
            }
            Pending::Page(read) => {
                let empty = (Vec::new(), false);
                let reply = answers::history_answer(read.requester, &read.peer, empty, unreachable);
                replies.push(reply);
            }
            Pending::Sender {
                requester,
                reader,
                message_id,
                ..
            } => {
                let found = (&*reader, &*message_id, None);
                replies.push(answers::sender_answer(requester, found, unreachable));
            }
            Pending::Amend(check) => replies.push(amended(check.amend, false, unreachable)),
            Pending::Setup(_) => {
                for command in std::mem::take(&mut self.held) {
                    replies.extend(answers::unread_answer(&command, Failure::Unreachable));
                }
            }
            Pending::IndexOver => {}
        }
    }

    /// One entry of a page: a change is kept for its message, a message is applied its
    /// changes and offered to the page; then the entry before it, or the end.
    fn page_step(
        &mut self,
        mut read: PageRead,
        status: Option<u16>,
        headers: &[u8],
        payload: &Bytes,
        out: &mut bytes::BytesMut,
        replies: &mut Vec<(usize, Reply)>,
    ) {
        match status {
            None => {}
            // The conversation is empty, or its older entries expired.
            Some(404) => return replies.push(read.finish(false)),
            Some(_) => {
                let reply = answers::history_answer(
                    read.requester,
                    &read.peer,
                    (Vec::new(), false),
                    Some(Failure::Refused),
                );
                return replies.push(reply);
            }
        }
        let what = wire::header(headers, ENTRY_HEADER).and_then(|v| std::str::from_utf8(v).ok());
        let stored = wire::header(headers, STORED_HEADER)
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok());
        // An entry from before `Chat-Stored`: a message was stored after it was sent.
        let mut stored_ms = stored;
        match what.and_then(parse_entry) {
            Some(Parsed::Change { actor, key }) => {
                if let Some(change) = decode_change(payload) {
                    read.changes.entry(key).or_default().push((actor, change));
                }
            }
            Some(Parsed::Message { key, at }) => {
                let mut json = payload.clone();
                if let Some(changes) = read.changes.remove(&key) {
                    let mut message: Value = serde_json::from_slice(payload).unwrap_or_default();
                    for (actor, change) in changes.iter().rev() {
                        history::apply(&mut message, actor, change);
                    }
                    json = serde_json::to_vec(&message)
                        .map(Bytes::from)
                        .unwrap_or(json);
                }
                stored_ms = stored_ms.or(Some(at));
                if at < read.before {
                    read.found(at, json);
                }
            }
            None => debug!("cluster: a history entry that does not parse, skipped"),
        }
        let prev = wire::header(headers, PREV_HEADER)
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
            .unwrap_or(0);
        if prev == 0 {
            return replies.push(read.finish(false));
        }
        if stored_ms.is_some_and(|stored| read.walked_far_enough(stored)) {
            return replies.push(read.finish(true));
        }
        let body = serde_json::json!({"seq": prev}).to_string();
        let stream = Shards::stream(STREAM, read.shard);
        self.request(
            out,
            &direct_get(&stream),
            body.as_bytes(),
            Pending::Page(Box::new(read)),
        );
    }

    /// The index's answer for a change: the actor's own message (any change), else, for
    /// a reaction, the peer's; then the change is appended to the conversation.
    fn amend_step(
        &mut self,
        check: AmendCheck,
        status: Option<u16>,
        payload: &Bytes,
        out: &mut bytes::BytesMut,
        replies: &mut Vec<(usize, Reply)>,
    ) {
        let AmendCheck { amend, own } = check;
        let sender = match status {
            None => parse_index(payload),
            Some(404) => None,
            Some(_) => return replies.push(amended(amend, false, Some(Failure::Refused))),
        };
        let reaction = matches!(
            amend.change,
            Amendment::ReactionAdd(_) | Amendment::ReactionRemove(_)
        );
        let (expected, next) = if own {
            (&amend.actor, reaction)
        } else {
            (&amend.peer, false)
        };
        if sender.as_deref() == Some(&**expected) {
            let sender = expected.clone();
            let (actor, id) = (
                subject_token(&amend.actor),
                subject_token(&amend.message_id),
            );
            let what = format!("c {actor} {} {id}", subject_token(&sender));
            let entry = Entry {
                then: Then::Amended(amend.clone()),
                ..self.new_entry(what, encode_change(&amend.change))
            };
            let subject = conversation_subject(self.streams.shards, &amend.actor, &amend.peer);
            self.enqueue(subject.clone(), entry);
            return self.append_next(&subject, out);
        }
        if next {
            let key = index_key(self.streams.shards, &amend.actor, &amend.message_id);
            let check = AmendCheck { amend, own: false };
            let pending = Pending::Amend(Box::new(check));
            return self.request(out, &direct_get(&key.stream()), &key.get(), pending);
        }
        replies.push(amended(amend, false, None));
    }

    /// Sends a request without headers.
    fn request(&mut self, out: &mut bytes::BytesMut, subject: &str, body: &[u8], pending: Pending) {
        self.requests.send(out, (subject, &[]), body, pending);
    }
}

/// What an entry's `Chat-Entry` header says.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// A message, `(sender, message id)`, sent at `at` (Unix ms).
    Message { key: (Box<str>, Box<str>), at: u64 },
    /// A change by `actor` to message `(sender, message id)`.
    Change { actor: Box<str>, key: MessageKey },
}

fn parse_entry(value: &str) -> Option<Parsed> {
    let mut parts = value.split(' ');
    let parsed = match parts.next()? {
        "m" => {
            let sender = from_subject_token(parts.next()?)?;
            let id = from_subject_token(parts.next()?)?;
            let at = parts.next()?.parse().ok()?;
            Parsed::Message {
                key: (sender, id),
                at,
            }
        }
        "c" => {
            let actor = from_subject_token(parts.next()?)?;
            let sender = from_subject_token(parts.next()?)?;
            let id = from_subject_token(parts.next()?)?;
            Parsed::Change {
                actor,
                key: (sender, id),
            }
        }
        _ => return None,
    };
    parts.next().is_none().then_some(parsed)
}

/// A change as stored: `e<content>`, `d`, `+<emoji>`, `-<emoji>`.
fn encode_change(change: &Amendment) -> Bytes {
    let (tag, text) = match change {
        Amendment::Edit(content) => ("e", &**content),
        Amendment::Delete => ("d", ""),
        Amendment::ReactionAdd(emoji) => ("+", &**emoji),
        Amendment::ReactionRemove(emoji) => ("-", &**emoji),
    };
    Bytes::from(format!("{tag}{text}"))
}

fn decode_change(payload: &[u8]) -> Option<Amendment> {
    let text = std::str::from_utf8(payload).ok()?;
    let rest = || text[1..].into();
    Some(match text.as_bytes().first()? {
        b'e' => Amendment::Edit(rest()),
        b'd' => Amendment::Delete,
        b'+' => Amendment::ReactionAdd(rest()),
        b'-' => Amendment::ReactionRemove(rest()),
        _ => return None,
    })
}

/// The subject of the conversation between `a` and `b`, whatever the direction, in its
/// shard: `chat.history.<shard>.<lower user>.<higher user>`.
fn conversation_subject(shards: Shards, a: &str, b: &str) -> String {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    format!(
        "chat.history.{}.{}.{}",
        shards.of_pair(a, b),
        subject_token(low),
        subject_token(high)
    )
}

/// Whether JetStream refused for now only: no responders, or unavailable (no quorum, a
/// leader being elected), as while a server of a NATS cluster is down.
fn unavailable(status: Option<u16>, answer: &Value) -> bool {
    status == Some(503) || answer["error"]["code"].as_u64() == Some(503)
}

fn error_code(answer: &Value) -> Option<u64> {
    answer["error"]["err_code"].as_u64()
}

/// The sequence a failed compare-and-set found ("wrong last sequence: N").
fn wrong_last_sequence(answer: &Value) -> Option<u64> {
    let description = answer["error"]["description"].as_str()?;
    description.rsplit(' ').next()?.parse().ok()
}

/// What went wrong, for a log line.
fn api_error(status: Option<u16>, answer: &Value) -> String {
    requests::api_error(status, answer).unwrap_or_else(|| "no answer".into())
}

/// A change's answer for its asker.
fn amended(amend: Box<Amend>, found: bool, error: Option<Failure>) -> (usize, Reply) {
    let reactor = amend.requester.reactor;
    let reply = Reply::Amended {
        amend,
        found,
        error,
    };
    (reactor, reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Chat;

    #[test]
    fn entries_and_changes_round_trip_and_garbage_is_refused() {
        assert_eq!(
            parse_entry("m ann ~6d2e31 42"),
            Some(Parsed::Message {
                key: ("ann".into(), "m.1".into()),
                at: 42
            })
        );
        assert_eq!(
            parse_entry("c bob ann m-1"),
            Some(Parsed::Change {
                actor: "bob".into(),
                key: ("ann".into(), "m-1".into())
            })
        );
        for bad in [
            "",
            "m ann m-1",
            "m ann m-1 x",
            "x a b c",
            "c a b",
            "m a b 1 2",
        ] {
            assert_eq!(parse_entry(bad), None, "{bad:?}");
        }
        for change in [
            Amendment::Edit("hi there".into()),
            Amendment::Delete,
            Amendment::ReactionAdd("🙂".into()),
            Amendment::ReactionRemove("🙂".into()),
        ] {
            assert_eq!(decode_change(&encode_change(&change)), Some(change));
        }
        assert_eq!(decode_change(b""), None);
        assert_eq!(decode_change(b"x"), None);
        let shards = Shards::new(4);
        assert_eq!(
            conversation_subject(shards, "bob", "ann"),
            conversation_subject(shards, "ann", "bob")
        );
        let shard = shards.of_pair("a.b", "c");
        let subject = format!("chat.history.{shard}.~612e62.c");
        assert_eq!(conversation_subject(shards, "a.b", "c"), subject);
        let moved = serde_json::json!({"error": {"err_code": 10071, "description": "wrong last sequence: 17"}});
        assert_eq!(wrong_last_sequence(&moved), Some(17));
    }

    fn history() -> History {
        let streams = StreamSettings {
            queue_max_per_user: 10,
            queue_max_per_sender: 0,
            retention: Duration::from_secs(60),
            replicas: 1,
            shards: Shards::new(1),
        };
        let mut history = History::new("_INBOX.x.", streams, Arc::new(StoreStats::default()));
        history.ready = true;
        history
    }

    /// Message `id` from `sender` to `receiver`, sent at `at`, kept at inbox `seq`.
    fn kept(sender: &str, receiver: &str, (id, at, seq): (&str, u64, u64)) -> KeptChat {
        let chat = Chat {
            sender: sender.into(),
            message_id: id.into(),
            timestamp_ms: at,
        };
        KeptChat {
            user: receiver.into(),
            chat,
            json: Bytes::from_static(br#"{"content":"hi"}"#),
            seq,
        }
    }

    /// The same, stored at `stored_ms`.
    fn stored_at(seq: u64, prev: u64, entry: &str, stored_ms: u64) -> Vec<u8> {
        let mut headers = stored(seq, prev, entry);
        headers.truncate(headers.len() - 2);
        headers.extend_from_slice(format!("Chat-Stored: {stored_ms}\r\n\r\n").as_bytes());
        headers
    }

    fn stored(seq: u64, prev: u64, entry: &str) -> Vec<u8> {
        format!(
            "NATS/1.0\r\nNats-Sequence: {seq}\r\nChat-Prev: {prev}\r\nChat-Entry: {entry}\r\n\r\n"
        )
        .into_bytes()
    }

    fn text(out: &bytes::BytesMut, from: usize) -> String {
        String::from_utf8_lossy(&out[from..]).into_owned()
    }

    #[test]
    fn a_message_is_indexed_then_appended_after_the_last_entry_even_if_another_node_moved_it() {
        let mut history = history();
        let mut out = bytes::BytesMut::new();
        history.record(kept("alice", "bob", ("m-1", 42, 7)), &mut out);
        let sent = text(&out, 0);
        assert!(
            sent.starts_with("HPUB $KV.chat_received_0.bob.m-1 _INBOX.x.k1"),
            "{sent}"
        );
        assert!(
            sent.contains("Nats-Expected-Last-Subject-Sequence: 0"),
            "{sent}"
        );
        // New: appended as the conversation's first entry.
        let at = out.len();
        let created = Bytes::from_static(br#"{"stream":"KV_chat_received_0","seq":1}"#);
        history.answered(b"1", None, b"", &created, &mut out);
        let sent = text(&out, at);
        assert!(
            sent.starts_with("HPUB chat.history.0.alice.bob _INBOX.x.k2"),
            "{sent}"
        );
        for header in [
            "Chat-Prev: 0",
            "Chat-Entry: m alice m-1 42",
            "Nats-Msg-Id: alice m-1 bob",
        ] {
            assert!(sent.contains(header), "{header}: {sent}");
        }
        // Another node appended meanwhile: after its entry, then.
        let at = out.len();
        let moved = Bytes::from_static(
            br#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 5"}}"#,
        );
        history.answered(b"2", None, b"", &moved, &mut out);
        let sent = text(&out, at);
        assert!(sent.contains("Chat-Prev: 5"), "{sent}");
        assert!(
            sent.contains("Nats-Expected-Last-Subject-Sequence: 5"),
            "{sent}"
        );
        let kept = Bytes::from_static(br#"{"stream":"CHAT_HISTORY_0","seq":9}"#);
        history.answered(b"3", None, b"", &kept, &mut out);
        assert_eq!(
            history
                .stats
                .recorded
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(history.waiting, 0);
        assert!(history.tails.is_empty(), "nothing waits");
    }

    #[test]
    fn a_retry_the_index_holds_is_not_kept_twice_but_a_lost_answer_or_another_sender_is() {
        let mut history = history();
        let mut out = bytes::BytesMut::new();
        let exists = Bytes::from_static(
            br#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 3"}}"#,
        );
        // A client's retry, stored again in bob's inbox at 8: history has it from 7.
        history.record(kept("alice", "bob", ("m-1", 42, 8)), &mut out);
        history.answered(b"1", None, b"", &exists, &mut out);
        let at = out.len();
        let held = Bytes::from_static(b"alice 7");
        history.answered(b"2", None, &stored(3, 0, "x"), &held, &mut out);
        assert_eq!(out.len(), at, "a retry: nothing more");
        assert_eq!(history.waiting, 0);
        // The same message again (its first index answer was lost): on with its entry.
        history.record(kept("alice", "bob", ("m-1", 42, 7)), &mut out);
        history.answered(b"3", None, b"", &exists, &mut out);
        let at = out.len();
        history.answered(b"4", None, &stored(3, 0, "x"), &held, &mut out);
        assert!(text(&out, at).starts_with("HPUB chat.history.0.alice.bob"));
        // Carol used the same id: the index takes hers, and it is kept.
        history.record(kept("carol", "bob", ("m-1", 43, 9)), &mut out);
        history.answered(b"6", None, b"", &exists, &mut out);
        let at = out.len();
        history.answered(b"7", None, &stored(3, 0, "x"), &held, &mut out);
        let sent = text(&out, at);
        assert!(sent.contains("PUB $KV.chat_received_0.bob.m-1"), "{sent}");
        assert!(sent.contains("carol 9"), "{sent}");
        assert!(sent.contains("HPUB chat.history.0.bob.carol"), "{sent}");
    }

    #[test]
    fn a_page_walks_the_chain_newest_first_and_applies_the_changes_it_meets() {
        let mut history = history();
        let mut out = bytes::BytesMut::new();
        let requester = Waiter {
            reactor: 1,
            ticket: 7,
        };
        let ask = Command::History {
            user: "bob".into(),
            peer: "alice".into(),
            before: None,
            limit: 10,
            requester,
        };
        assert!(history.command(ask, true, &mut out).is_empty());
        assert!(text(&out, 0).contains(r#"{"last_by_subj":"chat.history.0.alice.bob"}"#));
        // Newest: bob's reaction to m-1, then m-1, then m-0 (the first entry).
        let reaction = Bytes::from("+👍");
        history.answered(
            b"1",
            None,
            &stored(9, 7, "c bob alice m-1"),
            &reaction,
            &mut out,
        );
        assert!(text(&out, 0).contains(r#"{"seq":7}"#));
        let m1 = Bytes::from_static(br#"{"content":"one"}"#);
        history.answered(b"2", None, &stored(7, 4, "m alice m-1 42"), &m1, &mut out);
        assert!(text(&out, 0).contains(r#"{"seq":4}"#));
        let m0 = Bytes::from_static(br#"{"content":"zero"}"#);
        let replies = history.answered(b"3", None, &stored(4, 0, "m alice m-0 40"), &m0, &mut out);
        let [(
            1,
            Reply::History {
                messages,
                more,
                error: None,
                ..
            },
        )] = &replies[..]
        else {
            panic!("{replies:?}");
        };
        assert!(!more);
        let first: Value = serde_json::from_slice(&messages[0]).unwrap();
        assert_eq!(first["reactions"], serde_json::json!({"👍": ["bob"]}));
        assert_eq!(&messages[1][..], &m0[..]);
    }

    #[test]
    fn a_page_is_in_send_order_and_walks_on_until_nothing_older_can_be_newer() {
        let mut history = history();
        let mut out = bytes::BytesMut::new();
        let requester = Waiter {
            reactor: 1,
            ticket: 7,
        };
        let ask = Command::History {
            user: "bob".into(),
            peer: "alice".into(),
            before: None,
            limit: 2,
            requester,
        };
        history.command(ask, true, &mut out);
        // Newest stored first: m-1 (sent at 100 s), m-late (sent at 90 s, stored at 109
        // s after NATS came back), m-2 (sent at 105 s), then m-old, stored long before.
        let entries = [
            (9, 8, "m alice m-1 100000", 110_000),
            (8, 7, "m alice m-late 90000", 109_000),
            (7, 3, "m alice m-2 105000", 106_000),
            (3, 1, "m alice m-old 10000", 10_000),
        ];
        let mut replies = Vec::new();
        for (n, (seq, prev, entry, stored_ms)) in entries.into_iter().enumerate() {
            let id = entry.split(' ').nth(2).unwrap();
            let json = Bytes::from(format!(r#"{{"messageId":"{id}"}}"#));
            let request = (n + 1).to_string();
            let headers = stored_at(seq, prev, entry, stored_ms);
            replies = history.answered(request.as_bytes(), None, &headers, &json, &mut out);
            if !replies.is_empty() {
                assert_eq!(n, 3, "the walk stops at m-old, stored before m-1 was sent");
                break;
            }
        }
        let [(1, Reply::History { messages, more, .. })] = &replies[..] else {
            panic!("{replies:?}");
        };
        let ids: Vec<String> = (messages.iter())
            .map(|m| serde_json::from_slice::<Value>(m).unwrap()["messageId"].to_string())
            .collect();
        assert_eq!(
            ids,
            [r#""m-2""#, r#""m-1""#],
            "the two sent last, newest first"
        );
        assert!(more);
    }
}
