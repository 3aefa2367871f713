//! Inboxes in JetStream: a cluster node's side of the store for everything about inboxes
//! (docs/cluster.md, "Inboxes"), spoken over the relay's own NATS connection. The reactors
//! send the same commands as to the store thread ([`crate::store::SharedStore`]) and get the
//! same answers, so the shards and the drivers do not know where an inbox lives.
//!
//! - Streams `CHAT_INBOX_<shard>` hold every user's events, subjects
//!   `chat.inbox.<shard>.<user>`, each user in its shard ([`Shards`]). An event's stream
//!   sequence is its `seq`: increasing per user and the same on every node. The user's
//!   stream's creation time is the `epoch`.
//! - An append is a publish with an answer: the sender's `message_ack` follows JetStream's
//!   ack, so "acknowledged" means stored (and replicated, with replicas). When no device
//!   of the receiver is on the sender's node, the receiver's holders are asked meanwhile
//!   whether one is on theirs (`sent`) or none is (`queued`), as one node tells. A chat message
//!   is first looked up in history's message index, so a client's retry is acknowledged
//!   again and not stored twice for as long as the index keeps it; it also carries
//!   `Nats-Msg-Id` (sender and message id), so a retry within the stream's duplicate
//!   window is not stored twice even before history indexed it. A full inbox
//!   (`max_msgs_per_subject`, new ones refused) is `queue_full`.
//! - The streams republish each event to `chat.live.<user>`, with `Nats-Sequence`: the
//!   nodes holding the user get it there ([`super::relayer`]), this one included, and
//!   write it with its `seq` to the devices.
//! - A read is one direct get after another (`next_by_subj`), a page at a time; the first
//!   page of a read after `auth` starts with the last `seq` (`last_by_subj`) for the
//!   greeting. A device without `resume` reads in delivery order (priority, then `seq`):
//!   a pass over its range per priority ([`Lanes`]). A resume from below the last `seq`
//!   also gets the stream's first event:
//!   JetStream expires the oldest first (`--retention-days`), so a resume from below it
//!   may have missed expired events and is refused. Each page of a resume, and each
//!   later page, ends with the user's record read again: a purge that another node's
//!   ack ran under it (`gone` above where the page started) makes a first page a refused
//!   resume, and a later one fail.
//! - An ack moves the user's record in bucket `chat_acks` ([`super::acks`]) up to the
//!   acknowledged `seq`, after reading the events it takes for a sender waiting on a
//!   `delivery_receipt`. Acknowledged events stay for the user's other devices, and are
//!   removed a generation at a time with one purge. A device without `resume` reads from
//!   the record's `seq` on; a resume from below what was removed is `resumed:false`. An
//!   ack above the last `seq` is refused, as on one node.
//!
//! Each request waits at most [`requests::REQUEST_WAIT`]; while NATS is out of reach, or while
//! [`IN_FLIGHT_MAX`] requests wait on it, every command fails at once with
//! [`Failure::Unreachable`] (`cluster_unavailable` for a sender).

use std::{collections::VecDeque, time::Duration};

use bytes::{BufMut, Bytes, BytesMut};
use hashbrown::HashMap;
use serde_json::Value;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{
    acks::{self, AckRecord},
    not_kept::NotKept,
    pairs::Pairs,
    received,
    relay::{self, from_key_token, from_subject_token, key_token, subject_token},
    requests::{self, direct_get, Requests, STREAM_DIFFERS, WRONG_LAST_SEQUENCE},
    seen::{Continuity, Receipt, Seen},
    shards::Shards,
    unread::{self, Take, Unread},
    wire,
};
use crate::{
    protocol::{access::Settings, codes::OutKind, Priority},
    router::Envelope,
    store::{
        answers, AckTo, Append, Chat, Command, Confirm, Failure, FanOut, Greeting, InboxEvent,
        Outcome, ReadFrom, Reply, Share, Ticket, UnackedCursor, Waiter, INBOX_PAGE_BYTES_MAX,
        INBOX_PAGE_EVENTS_MAX, PEEK_BYTES_MAX, PEEK_MESSAGES_MAX,
    },
};

/// The streams of the users' inbox events: `CHAT_INBOX_<shard>`.
const STREAM: &str = "CHAT_INBOX";
/// How long JetStream keeps a message id to recognise a retry.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long a sender's ack waits for the receiver's holders on other nodes to say whether a
/// device of the receiver is online there: past it (a holder cut off from NATS, say), the
/// message is `queued`. Usually they answer as JetStream does, within a millisecond.
const HOLDERS_WAIT: Duration = Duration::from_millis(200);
/// Requests in flight at most: past it an inbox command fails at once (a sender hears
/// `cluster_unavailable`) rather than queueing without bound behind a slow JetStream.
const IN_FLIGHT_MAX: usize = 65_536;
/// The header of an event whose sender waits for a `delivery_receipt`: the sender and
/// the message id, each as a subject token ([`subject_token`]), separated by a space.
const RECEIPT_HEADER: &str = "Chat-Receipt";
/// The header of a group post's row for its sender's user: the sending device, which is
/// not given the event live: `<the relay's inbox prefix> <reactor> <ticket>` (the prefix
/// is random per process, so no other node takes it for one of its own).
const EXCEPT_HEADER: &str = "Chat-Except";
/// JetStream's error code for a subject at `max_msgs_per_subject` (new ones refused).
const PER_SUBJECT_LIMIT: u64 = 10077;

/// What the streams a node makes are created with, and the bounds its inboxes keep.
#[derive(Debug, Clone, Copy)]
pub struct StreamSettings {
    /// `--queue-max-per-user`: events one user's inbox holds at most.
    pub queue_max_per_user: u64,
    /// `--queue-max-per-sender`: messages one sender's devices on a node may leave unread
    /// for one user (0: no bound), counted by each node (`cluster::unread`).
    pub queue_max_per_sender: u32,
    /// `--retention-days`: how long an event (and history) is kept.
    pub retention: Duration,
    /// `--cluster-replicas`: the copies JetStream keeps of each stream.
    pub replicas: u8,
    /// `--cluster-shards`: the streams of each kind the users are split over.
    pub shards: Shards,
}

/// Answers for the reactors: `(reactor, reply)`.
pub(super) type Replies = Vec<(usize, Reply)>;

/// A request on its way to JetStream.
enum Pending {
    /// A shard's inbox stream's creation (or its description).
    Setup { shard: u16 },
    /// The creation of the shard's stream of acknowledgement records, once its inbox
    /// stream's creation time (the epoch) is known.
    SetupAcks { shard: u16, epoch: Box<str> },
    /// A chat message's index entry, looked up before it is appended: a client's retry
    /// after JetStream's duplicate window is answered, not stored again.
    RetryCheck(Box<Append>),
    /// A sender's message at `--queue-max-per-sender`: the receiver's acknowledgement
    /// record, read to tell whether any of the sender's counted messages was read.
    QuotaCheck { append: Box<Append>, pair: u64 },
    /// One event appended for a sender (or nobody); a chat message goes to history
    /// once kept. `asked`: the holders' question its ack also waits on; `counted`: its
    /// place in the sender's quota.
    Append {
        ack: Option<AckTo>,
        dedup: Option<(usize, Ticket)>,
        chat: Option<Box<KeptChat>>,
        asked: Option<u64>,
        counted: Option<unread::Counted>,
        /// Its lane in [`Pairs`], for a chat message or a copy of one.
        lane: Option<u64>,
    },
    /// The receiver's holders on other nodes, asked whether a device of the receiver is
    /// online there (for the sender's `sent` or `queued`).
    Holders { asked: u64 },
    /// A copy for its sender's other devices, none of them on this node: the nodes
    /// holding the sender, asked whether a device of the sender is online there. It is
    /// kept only if one is.
    CopyCheck(Box<Append>),
    /// One row of a fan-out.
    Row { share: u64 },
    /// The next step of a read.
    Read(Box<Read>),
    /// The last `seq` before an ack is carried out.
    AckCheck {
        user: Box<str>,
        upto: u64,
        device: Option<Waiter>,
        home: usize,
    },
    /// The user's acknowledgement record, before an ack is carried out.
    AckFetch(Box<AckScan>),
    /// The events an ack takes, read for the senders waiting on a `delivery_receipt`.
    AckScan(Box<AckScan>),
    /// The record's compare-and-set to what the ack took.
    AckWrite(Box<AckScan>),
    /// The user's record, read again for its unsure acks.
    Settle(Box<str>),
    /// The removal of a generation of acknowledged events.
    Purge,
    /// The next event of a gap in a user's live events.
    Fill(Box<Filled>),
    /// The user's acknowledgement record, read once a gap's events are: whether events
    /// of the gap were removed before they could be read.
    FillChecked(Box<Filled>),
    /// A member's join or leave, written to the bucket of members.
    Membership(Box<Command>),
    /// A group's settings that change with a membership, written to the bucket first: the
    /// membership follows once they are kept.
    GroupSettings(Box<Command>),
}

/// An ack under way: the user's record is fetched, the events it takes (up to `upto`)
/// are read from `next` on for their receipts, and the record is written back.
struct AckScan {
    user: Box<str>,
    upto: u64,
    home: usize,
    next: u64,
    receipts: crate::store::ReceiptsDue,
    /// The record as fetched, then as the ack moves it.
    record: AckRecord,
    /// The fetched record's revision (0: none yet), for the compare-and-set.
    revision: u64,
    /// `record.gone` as fetched: a purge follows the write if the ack raised it.
    gone_before: u64,
    /// The token of the ack that wrote the record this one starts from (0: unknown).
    over: u64,
    /// This ack's own token, once it writes.
    token: u64,
}

/// Receipts of an ack whose record write got no answer (cut off, or too late): sent once
/// the record read again shows the write landed ([`acks::OVER_HEADER`]).
struct Unsure {
    /// The write's token.
    token: u64,
    /// The `seq` it acknowledged up to.
    upto: u64,
    receipts: crate::store::ReceiptsDue,
    home: usize,
}

impl AckScan {
    fn new(user: Box<str>, upto: u64, home: usize) -> AckScan {
        AckScan {
            user,
            upto,
            home,
            next: 0,
            receipts: Vec::new(),
            record: AckRecord::default(),
            revision: 0,
            gone_before: 0,
            over: 0,
            token: 0,
        }
    }
}

/// A chat message an inbox kept, for history ([`super::history`]): its receiver, sender
/// and id, and its `new_message` JSON.
pub(super) struct KeptChat {
    /// The receiver.
    pub user: Box<str>,
    /// The sender, the id and the time.
    pub chat: Chat,
    /// The `new_message` JSON.
    pub json: Bytes,
    /// Its inbox event's `seq` (the stream's sequence).
    pub seq: u64,
}

/// A gap in a user's live events, read from the stream: the events after `next - 1` up
/// to `upto`, for the devices here.
struct Filled {
    /// Its number, among the reads of gaps ([`Inboxes::start_fill`]).
    number: u64,
    /// How the read ended, once it has.
    end: FillEnd,
    /// The user.
    user: Box<str>,
    /// The events read, in `seq` order, each with the receipt its sender waits for.
    events: Vec<(InboxEvent, Option<Receipt>)>,
    /// The newest event seen before the gap.
    after: u64,
    /// The `seq` the next get starts at.
    next: u64,
    /// The last event of the gap.
    upto: u64,
    /// A read on after a reconnect ([`Inboxes::read_what_was_missed`]), not a gap.
    read_on: bool,
}

/// A live event as the republish brought it: its `seq`, headers and payload.
type LiveEvent = (u64, Bytes, Bytes);

/// How the read of a gap ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FillEnd {
    /// Still being read.
    Reading,
    /// Every event of the gap was read.
    Whole,
    /// Some events of the gap could not be given to the devices here: removed once
    /// another device acknowledged them, or past [`FILL_MAX`], or JetStream did not
    /// answer. The user's devices here are closed, and resume.
    Short,
    /// The relay was cut off again: what was read is given, what waited behind the gap is
    /// dropped, and read again with the rest when the relay reads on after reconnecting.
    CutOff,
}

/// Events a gap is filled with at most: past it, the devices here are closed and resume.
const FILL_MAX: usize = 1024;
/// Users read on at once after a reconnect: the rest wait their turn, so that a node
/// holding many users does not ask JetStream for all of them in one burst.
const READ_ON_AT_ONCE: usize = 64;

/// What a gap's read gives a user's devices here ([`Inboxes::take_ready`]).
pub(super) enum Caught {
    /// The events, in order.
    Up(Vec<Ready>),
    /// Events they cannot be given any more: they are closed, and resume.
    Missed,
}

/// A user's inbox event for the devices here, in its turn.
pub(super) enum Ready {
    /// Read from the stream, to fill a gap.
    Read(InboxEvent),
    /// As JetStream republished it: its `seq`, headers and payload.
    Live {
        /// Its `seq`.
        seq: u64,
        /// The republish's headers.
        headers: Bytes,
        /// The stored event.
        payload: Bytes,
    },
}

/// A fan-out's counts while its rows are being stored.
struct ShareWait {
    purpose: FanOut,
    reply_to: usize,
    request: u32,
    delivered: u32,
    rows_left: usize,
    queued: u32,
    not_kept: u32,
}

/// Who a read is for.
enum Reader {
    /// A device catching up: `greeting` on the first page.
    Device {
        device: Waiter,
        greeting: Option<Greeting>,
    },
    /// The HTTP API's queue endpoint.
    Api { requester: Waiter },
}

/// Where a read starts, settled once the user's record (and, with a greeting, the last
/// `seq`) is known.
#[derive(Clone, Copy)]
enum Start {
    /// `resume` from `seq`, with the current epoch or not.
    Resume { epoch_matches: bool, seq: u64 },
    /// What no device acknowledged.
    Unacked,
}

/// What a read asks next.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReadStep {
    /// The user's acknowledgement record.
    Record,
    /// The last `seq` (the greeting's).
    Last,
    /// The stream's first event, any user's: a resume from below it would miss events
    /// that expired (`--retention-days`).
    First,
    /// The next event from `next` on.
    Events,
    /// The user's record again, once the page is read: did a purge run under it?
    Verify {
        /// More pages follow this one.
        more: bool,
    },
}

/// The priorities in delivery order.
const LANES: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

/// A read in delivery order (PROTOCOL.md: priority, then `seq`), for a device without
/// `resume`: one pass over the user's unacknowledged events per priority, each taking
/// that priority's events in `seq` order. A pass that began at the first event knows
/// where each later priority's events begin, and skips a priority that has none.
#[derive(Clone, Copy)]
struct Lanes {
    /// The priority this pass takes.
    lane: Priority,
    /// The last event of the range, fixed by the first page (the last `seq` then).
    upto: u64,
    /// Where a later page goes on: after this `seq` of `lane`.
    after: Option<u64>,
    /// This pass began at the range's first event, so `first` is complete.
    from_start: bool,
    /// The first `seq` of each priority met by this pass (by `Priority as usize`).
    first: [Option<u64>; 3],
}

impl Lanes {
    /// A page's lanes: the first page's (`upto` 0 until the last `seq` is known), or the
    /// one after `cursor`.
    fn new(upto: u64, cursor: Option<UnackedCursor>) -> Lanes {
        Lanes {
            lane: cursor.map_or(Priority::High, |(lane, _)| lane),
            upto,
            after: cursor.map(|(_, seq)| seq),
            from_start: cursor.is_none(),
            first: [None; 3],
        }
    }

    /// Notes event `seq` of `priority` met by the pass: whether the pass takes it.
    fn takes(&mut self, priority: Priority, seq: u64) -> bool {
        let first = &mut self.first[priority as usize];
        *first = Some(first.map_or(seq, |f| f.min(seq)));
        priority == self.lane
    }

    /// The pass is over: the next priority with events, and the `seq` its pass begins
    /// at; `None`: every priority is read.
    fn next_lane(&mut self, acked: u64) -> Option<u64> {
        for lane in LANES.into_iter().skip(self.lane as usize + 1) {
            self.lane = lane;
            if !self.from_start {
                // Where this priority begins is not known: from the first event.
                self.from_start = true;
                self.first = [None; 3];
                return Some(acked + 1);
            }
            if let Some(seq) = self.first[lane as usize] {
                return Some(seq);
            }
        }
        None
    }
}

/// A read under way: a page of one user's events from `next` on.
struct Read {
    user: Box<str>,
    reader: Reader,
    start: Start,
    step: ReadStep,
    record: AckRecord,
    /// The `seq` the next get starts at.
    next: u64,
    /// The last `seq` when the read started (first page only), for `covered`.
    last: u64,
    events: Vec<InboxEvent>,
    bytes: usize,
    /// Delivery order: for a device without `resume` (else `seq` order).
    lanes: Option<Lanes>,
    /// Every event after this `seq` must reach the device (a resume, and the pages
    /// after a first): the page is checked against purges that ran under it.
    guard: Option<u64>,
}

impl Read {
    /// A read for `reader` of `user`'s events from `start`.
    fn new(user: Box<str>, reader: Reader, start: Start) -> Read {
        Read {
            user,
            reader,
            start,
            step: ReadStep::Record,
            record: AckRecord::default(),
            next: 0,
            last: 0,
            events: Vec::new(),
            bytes: 0,
            lanes: None,
            guard: None,
        }
    }

    /// Settles a resume: from its `seq` on if `resumed`, else from the first event no
    /// device acknowledged (the start already set).
    fn resume(&mut self, resumed: bool) {
        if let (Start::Resume { seq, .. }, true) = (self.start, resumed) {
            self.next = seq + 1;
            self.guard = Some(seq);
        }
        if let Some(greeting) = self.greeting() {
            greeting.resumed = Some(resumed);
        }
    }

    /// The greeting the first page carries, if it is a device's first page.
    fn greeting(&mut self) -> Option<&mut Greeting> {
        match &mut self.reader {
            Reader::Device { greeting, .. } => greeting.as_mut(),
            Reader::Api { .. } => None,
        }
    }
}

/// A chat message, or a retry to confirm, waiting for its (receiver, sender) pair
/// ([`Pairs`]).
enum PairItem {
    Append(Append),
    Confirm(Confirm),
}

/// A sender's ack that waits on two answers: JetStream's, and the receiver's holders'
/// on other nodes, asked at the same time (by the question's request number).
enum AckWait {
    /// Neither answered yet.
    Asked,
    /// The holders answered first: whether a device of the receiver is online there.
    Answered { elsewhere: bool },
    /// JetStream stored it first: the ack waits for the holders.
    Stored {
        ack: AckTo,
        dedup: Option<(usize, Ticket)>,
        delivered: bool,
    },
}

/// The inboxes' side of the relay's connection.
pub(super) struct Inboxes {
    limits: StreamSettings,
    /// Each shard's inbox stream's creation time, as far as known on this connection:
    /// commands run once every shard's is.
    epochs: Vec<Box<str>>,
    /// Commands that came before the streams were known.
    held: Vec<Command>,
    /// Requests under way (answers to `<inbox>j<number>`).
    requests: Requests<Pending>,
    shares: HashMap<u64, ShareWait>,
    /// Retries waiting for the appends sent before them: `(first request after, retry)`.
    confirms: Vec<(u64, Confirm)>,
    /// Chat messages not kept lately: a retry's confirm due after one fails too.
    not_kept: NotKept,
    /// Senders' acks waiting on the receivers' holders, by the question's number.
    ack_waits: HashMap<u64, AckWait>,
    /// Users with an ack under way, and the highest `seq` asked since it started (0: none).
    acking: HashMap<Box<str>, u64>,
    /// The events seen live, which an ack takes without reading the stream.
    seen: Seen,
    /// Gaps read, for the relay to hand to the devices.
    filled: Vec<Filled>,
    /// Users with a gap in their live events being read: the read's number, and the live
    /// events that came meanwhile (`seq`, headers, payload), in order.
    filling: HashMap<Box<str>, (u64, Vec<LiveEvent>)>,
    /// The number of the last gap's read started.
    fills: u64,
    /// Users to read on after a reconnect, each from the newest event seen, in turn.
    to_read_on: VecDeque<(Box<str>, u64)>,
    /// Reads on under way.
    reading_on: usize,
    /// Chat messages kept, for the relay to hand to history.
    kept: Vec<KeptChat>,
    /// History's message index exists: a chat message is looked up there before it
    /// is appended ([`Pending::RetryCheck`]).
    index_ready: bool,
    /// The relay's inbox prefix, which names this process in [`EXCEPT_HEADER`].
    origin: Box<str>,
    /// Where this process's ack tokens start (from the inbox prefix's random part), and
    /// the last one given out.
    token_base: u64,
    tokens: u64,
    /// Per user, the receipts of acks whose record write got no answer.
    unsure: HashMap<Box<str>, Vec<Unsure>>,
    /// Users whose record is being read again for their unsure acks.
    settling: hashbrown::HashSet<Box<str>>,
    /// What each sender left unread for each user (`--queue-max-per-sender`).
    unread: Unread,
    /// One chat message in flight per (receiver, sender) pair, and what waits behind it.
    pairs: Pairs<PairItem>,
    /// Pairs whose message in flight is done: the next of each goes before this call
    /// returns ([`Inboxes::advance_pairs`]).
    pairs_done: Vec<u64>,
}

impl Inboxes {
    /// The inboxes of a relay whose answers come to `inbox` (`_INBOX.<random>.`).
    pub(super) fn new(inbox: &str, limits: StreamSettings) -> Inboxes {
        Inboxes {
            requests: Requests::new(inbox, 'j'),
            limits,
            epochs: Vec::new(),
            held: Vec::new(),
            shares: HashMap::new(),
            confirms: Vec::new(),
            not_kept: NotKept::new(),
            ack_waits: HashMap::new(),
            acking: HashMap::new(),
            seen: Seen::default(),
            filled: Vec::new(),
            filling: HashMap::new(),
            fills: 0,
            to_read_on: VecDeque::new(),
            reading_on: 0,
            kept: Vec::new(),
            index_ready: false,
            origin: inbox.into(),
            token_base: {
                use std::hash::{Hash, Hasher};
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                inbox.hash(&mut hasher);
                hasher.finish() | 1 << 63
            },
            tokens: 0,
            unsure: HashMap::new(),
            settling: hashbrown::HashSet::new(),
            unread: Unread::new(limits.queue_max_per_sender, limits.retention),
            pairs: Pairs::new(),
            pairs_done: Vec::new(),
        }
    }

    /// The device here that a live event's `headers` say is not to get it: a group
    /// post's sending device.
    pub(super) fn except_here(&self, headers: &[u8]) -> Option<Waiter> {
        let value = std::str::from_utf8(wire::header(headers, EXCEPT_HEADER)?).ok()?;
        let mut parts = value.split(' ');
        if parts.next()? != &*self.origin {
            return None;
        }
        let reactor = parts.next()?.parse().ok()?;
        let ticket = parts.next()?.parse().ok()?;
        Some(Waiter { reactor, ticket })
    }

    /// Whether history's message index exists now (set by the relay as history sets its
    /// streams up or loses them): until it does, a chat message is appended unchecked, and
    /// only JetStream's duplicate window recognises a retry.
    pub(super) fn set_index_ready(&mut self, ready: bool) {
        self.index_ready = ready;
    }

    /// `user`'s event `seq` came live (the republish's `headers` and `payload`): what the
    /// devices here get now. An event seen already is dropped. One after a gap (events
    /// republished while the relay was cut off from NATS) waits, with the user's events
    /// after it, while the gap is read from the stream ([`Inboxes::take_ready`]), so the
    /// devices get every event once and in order.
    pub(super) fn live(
        &mut self,
        user: &str,
        (seq, headers, payload): (u64, Bytes, Bytes),
        out: &mut BytesMut,
    ) -> Option<Ready> {
        if let Some((_, waiting)) = self.filling.get_mut(user) {
            waiting.push((seq, headers, payload));
            return None;
        }
        match self.seen.continuity(user, seq, last_of(&headers)) {
            Continuity::Again => {
                debug!("cluster: an inbox event seen already, dropped");
                None
            }
            Continuity::Gap { after } => {
                debug!(%user, after, seq, "cluster: live events missed; reading them");
                let upto = last_of(&headers);
                let waiting = vec![(seq, headers, payload)];
                self.start_fill(user.into(), (after, upto), waiting, out);
                None
            }
            Continuity::Next => {
                self.live_event(user, seq, &headers);
                Some(Ready::Live {
                    seq,
                    headers,
                    payload,
                })
            }
        }
    }

    /// `user`'s event `seq` came live (`headers`: the republish's), for the acks here.
    fn live_event(&mut self, user: &str, seq: u64, headers: &[u8]) {
        let receipt = wire::header(headers, RECEIPT_HEADER).and_then(parse_receipt);
        self.seen.event(user, seq, last_of(headers), receipt);
    }

    /// The gaps read since the last call, per user: the gap's events, then those that
    /// waited for it, in order; or, when the devices here cannot have all of them
    /// ([`FillEnd::Short`], or a gap among those that waited), that they must resume.
    /// Either way what was seen moves on past them, so that the user's next live event
    /// follows.
    pub(super) fn take_ready(&mut self) -> Vec<(Box<str>, Caught)> {
        let mut ready = Vec::new();
        for filled in std::mem::take(&mut self.filled) {
            let Filled {
                user, events, end, ..
            } = filled;
            let (_, waiting) = self.filling.remove(&user).unwrap_or_default();
            let mut events: Vec<Ready> = events
                .into_iter()
                .map(|(event, _)| Ready::Read(event))
                .collect();
            let mut whole = end == FillEnd::Whole;
            // Cut off again: what waited is read again after the reconnect.
            if end != FillEnd::CutOff {
                for (seq, headers, payload) in waiting {
                    match self.seen.continuity(&user, seq, last_of(&headers)) {
                        Continuity::Again => continue, // the read gave it
                        Continuity::Gap { .. } => whole = false,
                        Continuity::Next => {}
                    }
                    self.live_event(&user, seq, &headers);
                    events.push(Ready::Live {
                        seq,
                        headers,
                        payload,
                    });
                }
            }
            let caught = match whole || end == FillEnd::CutOff {
                true => Caught::Up(events),
                false => Caught::Missed,
            };
            ready.push((user, caught));
        }
        ready
    }

    /// The chat messages kept since the last call, for history.
    pub(super) fn take_kept(&mut self) -> Vec<KeptChat> {
        std::mem::take(&mut self.kept)
    }

    /// Starts reading `user`'s events after `after` up to `upto` (`u64::MAX`: a read on
    /// after a reconnect), while the live events `waiting` and those coming meanwhile
    /// wait.
    fn start_fill(
        &mut self,
        user: Box<str>,
        (after, upto): (u64, u64),
        waiting: Vec<LiveEvent>,
        out: &mut BytesMut,
    ) {
        self.fills += 1;
        self.filling.insert(user.clone(), (self.fills, waiting));
        let fill = Filled {
            number: self.fills,
            end: FillEnd::Reading,
            user,
            events: Vec::new(),
            after,
            next: after + 1,
            upto,
            read_on: upto == u64::MAX,
        };
        self.fill_step(fill, out);
    }

    /// The next event of a gap, or the gap is over.
    fn fill_step(&mut self, mut fill: Filled, out: &mut BytesMut) {
        if fill.next > fill.upto {
            return self.check_fill(fill, out);
        }
        if fill.events.len() >= FILL_MAX {
            fill.end = FillEnd::Short;
            return self.filled_up(fill);
        }
        let (stream, subject) = self.inbox_of(&fill.user);
        let body = serde_json::json!({"seq": fill.next, "next_by_subj": subject}).to_string();
        let pending = Pending::Fill(Box::new(fill));
        self.request(out, &direct_get(&stream), body.as_bytes(), pending);
    }

    /// Every event of a gap that the stream has is read: the user's record says whether
    /// others were removed before they could be (another device acknowledged them while
    /// this relay was cut off, and a generation of acknowledged events was purged).
    fn check_fill(&mut self, fill: Filled, out: &mut BytesMut) {
        let (stream, body) = self.record_of(&fill.user);
        let pending = Pending::FillChecked(Box::new(fill));
        self.request(out, &direct_get(&stream), &body, pending);
    }

    /// A gap's read has ended ([`Filled::end`]): its events join what was seen, in order,
    /// unless the user was let go meanwhile (and perhaps held again: another read is the
    /// user's now).
    fn filled_up(&mut self, fill: Filled) {
        if fill.read_on {
            self.reading_on -= 1;
        }
        if self.filling.get(&fill.user).map(|(number, _)| *number) != Some(fill.number) {
            return;
        }
        let mut last = fill.after;
        for (event, receipt) in &fill.events {
            self.seen
                .event(&fill.user, event.seq, last, receipt.clone());
            last = event.seq;
        }
        self.filled.push(fill);
    }

    /// This node no longer holds `user`: what it saw of the user's events goes, and a
    /// read of a gap of them is given up.
    pub(super) fn forget(&mut self, user: &str) {
        self.seen.forget(user);
        self.filling.remove(user);
    }

    /// The relay is connected: the streams are made sure of, shard after shard, before any
    /// command runs.
    pub(super) fn connected(&mut self, out: &mut BytesMut) {
        self.epochs.clear();
        self.set_up_shard(0, out);
    }

    /// Whether every shard's streams are known on this connection.
    fn set_up_done(&self) -> bool {
        self.epochs.len() == usize::from(self.limits.shards.count())
    }

    /// Asks for shard `shard`'s inbox stream (made, or described if it exists).
    fn set_up_shard(&mut self, shard: u16, out: &mut BytesMut) {
        let stream = Shards::stream(STREAM, shard);
        let subjects = shard_subjects(shard);
        let config = serde_json::json!({
            "name": stream,
            "subjects": [subjects],
            "storage": "file",
            "retention": "limits",
            "max_msgs_per_subject": self.subject_max(),
            "discard": "new",
            "discard_new_per_subject": true,
            "max_age": self.limits.retention.as_nanos() as u64,
            "duplicate_window": DUPLICATE_WINDOW.as_nanos() as u64,
            "allow_direct": true,
            "republish": {"src": subjects, "dest": "chat.live.>"},
            "num_replicas": self.limits.replicas,
        });
        let subject = format!("$JS.API.STREAM.CREATE.{stream}");
        let pending = Pending::Setup { shard };
        self.request(out, &subject, config.to_string().as_bytes(), pending);
    }

    /// The shard of `user`'s inbox.
    fn shard_of(&self, user: &str) -> u16 {
        self.limits.shards.of(user)
    }

    /// `user`'s inbox stream and subject.
    fn inbox_of(&self, user: &str) -> (String, String) {
        let shard = self.shard_of(user);
        (
            Shards::stream(STREAM, shard),
            inbox_subject(self.limits.shards, user),
        )
    }

    /// A direct get of `user`'s acknowledgement record: the stream asked, and the body.
    fn record_of(&self, user: &str) -> (String, Vec<u8>) {
        let subject = acks::record_subject(self.limits.shards, user);
        let body = serde_json::json!({"last_by_subj": subject});
        (
            acks::ack_stream(self.shard_of(user)),
            body.to_string().into_bytes(),
        )
    }

    /// A direct get of `user`'s last event: the stream asked, and the body.
    fn last_of_user(&self, user: &str) -> (String, Vec<u8>) {
        let (stream, subject) = self.inbox_of(user);
        let body = serde_json::json!({"last_by_subj": subject});
        (stream, body.to_string().into_bytes())
    }

    /// The events one user's subject holds at most: the unacknowledged ones up to
    /// `--queue-max-per-user`, and room for the acknowledged ones kept (fewer than two
    /// [`acks::generation`]s, which make one bound). So `queue_full` comes once the two
    /// together reach twice the bound: never before the bound's unacknowledged events,
    /// and at most twice as many (docs/cluster.md, "Inboxes").
    fn subject_max(&self) -> u64 {
        2 * self.limits.queue_max_per_user
    }

    /// Events a generation of acknowledged events counts.
    fn generation(&self) -> u64 {
        acks::generation(self.limits.queue_max_per_user)
    }

    /// The relay lost its connection: everything under way fails (the senders hear
    /// `cluster_unavailable`), and the stream is looked up again on reconnecting.
    pub(super) fn disconnected(&mut self) -> Replies {
        // What was seen stays: a gap while away shows at the next live event, and each
        // user is read on again after the next reconnect.
        self.epochs.clear();
        self.to_read_on.clear();
        let mut replies = Vec::new();
        // What waited behind a pair's message fails with it (the pairs are idle after).
        for item in self.pairs.drain() {
            let command = match item {
                PairItem::Append(append) => Command::Append(Box::new(append)),
                PairItem::Confirm(confirm) => Command::Confirm(Box::new(confirm)),
            };
            self.fail_command(command, Failure::Unreachable, &mut replies);
        }
        let pending = self.requests.drain();
        for pending in pending {
            self.fail(pending, Failure::Unreachable, &mut replies);
        }
        for command in std::mem::take(&mut self.held) {
            self.fail_command(command, Failure::Unreachable, &mut replies);
        }
        self.answer_confirms(&mut replies);
        self.pairs_done.clear();
        replies
    }

    /// One command from a reactor.
    pub(super) fn command(
        &mut self,
        command: Command,
        connected: bool,
        out: &mut BytesMut,
    ) -> Replies {
        let mut replies = Vec::new();
        let waiting = self.requests.len() + self.held.len() + self.pairs.queued();
        let overloaded = waiting >= IN_FLIGHT_MAX;
        if !connected || overloaded {
            self.fail_command(command, Failure::Unreachable, &mut replies);
        } else if !self.set_up_done() {
            // The streams are being set up, or their last set-up failed: ask again.
            let setting_up = self
                .requests
                .iter()
                .any(|(_, p)| matches!(p, Pending::Setup { .. } | Pending::SetupAcks { .. }));
            if !setting_up {
                self.connected(out);
            }
            self.held.push(command);
        } else {
            self.carry_out(command, out, &mut replies);
            self.advance_pairs(out, &mut replies);
        }
        replies
    }

    fn carry_out(&mut self, command: Command, out: &mut BytesMut, replies: &mut Replies) {
        match command {
            Command::Append(append) => match self.lane(&append) {
                Some(pair) => self.enter_pair(pair, PairItem::Append(*append), out, replies),
                None => self.append(*append, out),
            },
            Command::AppendShare(share) => self.append_share(*share, out, replies),
            Command::Confirm(confirm) => {
                let pair = self.pairs.key(&confirm.receiver, &confirm.chat.sender);
                self.enter_pair(pair, PairItem::Confirm(*confirm), out, replies);
            }
            Command::ReadInbox { user, device, from } => self.read_inbox(user, device, from, out),
            Command::Peek { user, requester } => {
                let read = Read::new(user, Reader::Api { requester }, Start::Unacked);
                self.get(read, out);
            }
            Command::Ack {
                user,
                upto,
                device: None,
                home,
            } => {
                // From the driver (a v1 device's frames, the API's drain): never above the
                // last `seq`, so not checked.
                self.start_ack(user, upto, home, out);
            }
            Command::Ack {
                user,
                upto,
                device,
                home,
            } => {
                let (stream, body) = self.last_of_user(&user);
                let check = Pending::AckCheck {
                    user,
                    upto,
                    device,
                    home,
                };
                self.request(out, &direct_get(&stream), &body, check);
            }
            Command::Membership {
                ref group,
                settings: Some(ref change),
                ..
            } => {
                let subject = format!("$KV.{GROUP_BUCKET}.{}", settings_key(group));
                let record = change.after.encode();
                let (headers, value): (&[(&str, &str)], &[u8]) = match change.after.is_default() {
                    false => (&[], &record),
                    true => (&[("KV-Operation", "DEL")], b""),
                };
                let pending = Pending::GroupSettings(Box::new(command));
                self.requests.send(out, (&subject, headers), value, pending);
            }
            Command::Membership { .. } => self.put_member(command, out),
            // Never sent in a cluster: a relaying home does not number events.
            Command::OpenInbox { .. } => {}
            other => warn!("cluster: not an inbox command: {other:?}"),
        }
    }

    /// A chat message or a retry of pair `pair` arrives: it goes now if the pair is idle,
    /// else once those before it are done.
    fn enter_pair(&mut self, pair: u64, item: PairItem, out: &mut BytesMut, replies: &mut Replies) {
        if let Some(item) = self.pairs.enter(pair, item) {
            self.start_pair_item(item, out, replies);
        }
    }

    /// A pair's message starts its lookups; a retry waits for every append sent before
    /// it to be answered, then is confirmed.
    fn start_pair_item(&mut self, item: PairItem, out: &mut BytesMut, replies: &mut Replies) {
        match item {
            PairItem::Append(append) => self.append(append, out),
            PairItem::Confirm(confirm) => {
                // Every request sent so far has an id up to `next`.
                self.confirms
                    .push((self.requests.last_number() + 1, confirm));
                self.answer_confirms(replies);
            }
        }
    }

    /// The chat message of `user` from `sender` in flight is done (JetStream answered
    /// it, or it was refused or failed): the pair's next goes.
    fn chat_done(&mut self, user: &str, sender: &str) {
        let pair = self.pairs.key(user, sender);
        self.pairs_done.push(pair);
    }

    /// The same for an append in a lane ([`Inboxes::lane`]).
    fn append_done(&mut self, append: &Append) {
        if let Some(pair) = self.lane(append) {
            self.pairs_done.push(pair);
        }
    }

    /// The lane in [`Pairs`] of an append: a chat message's is its (receiver, sender)
    /// pair; a copy for its sender's other devices takes the lane of her messages to
    /// herself, in her inbox too, so that her devices get what she sent in the order
    /// she sent it. Other events have none.
    fn lane(&self, append: &Append) -> Option<u64> {
        match (&append.chat, &append.copy) {
            (Some(chat), _) => Some(self.pairs.key(&append.user, &chat.sender)),
            (None, Some(_)) => Some(self.pairs.key(&append.user, &append.user)),
            (None, None) => None,
        }
    }

    /// Starts the next item of every pair whose item in flight is done (one that is done
    /// at once lets the next of its pair go in turn).
    fn advance_pairs(&mut self, out: &mut BytesMut, replies: &mut Replies) {
        while let Some(pair) = self.pairs_done.pop() {
            if let Some(next) = self.pairs.done(pair) {
                self.start_pair_item(next, out, replies);
            }
        }
    }

    /// Writes a membership to the bucket of groups (a put for a join, a delete for a leave).
    fn put_member(&mut self, command: Command, out: &mut BytesMut) {
        let Command::Membership {
            ref group,
            ref user,
            joined,
            ..
        } = command
        else {
            return;
        };
        let subject = format!("$KV.{GROUP_BUCKET}.{}", member_key(group, user));
        let (headers, value): (&[(&str, &str)], &[u8]) = match joined {
            true => (&[], b"1"),
            false => (&[("KV-Operation", "DEL")], b""),
        };
        let pending = Pending::Membership(Box::new(command));
        self.requests.send(out, (&subject, headers), value, pending);
    }

    /// Appends one event; a chat message is first looked up in history's index, which
    /// recognises a client's retry for as long as the message is kept (JetStream's
    /// duplicate window, [`DUPLICATE_WINDOW`], only for two minutes).
    fn append(&mut self, append: Append, out: &mut BytesMut) {
        match &append.chat {
            Some(chat) if self.index_ready => {
                let key = received::index_key(self.limits.shards, &append.user, &chat.message_id);
                let pending = Pending::RetryCheck(Box::new(append));
                self.request(out, &direct_get(&key.stream()), &key.get(), pending);
            }
            _ if append.copy.as_ref().is_some_and(|copy| !copy.others_here) => {
                let subject = relay::live_subject(&append.user);
                let pending = Pending::CopyCheck(Box::new(append));
                let question = relay::DEVICES_QUESTION;
                self.requests
                    .send_within(out, (&subject, &[]), question, pending, HOLDERS_WAIT);
            }
            _ => self.within_quota(append, out),
        }
    }

    /// Publishes one event, unless it is a device's chat message that no device here got
    /// and its sender has `--queue-max-per-sender` of them unread for the receiver
    /// ([`unread`]): at the bound the receiver's record is read first, and the message
    /// refused (`sender_quota`) if none of them was read.
    fn within_quota(&mut self, append: Append, out: &mut BytesMut) {
        // As on one node: API sends and messages to oneself are not counted.
        let from_device = append.receipt && append.ack.as_ref().is_some_and(|a| !a.delivered);
        let pair = match &append.chat {
            Some(chat) if from_device && *chat.sender != *append.user && self.unread.bounded() => {
                self.pairs.key(&append.user, &chat.sender)
            }
            _ => return self.publish(append, None, out),
        };
        match self.unread.take(pair, Instant::now()) {
            Take::Counted(counted) => self.publish(append, Some(counted), out),
            Take::AskRecord => {
                let (stream, body) = self.record_of(&append.user);
                let pending = Pending::QuotaCheck {
                    append: Box::new(append),
                    pair,
                };
                self.request(out, &direct_get(&stream), &body, pending);
            }
        }
    }

    /// Publishes one event to its user's subject (`counted`: its place in its sender's
    /// quota).
    fn publish(&mut self, append: Append, counted: Option<unread::Counted>, out: &mut BytesMut) {
        let payload = encode_event(append.event.kind, append.event.priority, &append.event.json);
        let subject = inbox_subject(self.limits.shards, &append.user);
        let (msg_id, receipt) = match (&append.chat, &append.copy) {
            (Some(chat), _) => {
                let (sender, id) = (subject_token(&chat.sender), subject_token(&chat.message_id));
                (format!("{sender}.{id}"), format!("{sender} {id}"))
            }
            // Not the message's own id: the two may share a stream.
            (None, Some(copy)) => {
                let (sender, id) = (subject_token(&append.user), subject_token(&copy.message_id));
                (format!("{sender}.{id}.copy"), String::new())
            }
            (None, None) => Default::default(),
        };
        let except = append
            .copy
            .as_ref()
            .and_then(|copy| copy.except)
            .map(|device| format!("{} {} {}", self.origin, device.reactor, device.ticket));
        let mut headers = Vec::with_capacity(2);
        if !msg_id.is_empty() {
            headers.push(("Nats-Msg-Id", msg_id.as_str()));
        }
        if append.chat.is_some() && append.receipt {
            headers.push((RECEIPT_HEADER, receipt.as_str()));
        }
        if let Some(except) = &except {
            headers.push((EXCEPT_HEADER, except.as_str()));
        }
        // No device of the receiver here: whether one is on another node tells `sent`.
        let asked = match &append.ack {
            Some(ack) if !ack.delivered => Some(self.ask_holders(&append.user, out)),
            _ => None,
        };
        let lane = self.lane(&append);
        let chat = append.chat.map(|chat| {
            let kept = KeptChat {
                user: append.user,
                chat,
                json: append.event.json,
                seq: 0,
            };
            Box::new(kept)
        });
        let pending = Pending::Append {
            ack: append.ack,
            dedup: append.dedup,
            chat,
            asked,
            counted,
            lane,
        };
        self.requests
            .send(out, (&subject, &headers), &payload, pending);
    }

    /// Asks the nodes holding `user` whether a device of the user is online there; the
    /// answer comes back as [`Pending::Holders`], "no responders" when none holds the user.
    fn ask_holders(&mut self, user: &str, out: &mut BytesMut) -> u64 {
        let subject = relay::live_subject(user);
        let to = (subject.as_str(), &[][..]);
        // The question's own request number names it.
        let asked = self.requests.last_number() + 1;
        let pending = Pending::Holders { asked };
        let question = relay::DEVICES_QUESTION;
        let sent = self
            .requests
            .send_within(out, to, question, pending, HOLDERS_WAIT);
        debug_assert_eq!(sent, asked);
        self.ack_waits.insert(asked, AckWait::Asked);
        asked
    }

    /// Publishes one event per row; the waiting reactor hears the counts after the last.
    fn append_share(&mut self, share: Share, out: &mut BytesMut, replies: &mut Replies) {
        if share.rows.is_empty() {
            replies.push(answers::fan_out_counts(&share, 0, 0, false));
            return;
        }
        let share_id = self.requests.take_number();
        for row in &share.rows {
            let json = row.json.as_ref().unwrap_or(&share.json);
            let payload = encode_event(share.kind, share.priority, json);
            let subject = inbox_subject(self.limits.shards, &row.user);
            let except = row
                .except
                .map(|device| format!("{} {} {}", self.origin, device.reactor, device.ticket));
            let headers: &[(&str, &str)] = match &except {
                Some(value) => &[(EXCEPT_HEADER, value.as_str())],
                None => &[],
            };
            let pending = Pending::Row { share: share_id };
            self.requests
                .send(out, (&subject, headers), &payload, pending);
        }
        let wait = ShareWait {
            purpose: share.purpose,
            reply_to: share.reply_to,
            request: share.request,
            delivered: share.delivered,
            rows_left: share.rows.len(),
            queued: 0,
            not_kept: 0,
        };
        self.shares.insert(share_id, wait);
    }

    /// Starts a page of `user`'s inbox for `device`.
    fn read_inbox(&mut self, user: Box<str>, device: Waiter, from: ReadFrom, out: &mut BytesMut) {
        let shard = usize::from(self.shard_of(&user));
        let epoch: Box<str> = self.epochs.get(shard).cloned().unwrap_or_default();
        let start = match from {
            ReadFrom::Resume { epoch: theirs, seq } => Start::Resume {
                epoch_matches: theirs == epoch,
                seq,
            },
            ReadFrom::Unacked { upto, cursor } if upto > 0 => {
                // A later page in delivery order: from the record (for `acked`) on.
                let reader = Reader::Device {
                    device,
                    greeting: None,
                };
                let mut read = Read::new(user, reader, Start::Unacked);
                read.lanes = Some(Lanes::new(upto, cursor));
                return self.get(read, out);
            }
            ReadFrom::Unacked { .. } => Start::Unacked,
            ReadFrom::After { seq } => {
                let reader = Reader::Device {
                    device,
                    greeting: None,
                };
                let mut read = Read::new(user, reader, Start::Unacked);
                read.step = ReadStep::Events;
                read.next = seq + 1;
                read.guard = Some(seq);
                return self.get(read, out);
            }
        };
        let resumed = matches!(start, Start::Resume { .. }).then_some(false);
        let greeting = Greeting {
            epoch,
            seq: 0,
            resumed,
        };
        let reader = Reader::Device {
            device,
            greeting: Some(greeting),
        };
        let mut read = Read::new(user, reader, start);
        if matches!(start, Start::Unacked) {
            read.lanes = Some(Lanes::new(0, None));
        }
        self.get(read, out);
    }

    /// The read's next request: the user's record, the last `seq`, or the next event.
    fn get(&mut self, read: Read, out: &mut BytesMut) {
        let (stream, body) = match read.step {
            ReadStep::Record | ReadStep::Verify { .. } => self.record_of(&read.user),
            ReadStep::Last => self.last_of_user(&read.user),
            ReadStep::First => {
                // The shard stream's first event, any user's.
                let shard = self.shard_of(&read.user);
                let subjects = shard_subjects(shard);
                let body = serde_json::json!({"seq": 1, "next_by_subj": subjects});
                (Shards::stream(STREAM, shard), body.to_string().into_bytes())
            }
            ReadStep::Events => {
                let (stream, subject) = self.inbox_of(&read.user);
                let body = serde_json::json!({"seq": read.next, "next_by_subj": subject});
                (stream, body.to_string().into_bytes())
            }
        };
        self.request(
            out,
            &direct_get(&stream),
            &body,
            Pending::Read(Box::new(read)),
        );
    }

    /// JetStream's answer to request `id` (`<inbox>j<id>`).
    pub(super) fn answered(
        &mut self,
        id: &[u8],
        status: Option<u16>,
        headers: &[u8],
        payload: &Bytes,
        out: &mut BytesMut,
    ) -> Replies {
        let mut replies = Vec::new();
        let Some(pending) = self.requests.answered(id) else {
            return replies;
        };
        match pending {
            Pending::Setup { shard } => self.set_up(shard, status, payload, out, &mut replies),
            Pending::SetupAcks { shard, epoch } => {
                self.set_up_acks((shard, epoch), status, payload, out, &mut replies)
            }
            Pending::RetryCheck(append) => {
                let sender = append.chat.as_ref().map(|chat| &*chat.sender);
                let held = status.is_none() && received::parse_index(payload).as_deref() == sender;
                if held {
                    // The first copy is kept: acknowledged again, not stored twice.
                    debug!("cluster: a retry after the duplicate window, not stored twice");
                    if let Some(chat) = &append.chat {
                        self.not_kept
                            .kept(&append.user, &chat.sender, &chat.message_id);
                    }
                    let delivered = append.ack.as_ref().is_some_and(|a| a.delivered);
                    let outcome = Outcome::Kept { delivered };
                    answers::stored_first_outcome(
                        &mut replies,
                        append.ack.as_ref(),
                        append.dedup,
                        outcome,
                    );
                    self.append_done(&append);
                } else {
                    // Not indexed (or another sender's message with the same id, or the
                    // index unreadable just now): stored, JetStream's window still
                    // recognising a retry within it.
                    self.within_quota(*append, out);
                }
            }
            Pending::QuotaCheck { append, pair } => {
                let acked = match status {
                    Some(404) => Some(0),
                    Some(_) => None,
                    None => {
                        let stored = stored_record(headers, payload);
                        if stored.is_none() {
                            warn!(
                                "cluster: {}'s acknowledgement record is unreadable",
                                append.user
                            );
                        }
                        stored.map(|stored| stored.record.acked)
                    }
                };
                match acked {
                    Some(acked) if self.unread.reading(pair, acked) => {
                        self.within_quota(*append, out)
                    }
                    Some(_) => {
                        refuse_over_quota(&append, &mut replies);
                        self.chat_not_kept(&append);
                        self.append_done(&append);
                    }
                    None => {
                        self.chat_not_kept(&append);
                        let outcome = Outcome::Failed(Failure::Unreachable);
                        answers::stored_first_outcome(
                            &mut replies,
                            append.ack.as_ref(),
                            append.dedup,
                            outcome,
                        );
                        self.append_done(&append);
                    }
                }
            }
            Pending::Append {
                ack,
                dedup,
                chat,
                asked,
                counted,
                lane,
            } => {
                self.pairs_done.extend(lane);
                let outcome = publish_outcome(status, payload, ack.as_ref());
                let kept = matches!(outcome, Outcome::Kept { .. });
                if let Some(chat) = &chat {
                    let (user, sender, id) = (&chat.user, &chat.chat.sender, &chat.chat.message_id);
                    match kept {
                        true => self.not_kept.kept(user, sender, id),
                        false => self.not_kept.record(user, sender, id),
                    }
                }
                if kept && (chat.is_some() || counted.is_some()) {
                    let answer: Value = serde_json::from_slice(payload).unwrap_or_default();
                    let seq = answer["seq"].as_u64().unwrap_or(0);
                    match counted {
                        // A retry JetStream recognised stored nothing new.
                        Some(counted) if answer["duplicate"] == true => {
                            self.unread.give_back(counted)
                        }
                        Some(counted) => self.unread.stored(counted, seq),
                        None => {}
                    }
                    if let Some(mut chat) = chat {
                        chat.seq = seq;
                        self.kept.push(*chat);
                    }
                } else if let Some(counted) = counted {
                    self.unread.give_back(counted);
                }
                self.appended((ack, dedup, asked), outcome, &mut replies);
            }
            Pending::Holders { asked } => {
                let here = status.is_none() && payload[..] == *relay::DEVICES_HERE;
                self.holders_said(asked, here, &mut replies);
            }
            Pending::CopyCheck(append) => {
                if status.is_none() && payload[..] == *relay::DEVICES_HERE {
                    self.within_quota(*append, out);
                } else {
                    self.append_done(&append);
                }
            }
            Pending::Row { share } => {
                let kept = matches!(publish_outcome(status, payload, None), Outcome::Kept { .. });
                self.row_done(share, kept, &mut replies);
            }
            Pending::Read(read) => {
                self.read_step(*read, status, headers, payload, out, &mut replies)
            }
            Pending::AckCheck {
                user,
                upto,
                device,
                home,
            } => {
                let last = match status {
                    Some(404) => None,
                    Some(_) => return replies,
                    None => sequence_of(headers),
                };
                match (last, device) {
                    (Some(last), Some(device)) if upto > last => {
                        let refused = Reply::AckRefused {
                            device,
                            seq: upto,
                            last,
                        };
                        replies.push((device.reactor, refused));
                    }
                    _ => self.start_ack(user, upto, home, out),
                }
            }
            Pending::AckFetch(scan) => {
                let fetched = match status {
                    Some(404) => Some(acks::Stored::default()),
                    Some(_) => None,
                    None => stored_record(headers, payload),
                };
                match fetched {
                    Some(fetched) => {
                        let over = acks::token_of(headers, acks::OVER_HEADER);
                        self.settle(&scan.user, fetched, over, &mut replies);
                        self.go_on_from(*scan, fetched, out)
                    }
                    None => {
                        warn!(
                            "cluster: {}'s acknowledgement record is unreadable",
                            scan.user
                        );
                        self.acking.remove(&scan.user);
                    }
                }
            }
            Pending::AckScan(mut scan) => {
                let found = match status {
                    None => sequence_of(headers).filter(|seq| *seq <= scan.upto),
                    _ => None,
                };
                match found {
                    Some(seq) => {
                        if let Some(receipt) = wire::header(headers, RECEIPT_HEADER) {
                            scan.receipts.extend(parse_receipt(receipt));
                        }
                        scan.record.take(seq, self.generation());
                        scan.next = seq + 1;
                    }
                    None => scan.next = scan.upto + 1,
                }
                self.scan(*scan, out);
            }
            Pending::AckWrite(scan) => {
                let answer: Value = serde_json::from_slice(payload).unwrap_or_default();
                match answer["seq"].as_u64().filter(|_| status.is_none()) {
                    Some(revision) if revision > 0 => {
                        self.ack_written(*scan, revision, out, &mut replies)
                    }
                    _ if answer["error"]["err_code"].as_u64() == Some(WRONG_LAST_SEQUENCE) => {
                        // A device on another node acknowledged meanwhile: again, from
                        // the record it wrote.
                        debug!("cluster: {}'s acknowledgement record moved", scan.user);
                        self.seen.moved(&scan.user);
                        let AckScan {
                            user, upto, home, ..
                        } = *scan;
                        self.fetch_record(AckScan::new(user, upto, home), out);
                    }
                    _ => {
                        warn!(
                            "cluster: {}'s acknowledgement was not stored: {}",
                            scan.user,
                            api_error(status, payload).unwrap_or_default()
                        );
                        self.acking.remove(&scan.user);
                    }
                }
            }
            Pending::Settle(user) => {
                self.settling.remove(&user);
                let fetched = match status {
                    Some(404) => Some(acks::Stored::default()),
                    Some(_) => None,
                    None => stored_record(headers, payload),
                };
                if let Some(fetched) = fetched {
                    let over = acks::token_of(headers, acks::OVER_HEADER);
                    self.settle(&user, fetched, over, &mut replies);
                }
            }
            Pending::Membership(command) => {
                let failed = match publish_outcome(status, payload, None) {
                    Outcome::Kept { .. } => None,
                    _ => Some(Failure::Refused),
                };
                replies.extend(answers::membership_answer(&command, failed));
            }
            Pending::GroupSettings(command) => match publish_outcome(status, payload, None) {
                Outcome::Kept { .. } => self.put_member(*command, out),
                _ => replies.extend(answers::membership_answer(&command, Some(Failure::Refused))),
            },
            Pending::Fill(mut fill) => match (status, sequence_of(headers)) {
                (None, Some(seq)) if seq <= fill.upto => {
                    if let Some((kind, priority, json)) = decode_event(payload) {
                        let receipt = wire::header(headers, RECEIPT_HEADER).and_then(parse_receipt);
                        let event = InboxEvent {
                            seq,
                            kind,
                            priority,
                            json,
                        };
                        fill.events.push((event, receipt));
                    }
                    fill.next = seq + 1;
                    self.fill_step(*fill, out);
                }
                // Read on to the user's newest event.
                (Some(404), _) if fill.read_on => self.check_fill(*fill, out),
                // The gap's last event is not there (removed), or JetStream refused.
                _ => {
                    fill.end = FillEnd::Short;
                    self.filled_up(*fill);
                }
            },
            Pending::FillChecked(mut fill) => {
                let record = match status {
                    None => AckRecord::parse(payload),
                    Some(404) => Some(AckRecord::default()),
                    Some(_) => None,
                };
                // Every event up to `gone` may have been removed: if that is past the
                // newest event seen before the gap, the read may have come too late.
                fill.end = match record {
                    Some(record) if record.gone <= fill.after => FillEnd::Whole,
                    _ => FillEnd::Short,
                };
                self.filled_up(*fill);
            }
            // Left behind, the events go with the next purge (or `--retention-days`).
            Pending::Purge => {
                if let Some(error) = api_error(status, payload) {
                    warn!("cluster: acknowledged events were not removed: {error}");
                }
            }
        }
        self.answer_confirms(&mut replies);
        self.advance_pairs(out, &mut replies);
        if !self.to_read_on.is_empty() {
            self.read_on_more(out);
        }
        replies
    }

    /// Starts taking `user`'s events up to `upto`, one ack of the user at a time: while
    /// one runs, later ones only raise where the next goes to, so no event is read or
    /// receipted twice, and a burst of acks costs one pass.
    fn start_ack(&mut self, user: Box<str>, upto: u64, home: usize, out: &mut BytesMut) {
        if let Some(more) = self.acking.get_mut(&user) {
            *more = (*more).max(upto);
            return;
        }
        self.acking.insert(user.clone(), 0);
        let scan = AckScan::new(user, upto, home);
        match self.seen.record(&scan.user) {
            Some(known) => self.go_on_from(scan, known, out),
            None => self.fetch_record(scan, out),
        }
    }

    /// The ack goes on from the user's record at its revision (0: none yet).
    fn go_on_from(&mut self, mut scan: AckScan, stored: acks::Stored, out: &mut BytesMut) {
        let acks::Stored {
            record,
            revision,
            writer,
        } = stored;
        scan.record = record;
        scan.revision = revision;
        scan.over = writer;
        scan.gone_before = record.gone;
        scan.next = record.acked + 1;
        if record.acked >= scan.upto {
            // Nothing new: another device got there first.
            self.ack_done(scan, out);
        } else {
            self.take_events(scan, out);
        }
    }

    /// `user`'s record as read now (and the writer its write replaced, `over`) settles
    /// the user's unsure acks: one whose token wrote it, or the record it replaced,
    /// landed, and its receipts go; one the record has not reached did not, and a later
    /// ack takes its events again. One further back cannot be told apart: its receipts
    /// are dropped rather than perhaps sent twice.
    fn settle(&mut self, user: &str, now: acks::Stored, over: u64, replies: &mut Replies) {
        let Some(unsure) = self.unsure.remove(user) else {
            return;
        };
        for ack in unsure {
            if ack.token == now.writer || ack.token == over {
                let receipts = ack.receipts;
                replies.push((
                    ack.home,
                    Reply::Receipts {
                        user: user.into(),
                        receipts,
                    },
                ));
            } else if now.record.acked >= ack.upto {
                debug!(%user, "cluster: an unanswered ack's receipts cannot be placed; dropped");
            }
        }
    }

    /// Asks for the record an ack starts from.
    fn fetch_record(&mut self, scan: AckScan, out: &mut BytesMut) {
        let (stream, body) = self.record_of(&scan.user);
        let pending = Pending::AckFetch(Box::new(scan));
        self.request(out, &direct_get(&stream), &body, pending);
    }

    /// Takes the events an ack covers from what was seen live if it can, else from the
    /// stream, one read after another.
    fn take_events(&mut self, mut scan: AckScan, out: &mut BytesMut) {
        if let Some(events) = self.seen.between(&scan.user, scan.record.acked, scan.upto) {
            for (seq, receipt) in events {
                scan.receipts.extend(receipt);
                scan.record.take(seq, self.generation());
            }
            scan.next = scan.upto + 1;
        }
        self.scan(scan, out);
    }

    /// The next event an ack takes or, past the last, the record's write.
    fn scan(&mut self, mut scan: AckScan, out: &mut BytesMut) {
        if scan.next > scan.upto {
            scan.record.acked = scan.upto;
            self.tokens += 1;
            scan.token = self.token_base.wrapping_add(self.tokens);
            let subject = acks::record_subject(self.limits.shards, &scan.user);
            let (revision, token, over) = (
                scan.revision.to_string(),
                scan.token.to_string(),
                scan.over.to_string(),
            );
            let headers = [
                ("Nats-Expected-Last-Subject-Sequence", revision.as_str()),
                (acks::WRITER_HEADER, token.as_str()),
                (acks::OVER_HEADER, over.as_str()),
            ];
            let value = scan.record.encode();
            let pending = Pending::AckWrite(Box::new(scan));
            return self
                .requests
                .send(out, (&subject, &headers), value.as_bytes(), pending);
        }
        let (stream, subject) = self.inbox_of(&scan.user);
        let body = serde_json::json!({"seq": scan.next, "next_by_subj": subject}).to_string();
        let pending = Pending::AckScan(Box::new(scan));
        self.request(out, &direct_get(&stream), body.as_bytes(), pending);
    }

    /// The record is stored at `revision`: the senders waiting on a receipt hear of it,
    /// and a generation of acknowledged events the ack closed goes. (By one purge of the
    /// user's subject up to it: deleting acknowledged events one by one cost nats-server
    /// 52 to 424 µs each, `python3 benches/tools/jetstream_costs.py`.)
    fn ack_written(
        &mut self,
        mut scan: AckScan,
        revision: u64,
        out: &mut BytesMut,
        replies: &mut Replies,
    ) {
        if scan.record.gone > scan.gone_before {
            let (stream, filter) = self.inbox_of(&scan.user);
            let body = serde_json::json!({
                "filter": filter,
                "seq": scan.record.gone + 1,
            });
            let subject = format!("$JS.API.STREAM.PURGE.{stream}");
            self.request(out, &subject, body.to_string().as_bytes(), Pending::Purge);
        }
        if !scan.receipts.is_empty() {
            let receipts = std::mem::take(&mut scan.receipts);
            let user = scan.user.clone();
            replies.push((scan.home, Reply::Receipts { user, receipts }));
        }
        scan.revision = revision;
        scan.gone_before = scan.record.gone;
        scan.over = scan.token;
        let stored = acks::Stored {
            record: scan.record,
            revision,
            writer: scan.token,
        };
        self.seen.written(&scan.user, stored);
        self.ack_done(scan, out);
    }

    /// An ack of the user is over: one that came meanwhile goes on from the record this
    /// one left.
    fn ack_done(&mut self, mut scan: AckScan, out: &mut BytesMut) {
        match self.acking.remove(&scan.user) {
            Some(more) if more > scan.record.acked => {
                self.acking.insert(scan.user.clone(), 0);
                scan.upto = more;
                scan.next = scan.record.acked + 1;
                self.take_events(scan, out);
            }
            _ => {}
        }
    }

    /// Fails the requests JetStream did not answer within [`requests::REQUEST_WAIT`], and
    /// reads again the record of each user with an unsure ack.
    pub(super) fn expire(&mut self, now: Instant, out: &mut BytesMut) -> Replies {
        let mut replies = Vec::new();
        self.unread.sweep(now);
        for pending in self.requests.late(now) {
            if matches!(pending, Pending::Setup { .. } | Pending::SetupAcks { .. }) {
                warn!("cluster: JetStream did not answer the inbox streams' set-up");
                for command in std::mem::take(&mut self.held) {
                    fail_command(command, Failure::Unreachable, &mut replies);
                }
            }
            self.fail(pending, Failure::Unreachable, &mut replies);
        }
        self.answer_confirms(&mut replies);
        if self.set_up_done() {
            let mut due: Vec<Box<str>> = self
                .unsure
                .keys()
                .filter(|user| !self.settling.contains(*user))
                .cloned()
                .collect();
            // In a fixed order, as every request is sent (the map's is random).
            due.sort_unstable();
            for user in due {
                let (stream, body) = self.record_of(&user);
                self.settling.insert(user.clone());
                self.request(out, &direct_get(&stream), &body, Pending::Settle(user));
            }
        }
        self.advance_pairs(out, &mut replies);
        replies
    }

    /// Shard `shard`'s inbox stream exists (made now, or already): its creation time is
    /// the epoch of the shard's users, and the shard's stream of acknowledgement records is
    /// made sure of next. If it could not be set up, what waits fails, and the next
    /// command asks again.
    fn set_up(
        &mut self,
        shard: u16,
        status: Option<u16>,
        payload: &Bytes,
        out: &mut BytesMut,
        replies: &mut Replies,
    ) {
        let answer: Value = serde_json::from_slice(payload).unwrap_or_default();
        let stream = Shards::stream(STREAM, shard);
        if answer["error"]["err_code"].as_u64() == Some(STREAM_DIFFERS) {
            // Another node made it with other limits: use it as it is.
            warn!("cluster: stream {stream} exists with another configuration; using it as it is");
            let subject = format!("$JS.API.STREAM.INFO.{stream}");
            return self.request(out, &subject, b"", Pending::Setup { shard });
        }
        let created = answer["created"].as_str();
        let Some(created) = created.filter(|_| status.is_none()) else {
            return self.set_up_failed(&stream, status, payload, replies);
        };
        let subject = format!("$JS.API.STREAM.CREATE.{}", acks::ack_stream(shard));
        let config = acks::stream_config(self.limits.replicas, shard).to_string();
        let pending = Pending::SetupAcks {
            shard,
            epoch: created.into(),
        };
        self.request(out, &subject, config.as_bytes(), pending);
    }

    /// Shard `shard`'s stream of acknowledgement records exists (made now, or already,
    /// with this configuration or another): the next shard is set up, and after the last
    /// the commands held meanwhile run.
    fn set_up_acks(
        &mut self,
        (shard, epoch): (u16, Box<str>),
        status: Option<u16>,
        payload: &Bytes,
        out: &mut BytesMut,
        replies: &mut Replies,
    ) {
        let answer: Value = serde_json::from_slice(payload).unwrap_or_default();
        let differs = answer["error"]["err_code"].as_u64() == Some(STREAM_DIFFERS);
        if status.is_some() || (answer.get("error").is_some() && !differs) {
            return self.set_up_failed(&acks::ack_stream(shard), status, payload, replies);
        }
        self.epochs.push(epoch);
        if !self.set_up_done() {
            return self.set_up_shard(shard + 1, out);
        }
        let shards = self.limits.shards.count();
        info!(stream = STREAM, shards, "cluster: inboxes in JetStream");
        for command in std::mem::take(&mut self.held) {
            self.carry_out(command, out, replies);
        }
        self.read_what_was_missed(out);
    }

    /// Set up on a new connection: each user whose events were seen here reads on from
    /// the newest one seen, since an event republished while the relay was cut off never
    /// came, and the user's devices here would not get it until the user's next event.
    /// [`READ_ON_AT_ONCE`] users at a time; a user's live events wait meanwhile, as
    /// behind a gap.
    fn read_what_was_missed(&mut self, out: &mut BytesMut) {
        self.to_read_on = self.seen.newest_of_each().into();
        self.read_on_more(out);
    }

    /// Starts reading on for the next users waiting, up to [`READ_ON_AT_ONCE`] at once.
    fn read_on_more(&mut self, out: &mut BytesMut) {
        while self.reading_on < READ_ON_AT_ONCE {
            let Some((user, after)) = self.to_read_on.pop_front() else {
                return;
            };
            // Reading a gap already, or no longer held: nothing to read on.
            if self.filling.contains_key(&user) || !self.seen.has(&user) {
                continue;
            }
            self.reading_on += 1;
            self.start_fill(user, (after, u64::MAX), Vec::new(), out);
        }
    }

    /// `stream` could not be set up: the commands held fail.
    fn set_up_failed(
        &mut self,
        stream: &str,
        status: Option<u16>,
        payload: &Bytes,
        replies: &mut Replies,
    ) {
        warn!(
            "cluster: stream {stream} could not be set up ({}); is JetStream enabled (-js)?",
            api_error(status, payload).unwrap_or_else(|| "no answer".into())
        );
        for command in std::mem::take(&mut self.held) {
            fail_command(command, Failure::Refused, replies);
        }
    }

    /// One answer of a read: the user's record, the last `seq`, an event, or the end.
    fn read_step(
        &mut self,
        mut read: Read,
        status: Option<u16>,
        headers: &[u8],
        payload: &Bytes,
        out: &mut BytesMut,
        replies: &mut Replies,
    ) {
        let found = match status {
            None => sequence_of(headers),
            Some(404) => None,
            Some(_) => return self.fail(Pending::Read(Box::new(read)), Failure::Refused, replies),
        };
        match read.step {
            ReadStep::Record => {
                let record = match found {
                    Some(_) => AckRecord::parse(payload),
                    None => Some(AckRecord::default()),
                };
                let Some(record) = record else {
                    warn!(
                        "cluster: {}'s acknowledgement record is unreadable",
                        read.user
                    );
                    return self.fail(Pending::Read(Box::new(read)), Failure::Refused, replies);
                };
                read.record = record;
                read.next = record.acked + 1;
                if let Some(after) = read.lanes.and_then(|lanes| lanes.after) {
                    read.next = after + 1;
                }
                read.step = match read.greeting() {
                    Some(_) => ReadStep::Last,
                    None => ReadStep::Events,
                };
                return self.get(read, out);
            }
            ReadStep::Last => {
                // Everything may have expired, the record's `seq` not.
                read.last = found.unwrap_or(0).max(read.record.acked);
                let (last, gone) = (read.last, read.record.gone);
                let start = read.start;
                if let Some(greeting) = read.greeting() {
                    greeting.seq = last;
                }
                if let Some(lanes) = &mut read.lanes {
                    lanes.upto = last;
                }
                read.step = ReadStep::Events;
                if let Start::Resume { epoch_matches, seq } = start {
                    let resumed = epoch_matches && seq <= last && seq >= gone;
                    if resumed && seq < last {
                        // Kept past acks, but perhaps not past `--retention-days`.
                        read.step = ReadStep::First;
                    } else {
                        read.resume(resumed);
                    }
                }
                return self.get(read, out);
            }
            ReadStep::First => {
                // JetStream expires the oldest events first: every event from the
                // stream's first on is kept, and one below it may have been the user's.
                // Nothing kept at all: everything after `seq` expired.
                if let Start::Resume { seq, .. } = read.start {
                    read.resume(found.is_some_and(|first| seq + 1 >= first));
                }
                read.step = ReadStep::Events;
                return self.get(read, out);
            }
            ReadStep::Verify { more } => {
                let gone = match found {
                    Some(_) => AckRecord::parse(payload).map_or(u64::MAX, |r| r.gone),
                    None => 0,
                };
                return self.verified(read, (more, gone), out, replies);
            }
            ReadStep::Events => {}
        }
        let upto = read.lanes.map_or(u64::MAX, |lanes| lanes.upto);
        let Some(seq) = found.filter(|seq| *seq <= upto) else {
            let acked = read.record.acked;
            if let Some(start) = read.lanes.as_mut().and_then(|l| l.next_lane(acked)) {
                read.next = start;
                return self.get(read, out);
            }
            return self.end_page(read, false, out, replies);
        };
        read.next = seq + 1;
        if let Some((kind, priority, json)) = decode_event(payload) {
            if read.lanes.as_mut().is_none_or(|l| l.takes(priority, seq)) {
                read.bytes += json.len();
                read.events.push(InboxEvent {
                    seq,
                    kind,
                    priority,
                    json,
                });
            }
        }
        let (events_max, bytes_max) = match read.reader {
            Reader::Device { .. } => (INBOX_PAGE_EVENTS_MAX, INBOX_PAGE_BYTES_MAX),
            Reader::Api { .. } => (PEEK_MESSAGES_MAX, PEEK_BYTES_MAX),
        };
        if read.events.len() >= events_max || read.bytes >= bytes_max {
            return self.end_page(read, true, out, replies);
        }
        self.get(read, out);
    }

    /// A page is read: checked first if every event after a `seq` must be in it (a
    /// device on another node may have acknowledged past a generation meanwhile, and its
    /// purge removed events under the read), then answered.
    fn end_page(&mut self, mut read: Read, more: bool, out: &mut BytesMut, replies: &mut Replies) {
        if read.guard.is_some() && !matches!(read.step, ReadStep::Verify { .. }) {
            read.step = ReadStep::Verify { more };
            return self.get(read, out);
        }
        if !more && read.greeting().is_some() {
            // A device's whole inbox in one page: its live events follow it.
            let highest = read.events.iter().map(|e| e.seq).max().unwrap_or(0);
            self.seen.start(&read.user, highest.max(read.last));
        }
        finish_read(read, more, replies);
    }

    /// The record after a page, with its `gone`: the page stands if nothing after the
    /// guard was removable. Otherwise a first page is read again as a refused resume
    /// (from what no device acknowledged), and a later one fails: the device is closed,
    /// and its next resume is refused, as events it had not got are gone.
    fn verified(
        &mut self,
        mut read: Read,
        (more, gone): (bool, u64),
        out: &mut BytesMut,
        replies: &mut Replies,
    ) {
        let guard = read.guard.take().unwrap_or(u64::MAX);
        if gone <= guard {
            return self.end_page(read, more, out, replies);
        }
        debug!(user = %read.user, guard, gone, "cluster: acknowledged events went during a read");
        let first_page = read.greeting().is_some();
        if !first_page || gone == u64::MAX {
            return self.fail(Pending::Read(Box::new(read)), Failure::Refused, replies);
        }
        read.resume(false);
        read.guard = None;
        read.events.clear();
        read.bytes = 0;
        read.next = read.record.acked.max(gone) + 1;
        read.step = ReadStep::Events;
        self.get(read, out);
    }

    /// A row of fan-out `share` is stored (`kept`) or not; the counts go out after the
    /// last.
    fn row_done(&mut self, share: u64, kept: bool, replies: &mut Replies) {
        let Some(wait) = self.shares.get_mut(&share) else {
            return;
        };
        if kept {
            wait.queued += 1;
        } else {
            wait.not_kept += 1;
        }
        wait.rows_left -= 1;
        if wait.rows_left > 0 {
            return;
        }
        let Some(done) = self.shares.remove(&share) else {
            return;
        };
        let reply = Reply::FanOutQueued {
            purpose: done.purpose,
            request: done.request,
            delivered: done.delivered,
            queued: done.queued,
            not_kept: done.not_kept,
            failed: false,
        };
        replies.push((done.reply_to, reply));
    }

    /// Answers the retries whose earlier appends have all been answered: the first copy
    /// is held if it was kept (JetStream recognises the retry by its message id).
    fn answer_confirms(&mut self, replies: &mut Replies) {
        // Runs on every answer: it looks through what is pending only when a retry waits.
        if self.confirms.is_empty() {
            return;
        }
        let oldest = self
            .requests
            .iter()
            .filter(|(_, p)| {
                matches!(
                    p,
                    Pending::RetryCheck(_)
                        | Pending::QuotaCheck { .. }
                        | Pending::Append { .. }
                        | Pending::Row { .. }
                )
            })
            .map(|(id, _)| id)
            .min()
            .unwrap_or(u64::MAX);
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.confirms)
            .into_iter()
            .partition(|(after, _)| *after <= oldest);
        self.confirms = waiting;
        for (_, confirm) in due {
            let (receiver, chat) = (&confirm.receiver, &confirm.chat);
            let outcome = match self
                .not_kept
                .contains(receiver, &chat.sender, &chat.message_id)
            {
                // Its first copy was not kept: the home forgets it, and takes the next
                // retry as new.
                true => Outcome::Failed(Failure::Unreachable),
                false => Outcome::Kept {
                    delivered: confirm.ack.delivered,
                },
            };
            answers::stored_first_outcome(replies, Some(&confirm.ack), None, outcome);
            self.chat_done(&confirm.receiver, &confirm.chat.sender);
        }
    }

    /// JetStream answered an append: its sender hears the outcome, at once or, if the
    /// receiver's holders were asked and have not answered yet, once they have.
    fn appended(
        &mut self,
        (ack, dedup, asked): (Option<AckTo>, Option<(usize, Ticket)>, Option<u64>),
        outcome: Outcome,
        replies: &mut Replies,
    ) {
        let waiting = asked.and_then(|asked| Some((asked, self.ack_waits.remove(&asked)?)));
        match (waiting, outcome, ack) {
            (Some((_, AckWait::Answered { elsewhere })), Outcome::Kept { delivered }, ack) => {
                let outcome = Outcome::Kept {
                    delivered: delivered || elsewhere,
                };
                answers::stored_first_outcome(replies, ack.as_ref(), dedup, outcome);
            }
            (Some((asked, AckWait::Asked)), Outcome::Kept { delivered }, Some(ack)) => {
                let stored = AckWait::Stored {
                    ack,
                    dedup,
                    delivered,
                };
                self.ack_waits.insert(asked, stored);
            }
            // Not kept, or nothing asked: said now (a late answer then finds no wait).
            (_, outcome, ack) => {
                answers::stored_first_outcome(replies, ack.as_ref(), dedup, outcome)
            }
        }
    }

    /// The receiver's holders said whether a device is online on another node (`here`;
    /// false for silence or "no responders").
    fn holders_said(&mut self, asked: u64, here: bool, replies: &mut Replies) {
        match self.ack_waits.remove(&asked) {
            Some(AckWait::Asked) => {
                let answered = AckWait::Answered { elsewhere: here };
                self.ack_waits.insert(asked, answered);
            }
            Some(AckWait::Stored {
                ack,
                dedup,
                delivered,
            }) => {
                let outcome = Outcome::Kept {
                    delivered: delivered || here,
                };
                answers::stored_first_outcome(replies, Some(&ack), dedup, outcome);
            }
            Some(AckWait::Answered { .. }) | None => {}
        }
    }

    /// A command that could not be carried out fails: its asker hears why, and a chat
    /// message is remembered as not kept.
    fn fail_command(&mut self, command: Command, why: Failure, replies: &mut Replies) {
        if let Command::Append(append) = &command {
            self.chat_not_kept(append);
        }
        fail_command(command, why, replies);
    }

    /// `append`'s chat message (if it is one) was not kept.
    fn chat_not_kept(&mut self, append: &Append) {
        if let Some(chat) = &append.chat {
            self.not_kept
                .record(&append.user, &chat.sender, &chat.message_id);
        }
    }

    /// What a failed request's asker hears.
    fn fail(&mut self, pending: Pending, why: Failure, replies: &mut Replies) {
        match pending {
            Pending::Append {
                ack,
                dedup,
                asked,
                counted,
                lane,
                chat,
            } => {
                if let Some(kept) = chat {
                    let (sender, id) = (&kept.chat.sender, &kept.chat.message_id);
                    self.not_kept.record(&kept.user, sender, id);
                }
                if let Some(asked) = asked {
                    self.ack_waits.remove(&asked);
                }
                if let Some(counted) = counted {
                    self.unread.give_back(counted);
                }
                self.pairs_done.extend(lane);
                answers::stored_first_outcome(replies, ack.as_ref(), dedup, Outcome::Failed(why));
            }
            Pending::Holders { asked } => self.holders_said(asked, false, replies),
            // No word of another device: no copy, as with none online.
            Pending::CopyCheck(append) => self.append_done(&append),
            Pending::RetryCheck(append) | Pending::QuotaCheck { append, .. } => {
                self.chat_not_kept(&append);
                let outcome = Outcome::Failed(why);
                answers::stored_first_outcome(replies, append.ack.as_ref(), append.dedup, outcome);
                self.append_done(&append);
            }
            Pending::Row { share } => self.row_done(share, false, replies),
            // Answered as the read command it serves.
            Pending::Read(read) => {
                let command = match read.reader {
                    Reader::Device { device, .. } => Command::ReadInbox {
                        user: read.user,
                        device,
                        from: ReadFrom::After { seq: 0 },
                    },
                    Reader::Api { requester } => Command::Peek {
                        user: read.user,
                        requester,
                    },
                };
                replies.extend(answers::unread_answer(&command, why));
            }
            // The user's next ack starts over (a device acks again what it has).
            Pending::AckFetch(scan) | Pending::AckScan(scan) => {
                self.acking.remove(&scan.user);
            }
            // The write may have landed: its receipts wait until the record says.
            Pending::AckWrite(scan) => {
                self.acking.remove(&scan.user);
                self.seen.moved(&scan.user);
                if !scan.receipts.is_empty() {
                    let AckScan {
                        user,
                        token,
                        upto,
                        receipts,
                        home,
                        ..
                    } = *scan;
                    let unsure = Unsure {
                        token,
                        upto,
                        receipts,
                        home,
                    };
                    self.unsure.entry(user).or_default().push(unsure);
                }
            }
            Pending::Settle(user) => {
                self.settling.remove(&user);
            }
            Pending::Membership(command) | Pending::GroupSettings(command) => {
                replies.extend(answers::membership_answer(&command, Some(why)));
            }
            // Cut off, the relay reads on after reconnecting; otherwise (no answer in
            // time) the devices here resume.
            Pending::Fill(mut fill) | Pending::FillChecked(mut fill) => {
                fill.end = match self.set_up_done() {
                    true => FillEnd::Short,
                    false => FillEnd::CutOff,
                };
                self.filled_up(*fill);
            }
            Pending::Setup { .. }
            | Pending::SetupAcks { .. }
            | Pending::AckCheck { .. }
            | Pending::Purge => {}
        }
    }

    /// Sends a request without headers.
    fn request(&mut self, out: &mut BytesMut, subject: &str, body: &[u8], pending: Pending) {
        self.requests.send(out, (subject, &[]), body, pending);
    }
}

/// A read's page for its asker: `more` if the page is full and the next one follows.
fn finish_read(read: Read, more: bool, replies: &mut Replies) {
    let highest = read.events.iter().map(|e| e.seq).max().unwrap_or(0);
    match read.reader {
        Reader::Device { device, greeting } => {
            let (next, covered) = match (read.lanes, more) {
                (None, true) => (Some(ReadFrom::After { seq: highest }), highest),
                (None, false) => (None, highest.max(read.last)),
                // In delivery order a page covers no `seq` range (an earlier event of
                // a later priority may wait): only the last says all is read.
                (Some(lanes), true) => {
                    let last_taken = read.events.last().map_or(0, |e| e.seq);
                    let cursor = Some((lanes.lane, last_taken));
                    let next = ReadFrom::Unacked {
                        upto: lanes.upto,
                        cursor,
                    };
                    (Some(next), read.record.acked)
                }
                (Some(lanes), false) => (None, highest.max(lanes.upto)),
            };
            let reply = Reply::InboxPage {
                device,
                user: read.user,
                greeting,
                events: read.events,
                next,
                covered,
                error: None,
            };
            replies.push((device.reactor, reply));
        }
        Reader::Api { requester } => {
            let page = (read.events, highest, more);
            replies.push(answers::peeked(requester, &read.user, page));
        }
    }
}

/// The answer a command gets when it cannot be carried out at all.
fn fail_command(command: Command, why: Failure, replies: &mut Replies) {
    match command {
        Command::Append(append) => {
            let outcome = Outcome::Failed(why);
            answers::stored_first_outcome(replies, append.ack.as_ref(), append.dedup, outcome);
        }
        Command::AppendShare(share) => {
            let not_kept = share.rows.len() as u32;
            replies.push(answers::fan_out_counts(&share, 0, not_kept, true));
        }
        Command::Confirm(confirm) => {
            let outcome = Outcome::Failed(why);
            answers::stored_first_outcome(replies, Some(&confirm.ack), None, outcome);
        }
        Command::Membership { .. } => {
            replies.extend(answers::membership_answer(&command, Some(why)));
        }
        other => replies.extend(answers::unread_answer(&other, why)),
    }
}

/// The key-value bucket of the groups' members: key `<group>.<user>` ([`key_token`]s),
/// value `1`; a leave deletes the key. Every node watches it ([`super::node`]).
pub(super) const GROUP_BUCKET: &str = "chat_groups";

/// The bucket key of `user`'s membership of `group`.
fn member_key(group: &str, user: &str) -> String {
    format!("{}.{}", key_token(group), key_token(user))
}

/// The key of a group's settings in [`GROUP_BUCKET`]: the group's token and `=`, which no
/// member's token is (an id is never empty).
fn settings_key(group: &str) -> String {
    format!("{}.=", key_token(group))
}

/// What a key of [`GROUP_BUCKET`] holds.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum GroupKey {
    /// A member: `(group, user)`.
    Member(Box<str>, Box<str>),
    /// A group's settings.
    Settings(Box<str>),
}

/// What the key of [`GROUP_BUCKET`] `key` holds, or `None` if it is not one of its keys.
pub(super) fn parse_group_key(key: &str) -> Option<GroupKey> {
    let (group, user) = key.split_once('.')?;
    let group = from_key_token(group)?;
    if user == "=" {
        return Some(GroupKey::Settings(group));
    }
    Some(GroupKey::Member(group, from_key_token(user)?))
}

/// What a change of [`GROUP_BUCKET`]'s key `key` (a put of `value`, else a delete) tells
/// the group's home reactor of `reactors`: a member joined or left, or the settings
/// changed. `None` for a key that is not one of the bucket's.
pub(super) fn group_change(
    key: &str,
    put: bool,
    value: &[u8],
    reactors: usize,
) -> Option<(usize, Envelope)> {
    let home_of = |group: &str| crate::router::home_of(group, reactors);
    Some(match parse_group_key(key)? {
        GroupKey::Member(group, user) => (
            home_of(&group),
            Envelope::GroupMembership {
                group,
                user,
                joined: put,
            },
        ),
        GroupKey::Settings(group) => {
            let settings = put.then(|| Box::new(Settings::from_stored(value, &group)));
            (home_of(&group), Envelope::GroupSettings { group, settings })
        }
    })
}

/// A sender's message refused at `--queue-max-per-sender`: nothing was stored.
fn refuse_over_quota(append: &Append, replies: &mut Replies) {
    answers::stored_first_outcome(
        replies,
        append.ack.as_ref(),
        append.dedup,
        Outcome::SenderQuota,
    );
}

/// What became of a publish, from JetStream's ack.
fn publish_outcome(status: Option<u16>, payload: &Bytes, ack: Option<&AckTo>) -> Outcome {
    if status.is_some() {
        // 503, no responders: the stream was set up, so its leader is moving (a NATS
        // server of the cluster died): for a sender, one to retry.
        return Outcome::Failed(Failure::Unreachable);
    }
    let answer: Value = serde_json::from_slice(payload).unwrap_or_default();
    if answer["error"]["err_code"].as_u64() == Some(PER_SUBJECT_LIMIT) {
        return Outcome::QueueFull;
    }
    if answer["error"]["code"].as_u64() == Some(503) {
        // JetStream unavailable for now (no quorum, a leader being elected).
        return Outcome::Failed(Failure::Unreachable);
    }
    if answer["seq"].as_u64().is_some_and(|s| s > 0) {
        return Outcome::Kept {
            delivered: ack.is_some_and(|a| a.delivered),
        };
    }
    warn!(
        "cluster: JetStream refused an inbox event: {}",
        api_error(status, payload).unwrap_or_default()
    );
    Outcome::Failed(Failure::Refused)
}

/// The error of a JetStream answer (`payload`, JSON), if it is one.
fn api_error(status: Option<u16>, payload: &Bytes) -> Option<String> {
    let answer: Value = serde_json::from_slice(payload).unwrap_or_default();
    requests::api_error(status, &answer)
}

/// A stored acknowledgement record, as a direct get returns it.
fn stored_record(headers: &[u8], payload: &[u8]) -> Option<acks::Stored> {
    Some(acks::Stored {
        record: AckRecord::parse(payload)?,
        revision: sequence_of(headers)?,
        writer: acks::token_of(headers, acks::WRITER_HEADER),
    })
}

/// The `Nats-Last-Sequence` header of a republished event: the user's event before it
/// (0: none).
fn last_of(headers: &[u8]) -> u64 {
    wire::header(headers, "Nats-Last-Sequence")
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(0)
}

/// The `Nats-Sequence` header of a stored message.
pub(super) fn sequence_of(headers: &[u8]) -> Option<u64> {
    let value = wire::header(headers, "Nats-Sequence")?;
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// `(sender, message id)` of a [`RECEIPT_HEADER`], if it is one.
fn parse_receipt(value: &[u8]) -> Option<(Box<str>, Box<str>)> {
    let value = std::str::from_utf8(value).ok()?;
    let (sender, id) = value.split_once(' ')?;
    Some((from_subject_token(sender)?, from_subject_token(id)?))
}

/// The subjects of shard `shard`'s inbox stream: `chat.inbox.<shard>.>`.
fn shard_subjects(shard: u16) -> String {
    format!("chat.inbox.{shard}.>")
}

/// The subject of `user`'s inbox, in the user's shard: `chat.inbox.<shard>.<user>`.
pub(super) fn inbox_subject(shards: Shards, user: &str) -> String {
    format!("chat.inbox.{}.{}", shards.of(user), subject_token(user))
}

/// A stored event: `[kind][priority][JSON without seq]`.
pub(super) fn encode_event(kind: OutKind, priority: Priority, json: &[u8]) -> Vec<u8> {
    let mut payload = BytesMut::with_capacity(2 + json.len());
    payload.put_u8(kind.index() as u8);
    payload.put_u8(priority as u8);
    payload.put_slice(json);
    payload.to_vec()
}

/// A stored event's parts, or `None` if it is not one.
pub(super) fn decode_event(payload: &Bytes) -> Option<(OutKind, Priority, Bytes)> {
    let (&kind, rest) = payload.split_first()?;
    let (&priority, _) = rest.split_first()?;
    let kind = OutKind::from_index(usize::from(kind))?;
    let priority = match priority {
        0 => Priority::High,
        1 => Priority::Normal,
        2 => Priority::Low,
        _ => return None,
    };
    Some((kind, priority, payload.slice(2..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inboxes on a relay whose answers come to `_INBOX.x.`, bounded at 10 a user, in
    /// one shard.
    fn inboxes() -> Inboxes {
        inboxes_in(1)
    }

    /// The same in `shards` shards.
    fn inboxes_in(shards: u16) -> Inboxes {
        let limits = StreamSettings {
            queue_max_per_user: 10,
            queue_max_per_sender: 0,
            retention: Duration::from_secs(60),
            replicas: 1,
            shards: Shards::new(shards),
        };
        Inboxes::new("_INBOX.x.", limits)
    }

    #[test]
    fn stored_events_round_trip_and_garbage_is_refused() {
        let payload = Bytes::from(encode_event(OutKind::NewMessage, Priority::Low, b"{}"));
        let (kind, priority, json) = decode_event(&payload).unwrap();
        assert_eq!(
            (kind, priority, &json[..]),
            (OutKind::NewMessage, Priority::Low, &b"{}"[..])
        );
        for bad in [&b""[..], b"\x00", b"\xff\x00{}", b"\x00\x09{}"] {
            assert!(
                decode_event(&Bytes::copy_from_slice(bad)).is_none(),
                "{bad:?}"
            );
        }
        assert_eq!(inbox_subject(Shards::new(1), "a.b"), "chat.inbox.0.~612e62");
        let shards = Shards::new(8);
        let shard = shards.of("bob");
        assert_eq!(
            inbox_subject(shards, "bob"),
            format!("chat.inbox.{shard}.bob")
        );
        let key = member_key("team.a", "ann");
        assert_eq!(key, "=7465616d2e61.ann");
        assert_eq!(
            parse_group_key(&key),
            Some(GroupKey::Member("team.a".into(), "ann".into()))
        );
        assert_eq!(settings_key("team.a"), "=7465616d2e61.=");
        assert_eq!(
            parse_group_key(&settings_key("team.a")),
            Some(GroupKey::Settings("team.a".into()))
        );
        assert_eq!(parse_group_key("nodot"), None);
        let receipt = parse_receipt(b"ann ~6d2e31").unwrap();
        assert_eq!((&*receipt.0, &*receipt.1), ("ann", "m.1"));
        for bad in [&b"ann"[..], b"ann ~6", b"~zz x"] {
            assert_eq!(parse_receipt(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_publish_ack_says_kept_full_or_refused() {
        let kept = Bytes::from_static(br#"{"stream":"CHAT_INBOX", "seq":5}"#);
        assert_eq!(
            publish_outcome(None, &kept, None),
            Outcome::Kept { delivered: false }
        );
        let full = Bytes::from_static(
            br#"{"error":{"code":503,"err_code":10077,"description":"maximum messages per subject exceeded"},"seq":0}"#,
        );
        assert_eq!(publish_outcome(None, &full, None), Outcome::QueueFull);
        let other = Bytes::from_static(br#"{"error":{"code":500,"err_code":1,"description":"x"}}"#);
        assert_eq!(
            publish_outcome(None, &other, None),
            Outcome::Failed(Failure::Refused)
        );
        assert_eq!(
            publish_outcome(Some(503), &Bytes::new(), None),
            Outcome::Failed(Failure::Unreachable)
        );
        let unavailable = Bytes::from_static(
            br#"{"error":{"code":503,"err_code":10008,"description":"JetStream system temporarily unavailable"}}"#,
        );
        assert_eq!(
            publish_outcome(None, &unavailable, None),
            Outcome::Failed(Failure::Unreachable)
        );
    }

    #[test]
    fn while_away_every_command_fails_at_once_and_unanswered_requests_fail_late() {
        let mut inboxes = inboxes_in(2);
        let device = Waiter {
            reactor: 1,
            ticket: 7,
        };
        let read = Command::ReadInbox {
            user: "bob".into(),
            device,
            from: ReadFrom::After { seq: 3 },
        };
        let mut out = BytesMut::new();
        let replies = inboxes.command(read, false, &mut out);
        assert!(out.is_empty());
        assert!(matches!(
            replies[..],
            [(
                1,
                Reply::InboxPage {
                    error: Some(Failure::Unreachable),
                    ..
                }
            )]
        ));
        // Connected: held until every shard's streams are known, then carried out.
        inboxes.connected(&mut out);
        let read = Command::ReadInbox {
            user: "bob".into(),
            device,
            from: ReadFrom::After { seq: 3 },
        };
        assert!(inboxes.command(read, true, &mut out).is_empty());
        for shard in 0..2u8 {
            let created = format!(r#"{{"created":"2026-12-06T05:00:0{shard}Z"}}"#);
            let id = [b'1' + 2 * shard];
            let replies = inboxes.answered(&id, None, b"", &Bytes::from(created), &mut out);
            assert!(replies.is_empty());
            assert_eq!(
                inboxes.epochs.len(),
                usize::from(shard),
                "the records' stream first"
            );
            let acks = Bytes::from_static(br#"{"created":"2026-12-06T06:00:00Z"}"#);
            let id = [b'2' + 2 * shard];
            let replies = inboxes.answered(&id, None, b"", &acks, &mut out);
            assert!(replies.is_empty());
        }
        let epochs: Vec<&str> = inboxes.epochs.iter().map(|e| &**e).collect();
        assert_eq!(epochs, ["2026-12-06T05:00:00Z", "2026-12-06T05:00:01Z"]);
        let text = String::from_utf8_lossy(&out);
        for shard in 0..2 {
            assert!(
                text.contains(&format!("STREAM.CREATE.CHAT_INBOX_{shard} ")),
                "{text}"
            );
            assert!(
                text.contains(&format!("STREAM.CREATE.KV_chat_acks_{shard} ")),
                "{text}"
            );
        }
        let shard = Shards::new(2).of("bob");
        let read = format!(r#"{{"next_by_subj":"chat.inbox.{shard}.bob","seq":4}}"#);
        assert!(text.contains(&read), "{text}");
        let stream = format!("$JS.API.DIRECT.GET.CHAT_INBOX_{shard} ");
        assert!(text.contains(&stream), "{text}");
        let replies = inboxes.expire(Instant::now() + requests::REQUEST_WAIT, &mut out);
        assert!(matches!(
            replies[..],
            [(
                1,
                Reply::InboxPage {
                    error: Some(Failure::Unreachable),
                    ..
                }
            )]
        ));
    }

    #[test]
    fn a_stream_that_cannot_be_set_up_fails_what_waits_and_the_next_command_asks_again() {
        let mut inboxes = inboxes();
        let mut out = BytesMut::new();
        inboxes.connected(&mut out);
        let peek = |n: u64| Command::Peek {
            user: "bob".into(),
            requester: Waiter {
                reactor: 0,
                ticket: n,
            },
        };
        assert!(inboxes.command(peek(1), true, &mut out).is_empty());
        // No JetStream on the server: "no responders".
        let replies = inboxes.answered(b"1", Some(503), b"", &Bytes::new(), &mut out);
        assert!(matches!(
            replies[..],
            [(
                0,
                Reply::Peeked {
                    error: Some(Failure::Refused),
                    ..
                }
            )]
        ));
        out.clear();
        assert!(inboxes.command(peek(2), true, &mut out).is_empty());
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("PUB $JS.API.STREAM.CREATE.CHAT_INBOX_0"),
            "{text}"
        );
    }

    #[test]
    fn past_the_requests_in_flight_bound_a_command_fails_at_once() {
        let mut inboxes = inboxes();
        inboxes.epochs = vec!["e".into()];
        let mut out = BytesMut::new();
        let peek = || Command::Peek {
            user: "bob".into(),
            requester: Waiter {
                reactor: 0,
                ticket: 1,
            },
        };
        for _ in 0..IN_FLIGHT_MAX {
            assert!(inboxes.command(peek(), true, &mut out).is_empty());
        }
        let replies = inboxes.command(peek(), true, &mut out);
        assert!(matches!(
            replies[..],
            [(
                0,
                Reply::Peeked {
                    error: Some(Failure::Unreachable),
                    ..
                }
            )]
        ));
    }

    /// A stored message's headers, at stream sequence `seq`.
    fn stored_at(seq: u64) -> Vec<u8> {
        format!("NATS/1.0\r\nNats-Sequence: {seq}\r\n\r\n").into_bytes()
    }

    #[test]
    fn acks_of_one_user_run_one_at_a_time_and_a_later_one_goes_on_from_the_first() {
        let mut inboxes = inboxes();
        inboxes.epochs = vec!["e".into()];
        let ack = |upto| Command::Ack {
            user: "bob".into(),
            upto,
            device: None,
            home: 0,
        };
        let mut out = BytesMut::new();
        inboxes.command(ack(5), true, &mut out);
        let first = out.len();
        inboxes.command(ack(9), true, &mut out);
        assert_eq!(out.len(), first, "no second pass while one runs");
        // Bob's record: acked up to 3, at revision 40. The first pass reads from 4 on.
        let record = Bytes::from_static(b"3 0 0 1");
        inboxes.answered(b"1", None, &stored_at(40), &record, &mut out);
        let text = String::from_utf8_lossy(&out[first..]);
        assert!(
            text.contains(r#"{"next_by_subj":"chat.inbox.0.bob","seq":4}"#),
            "{text}"
        );
        // It finds 5, the one it acks (and a generation of 5 fills no further): the
        // record is written with a compare-and-set on revision 40, and no event is removed.
        let event = Bytes::from(encode_event(OutKind::NewMessage, Priority::Normal, b"{}"));
        let at = out.len();
        inboxes.answered(b"2", None, &stored_at(5), &event, &mut out);
        let text = String::from_utf8_lossy(&out[at..]);
        assert!(
            text.starts_with("HPUB $KV.chat_acks_0.bob _INBOX.x.j3"),
            "{text}"
        );
        assert!(
            text.contains("Nats-Expected-Last-Subject-Sequence: 40"),
            "{text}"
        );
        assert!(text.ends_with("5 0 0 2\r\n"), "{text}");
        // Written: the second pass starts after 5 from the record it left.
        let at = out.len();
        let written = Bytes::from_static(br#"{"stream":"KV_chat_acks","seq":41}"#);
        inboxes.answered(b"3", None, b"", &written, &mut out);
        let text = String::from_utf8_lossy(&out[at..]);
        assert!(
            text.contains(r#"{"next_by_subj":"chat.inbox.0.bob","seq":6}"#),
            "{text}"
        );
        assert!(!text.contains("PURGE"), "{text}");
        assert_eq!(inboxes.acking.get("bob"), Some(&0));
    }

    /// Inboxes whose stream is known, after the driver acknowledged bob's events up to
    /// `upto` for his home on reactor 2 (the record's fetch asked), and what they sent.
    fn driver_acks_bob(upto: u64) -> (Inboxes, BytesMut) {
        let mut inboxes = inboxes();
        inboxes.epochs = vec!["e".into()];
        let mut out = BytesMut::new();
        let ack = Command::Ack {
            user: "bob".into(),
            upto,
            device: None,
            home: 2,
        };
        inboxes.command(ack, true, &mut out);
        (inboxes, out)
    }

    #[test]
    fn an_ack_that_fills_a_generation_purges_the_one_before_and_a_moved_record_is_fetched_again() {
        let (mut inboxes, mut out) = driver_acks_bob(30);
        // Generations of 5 (a bound of 10): 4 acknowledged after mark 12, gone up to 8.
        inboxes.answered(
            b"1",
            None,
            &stored_at(7),
            &Bytes::from_static(b"20 8 12 4"),
            &mut out,
        );
        let mut receipted = Vec::new();
        receipted
            .extend_from_slice(b"NATS/1.0\r\nNats-Sequence: 21\r\nChat-Receipt: ann m-1\r\n\r\n");
        let event = Bytes::from(encode_event(OutKind::NewMessage, Priority::Normal, b"{}"));
        inboxes.answered(b"2", None, &receipted, &event, &mut out);
        // Nothing more up to 30: the record closes the generation at 21.
        let at = out.len();
        inboxes.answered(b"3", Some(404), b"", &Bytes::new(), &mut out);
        let text = String::from_utf8_lossy(&out[at..]);
        assert!(text.ends_with("30 12 21 0\r\n"), "{text}");
        // Another node wrote meanwhile: the receipts wait, and the record is read again.
        let moved = Bytes::from_static(
            br#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 8"}}"#,
        );
        let at = out.len();
        let replies = inboxes.answered(b"4", None, b"", &moved, &mut out);
        assert!(replies.is_empty());
        let text = String::from_utf8_lossy(&out[at..]);
        assert!(
            text.contains(r#"{"last_by_subj":"$KV.chat_acks_0.bob"}"#),
            "{text}"
        );
        inboxes.answered(
            b"5",
            None,
            &stored_at(8),
            &Bytes::from_static(b"20 8 12 4"),
            &mut out,
        );
        inboxes.answered(b"6", None, &receipted, &event, &mut out);
        inboxes.answered(b"7", Some(404), b"", &Bytes::new(), &mut out);
        // Stored: the receipt goes to bob's home, and events up to 12 go in one purge.
        let at = out.len();
        let written = Bytes::from_static(br#"{"stream":"KV_chat_acks","seq":9}"#);
        let replies = inboxes.answered(b"8", None, b"", &written, &mut out);
        assert!(
            matches!(&replies[..], [(2, Reply::Receipts { receipts, .. })] if receipts.len() == 1)
        );
        let text = String::from_utf8_lossy(&out[at..]);
        assert!(
            text.starts_with("PUB $JS.API.STREAM.PURGE.CHAT_INBOX_0"),
            "{text}"
        );
        assert!(
            text.contains(r#"{"filter":"chat.inbox.0.bob","seq":13}"#),
            "{text}"
        );
        assert_eq!(inboxes.acking.get("bob"), None);
    }

    /// Ann's chat message `message_id` to bob, with the ack her device waits for.
    fn chat_append(message_id: &str) -> (Append, crate::store::Chat, AckTo) {
        let ack = AckTo {
            waiter: Waiter {
                reactor: 1,
                ticket: 3,
            },
            message_id: message_id.into(),
            delivered: false,
        };
        let chat = crate::store::Chat {
            sender: "ann".into(),
            message_id: message_id.into(),
            timestamp_ms: 1,
        };
        let append = Append {
            user: "bob".into(),
            seq: None,
            home: 0,
            event: crate::store::Event {
                kind: OutKind::NewMessage,
                priority: Priority::Normal,
                json: Bytes::from_static(b"{}"),
            },
            receipt: false,
            chat: Some(chat.clone()),
            ack: Some(ack.clone()),
            dedup: None,
            copy: None,
        };
        (append, chat, ack)
    }

    #[test]
    fn a_retry_is_answered_only_once_the_appends_before_it_are() {
        let mut inboxes = inboxes();
        inboxes.epochs = vec!["e".into()];
        let mut out = BytesMut::new();
        let (append, chat, ack) = chat_append("m-1");
        assert!(inboxes
            .command(Command::Append(Box::new(append)), true, &mut out)
            .is_empty());
        let confirm = Confirm {
            receiver: "bob".into(),
            chat,
            ack,
        };
        let replies = inboxes.command(Command::Confirm(Box::new(confirm)), true, &mut out);
        assert!(replies.is_empty(), "the first copy is not stored yet");
        // No node holds bob (request 1, the holders' question); then the copy is stored.
        let replies = inboxes.answered(b"1", Some(503), b"", &Bytes::new(), &mut out);
        assert!(replies.is_empty(), "the first copy is not stored yet");
        let stored = Bytes::from_static(br#"{"stream":"CHAT_INBOX_0","seq":7}"#);
        let replies = inboxes.answered(b"2", None, b"", &stored, &mut out);
        assert_eq!(replies.len(), 2, "the first copy's ack, then the retry's");
    }

    #[test]
    fn a_retry_whose_first_copy_was_not_kept_fails_and_the_home_forgets_the_message() {
        let mut inboxes = inboxes();
        inboxes.epochs = vec!["e".into()];
        let mut out = BytesMut::new();
        let (mut append, chat, mut ack) = chat_append("m-1");
        // A device of bob is on this node: no holders' question, and on one node the
        // home would keep the message as delivered whatever the store said.
        ack.delivered = true;
        append.ack = Some(ack.clone());
        let ticket = Ticket { key: 9, serial: 1 };
        append.dedup = Some((0, ticket));
        inboxes.command(Command::Append(Box::new(append)), true, &mut out);
        let confirm = Confirm {
            receiver: "bob".into(),
            chat,
            ack,
        };
        assert!(inboxes
            .command(Command::Confirm(Box::new(confirm)), true, &mut out)
            .is_empty());
        // JetStream is unavailable (request 1, the publish).
        let replies = inboxes.answered(b"1", Some(503), b"", &Bytes::new(), &mut out);
        let failed = |reply: &Reply| {
            matches!(
                reply,
                Reply::Appended {
                    outcome: Outcome::Failed(_),
                    ..
                }
            )
        };
        match &replies[..] {
            [(0, Reply::NotKept { ticket: forgotten }), (1, first), (1, retry)] => {
                assert_eq!(
                    *forgotten, ticket,
                    "the home forgets it, a device here or not"
                );
                assert!(failed(first) && failed(retry), "{replies:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// `inboxes` connect, and their one shard's streams are made sure of (requests 1 and
    /// 2): what they wrote after.
    fn reconnected(inboxes: &mut Inboxes) -> BytesMut {
        reconnected_at(inboxes, 1)
    }

    /// Like [`reconnected`], the set-up being requests `first` and `first + 1`.
    fn reconnected_at(inboxes: &mut Inboxes, first: u64) -> BytesMut {
        let mut out = BytesMut::new();
        inboxes.connected(&mut out);
        let created = Bytes::from_static(br#"{"created":"e"}"#);
        inboxes.answered(first.to_string().as_bytes(), None, b"", &created, &mut out);
        out.clear();
        let second = (first + 1).to_string();
        inboxes.answered(second.as_bytes(), None, b"", &created, &mut out);
        out
    }

    #[test]
    fn after_a_reconnect_each_user_seen_reads_on_from_the_newest_event_seen() {
        let mut inboxes = inboxes();
        inboxes.seen.start("bob", 5);
        // Back on NATS: bob's inbox is read on from 5 (request 3).
        let mut out = reconnected(&mut inboxes);
        let text = String::from_utf8_lossy(&out).into_owned();
        assert!(
            text.starts_with("PUB $JS.API.DIRECT.GET.CHAT_INBOX_0 _INBOX.x.j3")
                && text.contains(r#"{"next_by_subj":"chat.inbox.0.bob","seq":6}"#),
            "{text}"
        );
        // Bob's next event comes live meanwhile: it waits for the read.
        let live = (
            7,
            Bytes::from_static(b"NATS/1.0\r\nNats-Last-Sequence: 6\r\n\r\n"),
        );
        assert!(inboxes
            .live("bob", (live.0, live.1, Bytes::new()), &mut out)
            .is_none());
        // The read finds 6, missed while cut off, then nothing more; bob's record says
        // nothing after 5 was removed (request 5).
        let event = Bytes::from(encode_event(OutKind::NewMessage, Priority::Normal, b"{}"));
        let found = b"NATS/1.0\r\nNats-Sequence: 6\r\n\r\n";
        inboxes.answered(b"3", None, found, &event, &mut out);
        inboxes.answered(b"4", Some(404), b"", &Bytes::new(), &mut out);
        assert!(
            inboxes.take_ready().is_empty(),
            "ready before the record's check"
        );
        let record = Bytes::from_static(b"5 5 5 0");
        inboxes.answered(b"5", None, b"NATS/1.0\r\n\r\n", &record, &mut out);
        let ready = inboxes.take_ready();
        assert_eq!(&*ready[0].0, "bob");
        assert_eq!(seqs_of(&ready[0].1), Some(vec![6, 7]));
    }

    /// The `seq`s of what a gap's read gave, or `None` if the devices missed events.
    fn seqs_of(caught: &Caught) -> Option<Vec<u64>> {
        let Caught::Up(events) = caught else {
            return None;
        };
        let seqs = events.iter().map(|ready| match ready {
            Ready::Read(event) => event.seq,
            Ready::Live { seq, .. } => *seq,
        });
        Some(seqs.collect())
    }

    /// Inboxes that saw bob's events up to 5, reconnected (reading on from 5, request 3),
    /// and bob's event `seq` (after `last`) come live, waiting for the read.
    fn bob_back_at_5_and_live(seq: u64, last: u64) -> (Inboxes, BytesMut) {
        let mut inboxes = inboxes();
        inboxes.seen.start("bob", 5);
        let mut out = reconnected(&mut inboxes);
        let headers = format!("NATS/1.0\r\nNats-Last-Sequence: {last}\r\n\r\n");
        let live = (seq, Bytes::from(headers), Bytes::new());
        assert!(inboxes.live("bob", live, &mut out).is_none());
        (inboxes, out)
    }

    #[test]
    fn a_gap_whose_events_were_removed_meanwhile_closes_the_devices_and_what_was_seen_moves_on() {
        // Bob's event 9 comes live, after 8: 6 to 8 were republished while cut off.
        let (mut inboxes, mut out) = bob_back_at_5_and_live(9, 8);
        // The read on from 5 (request 3) finds nothing up to 8: another device acknowledged
        // 6 to 8 and they were purged.
        let event = Bytes::from(encode_event(OutKind::NewMessage, Priority::Normal, b"{}"));
        let after = b"NATS/1.0\r\nNats-Sequence: 9\r\n\r\n";
        inboxes.answered(b"3", None, after, &event, &mut out);
        let record = Bytes::from_static(b"8 7 8 0");
        inboxes.answered(b"4", None, b"NATS/1.0\r\n\r\n", &record, &mut out);
        let ready = inboxes.take_ready();
        assert_eq!(ready.len(), 1);
        assert!(matches!(ready[0].1, Caught::Missed));
        // What was seen moved on to 9: bob's next event follows it.
        let next = Bytes::from_static(b"NATS/1.0\r\nNats-Last-Sequence: 9\r\n\r\n");
        assert!(inboxes
            .live("bob", (10, next, Bytes::new()), &mut out)
            .is_some());
    }

    #[test]
    fn a_read_on_whose_record_shows_events_removed_after_the_newest_seen_closes_the_devices() {
        let mut inboxes = inboxes();
        inboxes.seen.start("bob", 5);
        let mut out = reconnected(&mut inboxes);
        // Nothing after 5 is left (request 3), but the record says everything up to 7 may
        // have gone (request 4): events after 5 were removed unseen.
        inboxes.answered(b"3", Some(404), b"", &Bytes::new(), &mut out);
        let record = Bytes::from_static(b"9 7 9 0");
        inboxes.answered(b"4", None, b"NATS/1.0\r\n\r\n", &record, &mut out);
        assert!(matches!(inboxes.take_ready()[..], [(_, Caught::Missed)]));
    }

    #[test]
    fn a_read_cut_off_again_gives_what_it_read_and_drops_what_waited_to_read_it_again() {
        let (mut inboxes, mut out) = bob_back_at_5_and_live(8, 7);
        let event = Bytes::from(encode_event(OutKind::NewMessage, Priority::Normal, b"{}"));
        let found = b"NATS/1.0\r\nNats-Sequence: 6\r\n\r\n";
        inboxes.answered(b"3", None, found, &event, &mut out);
        inboxes.disconnected();
        let ready = inboxes.take_ready();
        assert_eq!(seqs_of(&ready[0].1), Some(vec![6]));
        // Back (its streams made sure of by requests 5 and 6; 4 was the next get, lost):
        // bob is read on from 6, the newest seen.
        let out = reconnected_at(&mut inboxes, 5);
        let text = String::from_utf8_lossy(&out).into_owned();
        assert!(
            text.contains(r#"{"next_by_subj":"chat.inbox.0.bob","seq":7}"#),
            "{text}"
        );
    }

    #[test]
    fn after_a_reconnect_users_are_read_on_a_few_at_a_time() {
        let mut inboxes = inboxes();
        for user in 0..READ_ON_AT_ONCE + 10 {
            inboxes.seen.start(&format!("u{user}"), 1);
        }
        let mut out = reconnected(&mut inboxes);
        let gets = |out: &BytesMut| String::from_utf8_lossy(out).matches("DIRECT.GET").count();
        assert_eq!(gets(&out), READ_ON_AT_ONCE);
        // One user's read ends (nothing after 1): the next user's starts.
        out.clear();
        inboxes.answered(b"3", Some(404), b"", &Bytes::new(), &mut out);
        assert_eq!(gets(&out), 1);
        // Cut off: the reads fail, and nobody waits to be read on any more.
        inboxes.disconnected();
        assert!(inboxes.to_read_on.is_empty());
        assert_eq!(inboxes.reading_on, 0);
    }

    /// The delivered flag of the one `Appended` reply in `replies`, if that is what they are.
    fn delivered_of(replies: &Replies) -> Option<bool> {
        match replies[..] {
            [(
                1,
                Reply::Appended {
                    outcome: Outcome::Kept { delivered },
                    ..
                },
            )] => Some(delivered),
            _ => None,
        }
    }

    #[test]
    fn a_senders_ack_says_sent_when_a_device_of_the_receiver_is_online_on_another_node() {
        let mut inboxes = inboxes();
        inboxes.epochs = vec!["e".into()];
        let stored = Bytes::from_static(br#"{"stream":"CHAT_INBOX_0","seq":7}"#);
        let mut out = BytesMut::new();
        let send = |inboxes: &mut Inboxes, id: &str, delivered: bool| {
            let (mut append, ..) = chat_append(id);
            if let Some(ack) = append.ack.as_mut() {
                ack.delivered = delivered;
            }
            let mut sent = BytesMut::new();
            let replies = inboxes.command(Command::Append(Box::new(append)), true, &mut sent);
            assert!(replies.is_empty());
            String::from_utf8_lossy(&sent).into_owned()
        };
        // Bob's holders are asked (request 1) as the message is published (request 2).
        let text = send(&mut inboxes, "m-1", false);
        let asked = text.find("PUB chat.live.bob _INBOX.x.j1 1\r\n\u{6}");
        let published = text.find("HPUB chat.inbox.0.bob _INBOX.x.j2");
        assert!(asked.is_some() && asked < published, "{text:?}");
        // Stored first, then a holder with a device: `sent`.
        let replies = inboxes.answered(b"2", None, b"", &stored, &mut out);
        assert!(replies.is_empty(), "waits for the holders");
        let replies = inboxes.answered(b"1", None, b"", &Bytes::from_static(b"here"), &mut out);
        assert_eq!(delivered_of(&replies), Some(true));
        // A holder in the grace first, then stored: `queued`.
        send(&mut inboxes, "m-2", false);
        let replies = inboxes.answered(b"3", None, b"", &Bytes::from_static(b"away"), &mut out);
        assert!(replies.is_empty(), "waits for JetStream");
        let replies = inboxes.answered(b"4", None, b"", &stored, &mut out);
        assert_eq!(delivered_of(&replies), Some(false));
        // Holders that never answer: `queued` once the short wait is over.
        send(&mut inboxes, "m-3", false);
        assert!(inboxes
            .answered(b"6", None, b"", &stored, &mut out)
            .is_empty());
        let replies = inboxes.expire(Instant::now() + HOLDERS_WAIT, &mut out);
        assert_eq!(delivered_of(&replies), Some(false));
        // Not stored: said at once, and the holders' answer after it is dropped.
        send(&mut inboxes, "m-4", false);
        let full = br#"{"error":{"code":400,"err_code":10077}}"#;
        let replies = inboxes.answered(b"8", None, b"", &Bytes::from_static(full), &mut out);
        assert_eq!(replies.len(), 1);
        let replies = inboxes.answered(b"7", None, b"", &Bytes::from_static(b"here"), &mut out);
        assert!(replies.is_empty());
        // A device of bob got it here: nobody is asked.
        let text = send(&mut inboxes, "m-5", true);
        assert!(!text.contains("chat.live.bob"), "{text}");
        let replies = inboxes.answered(b"9", None, b"", &stored, &mut out);
        assert_eq!(delivered_of(&replies), Some(true));
        assert!(inboxes.ack_waits.is_empty());
    }

    /// The outcome of the one `Appended` reply in `replies`, if that is what they are.
    fn outcome_of(replies: &Replies) -> Option<Outcome> {
        match replies[..] {
            [(_, Reply::Appended { outcome, .. })] => Some(outcome),
            _ => None,
        }
    }

    #[test]
    fn a_sender_at_its_quota_is_refused_unless_the_receiver_read_one_of_its_messages() {
        let mut inboxes = inboxes();
        inboxes.epochs = vec!["e".into()];
        inboxes.unread = Unread::new(2, Duration::from_secs(60));
        let send = |inboxes: &mut Inboxes, id: &str| {
            let (mut append, ..) = chat_append(id);
            append.receipt = true;
            let mut sent = BytesMut::new();
            let replies = inboxes.command(Command::Append(Box::new(append)), true, &mut sent);
            (replies, String::from_utf8_lossy(&sent).into_owned())
        };
        // What `request` answered with `status` and `payload` (and `headers`) sends.
        let answer = |inboxes: &mut Inboxes, request: u64, status, headers: &[u8], payload| {
            let mut sent = BytesMut::new();
            let id = request.to_string();
            let replies = inboxes.answered(id.as_bytes(), status, headers, &payload, &mut sent);
            (replies, String::from_utf8_lossy(&sent).into_owned())
        };
        let stored = |seq: u64| Bytes::from(format!(r#"{{"stream":"CHAT_INBOX_0","seq":{seq}}}"#));
        let record = |acked: u64| Bytes::from(format!("{acked} 0 0 1"));
        // Ann's first message goes (bob's holders asked as 1, published as 2); her second
        // waits behind it, and answers out of order cannot swap them.
        let (_, text) = send(&mut inboxes, "m-1");
        assert!(text.contains("HPUB chat.inbox.0.bob _INBOX.x.j2"), "{text}");
        let (replies, text) = send(&mut inboxes, "m-2");
        assert!(replies.is_empty() && text.is_empty(), "{text}");
        // The first was a retry JetStream knew: it stored nothing and gives its place
        // back; the second goes (3 and 4).
        let duplicate =
            Bytes::from_static(br#"{"stream":"CHAT_INBOX_0","seq":5,"duplicate":true}"#);
        let (_, text) = answer(&mut inboxes, 2, None, b"", duplicate);
        assert!(text.contains("HPUB chat.inbox.0.bob _INBOX.x.j4"), "{text}");
        let (_, text) = send(&mut inboxes, "m-3");
        assert!(text.is_empty(), "{text}");
        let (_, text) = answer(&mut inboxes, 4, None, b"", stored(7));
        assert!(text.contains("HPUB chat.inbox.0.bob _INBOX.x.j6"), "{text}");
        answer(&mut inboxes, 6, None, b"", stored(8));
        // Two counted: bob's record is read first (7), and the next waits behind it.
        let (_, text) = send(&mut inboxes, "m-4");
        assert!(
            text.starts_with("PUB $JS.API.DIRECT.GET.KV_chat_acks_0 _INBOX.x.j7"),
            "{text}"
        );
        assert_eq!(send(&mut inboxes, "m-5").1, "");
        // He acknowledged none of them: refused, and the next is checked in turn (8).
        let (replies, text) = answer(&mut inboxes, 7, None, &stored_at(3), record(6));
        assert_eq!(outcome_of(&replies), Some(Outcome::SenderQuota));
        assert!(text.contains("_INBOX.x.j8"), "{text}");
        // No record at all: none read either.
        let (replies, _) = answer(&mut inboxes, 8, Some(404), b"", Bytes::new());
        assert_eq!(outcome_of(&replies), Some(Outcome::SenderQuota));
        // The record unreadable: the sender hears it could not be stored (9).
        send(&mut inboxes, "m-6");
        let (replies, _) = answer(&mut inboxes, 9, Some(503), b"", Bytes::new());
        assert_eq!(
            outcome_of(&replies),
            Some(Outcome::Failed(Failure::Unreachable))
        );
        // He read the first (10): ann's count starts again and the message goes (12).
        send(&mut inboxes, "m-7");
        let (replies, text) = answer(&mut inboxes, 10, None, &stored_at(4), record(7));
        assert!(replies.is_empty());
        assert!(
            text.contains("HPUB chat.inbox.0.bob _INBOX.x.j12"),
            "{text}"
        );
        // Another sender's message to bob does not wait for ann's.
        let (mut cid, ..) = chat_append("c-1");
        if let Some(chat) = cid.chat.as_mut() {
            chat.sender = "cid".into();
        }
        let mut sent = BytesMut::new();
        inboxes.command(Command::Append(Box::new(cid)), true, &mut sent);
        assert!(String::from_utf8_lossy(&sent).contains("HPUB chat.inbox.0.bob"));
        // An API send (no receipt) and a device's message to itself are never counted.
        answer(&mut inboxes, 12, None, b"", stored(9));
        let (mut api, ..) = chat_append("api");
        api.receipt = false;
        let (mut to_self, ..) = chat_append("self");
        to_self.receipt = true;
        to_self.user = "ann".into();
        for append in [api, to_self] {
            let mut sent = BytesMut::new();
            inboxes.command(Command::Append(Box::new(append)), true, &mut sent);
            assert!(String::from_utf8_lossy(&sent).contains("HPUB chat.inbox.0."));
        }
    }

    #[test]
    fn a_chat_message_the_index_holds_is_acknowledged_again_and_not_stored_twice() {
        let mut inboxes = inboxes();
        inboxes.epochs = vec!["e".into()];
        inboxes.set_index_ready(true);
        let mut out = BytesMut::new();
        let (append, ..) = chat_append("m-1");
        assert!(inboxes
            .command(Command::Append(Box::new(append)), true, &mut out)
            .is_empty());
        let text = String::from_utf8_lossy(&out).into_owned();
        assert!(
            text.contains("DIRECT.GET.KV_chat_received")
                && text.contains(r#"{"last_by_subj":"$KV.chat_received_0.bob.m-1"}"#),
            "looked up first: {text}"
        );
        assert!(!text.contains("chat.inbox.0.bob"), "{text}");
        // Ann's message, kept as seq 7 three minutes ago: acknowledged, not published.
        out.clear();
        let replies = inboxes.answered(b"1", None, b"", &Bytes::from_static(b"ann 7"), &mut out);
        assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
        assert!(matches!(
            replies[..],
            [(
                1,
                Reply::Appended {
                    outcome: Outcome::Kept { .. },
                    ..
                }
            )]
        ));
        // Not indexed, or another sender's message with that id: published.
        for (n, (status, value)) in [(Some(404), ""), (None, "cat 9")].into_iter().enumerate() {
            let (append, ..) = chat_append("m-2");
            inboxes.command(Command::Append(Box::new(append)), true, &mut out);
            out.clear();
            // The lookups are requests 2 and 5: each publish asks bob's holders first.
            let id = (2 + 3 * n).to_string();
            let value = Bytes::from(value);
            let replies = inboxes.answered(id.as_bytes(), status, b"", &value, &mut out);
            assert!(replies.is_empty());
            let text = String::from_utf8_lossy(&out);
            assert!(text.contains("HPUB chat.inbox.0.bob"), "{text}");
            assert!(text.contains("Nats-Msg-Id: ann.m-2"), "{text}");
            // Stored: the pair's next message may go.
            let stored = Bytes::from_static(br#"{"stream":"CHAT_INBOX_0","seq":7}"#);
            inboxes.answered(
                (4 + 3 * n).to_string().as_bytes(),
                None,
                b"",
                &stored,
                &mut out,
            );
        }
        // No answer in time: the sender hears it was not stored.
        let (append, ..) = chat_append("m-3");
        inboxes.command(Command::Append(Box::new(append)), true, &mut out);
        let replies = inboxes.expire(Instant::now() + requests::REQUEST_WAIT, &mut out);
        assert!(replies.iter().any(|(_, reply)| matches!(
            reply,
            Reply::Appended {
                outcome: Outcome::Failed(Failure::Unreachable),
                ..
            }
        )));
    }

    #[test]
    fn a_posts_sending_device_is_named_on_its_users_row_for_this_process_only() {
        let mut inboxes = inboxes();
        inboxes.epochs = vec!["e".into()];
        let row = |user: &str, except| crate::store::ShareRow {
            user: user.into(),
            seq: None,
            json: None,
            except,
        };
        let share = Share {
            kind: OutKind::NewMessage,
            priority: Priority::Normal,
            json: Bytes::from_static(b"{}"),
            rows: vec![
                row(
                    "ann",
                    Some(Waiter {
                        reactor: 2,
                        ticket: 77,
                    }),
                ),
                row("bob", None),
            ],
            home: 0,
            purpose: FanOut::GroupPost,
            reply_to: 0,
            request: 1,
            delivered: 0,
        };
        let mut out = BytesMut::new();
        inboxes.command(Command::AppendShare(Box::new(share)), true, &mut out);
        let text = String::from_utf8_lossy(&out);
        assert_eq!(
            text.matches("Chat-Except: _INBOX.x. 2 77").count(),
            1,
            "{text}"
        );
        let headers = b"NATS/1.0\r\nNats-Sequence: 4\r\nChat-Except: _INBOX.x. 2 77\r\n\r\n";
        assert_eq!(
            inboxes.except_here(headers),
            Some(Waiter {
                reactor: 2,
                ticket: 77
            })
        );
        let elsewhere = b"NATS/1.0\r\nChat-Except: _INBOX.y. 2 77\r\n\r\n";
        assert_eq!(
            inboxes.except_here(elsewhere),
            None,
            "another process's device"
        );
        assert_eq!(inboxes.except_here(b"NATS/1.0\r\n\r\n"), None);
    }

    #[test]
    fn lanes_skip_a_priority_a_whole_pass_did_not_meet_and_start_over_after_a_page() {
        // A first page's pass meets every event: the next lane begins at its first.
        let mut lanes = Lanes::new(9, None);
        assert!(!lanes.takes(Priority::Low, 3));
        assert!(lanes.takes(Priority::High, 4));
        assert!(!lanes.takes(Priority::Low, 5));
        assert_eq!(lanes.next_lane(2), Some(3), "no normal event: low, from 3");
        assert_eq!(lanes.lane, Priority::Low);
        assert_eq!(lanes.next_lane(2), None);
        // A later page's pass began mid-range: the next lane reads from the first event.
        let mut lanes = Lanes::new(9, Some((Priority::High, 6)));
        assert!(lanes.takes(Priority::High, 7));
        assert_eq!(lanes.next_lane(2), Some(3));
        assert_eq!(lanes.lane, Priority::Normal);
        assert!(lanes.takes(Priority::Normal, 4));
        assert_eq!(lanes.next_lane(2), None, "that pass met no low event");
    }

    #[test]
    fn a_resume_whose_events_were_purged_under_it_is_read_again_as_refused() {
        let mut inboxes = inboxes();
        inboxes.epochs = vec!["e".into()];
        let mut out = BytesMut::new();
        let device = Waiter {
            reactor: 1,
            ticket: 4,
        };
        let from = ReadFrom::Resume {
            epoch: "e".into(),
            seq: 5,
        };
        let read = Command::ReadInbox {
            user: "bob".into(),
            device,
            from,
        };
        inboxes.command(read, true, &mut out);
        let at = |seq: u64| format!("NATS/1.0\r\nNats-Sequence: {seq}\r\n\r\n").into_bytes();
        let event = Bytes::from(encode_event(OutKind::NewMessage, Priority::Normal, b"{}"));
        let record = |r: &'static str| Bytes::from_static(r.as_bytes());
        let none = Bytes::new();
        // The record (acked 5, gone 2), the last seq (9), the stream's first (1): resumed.
        /// A request's number, the answer's status, headers and payload.
        type Answer<'a> = (&'a [u8], Option<u16>, &'a [u8], Bytes);
        let steps: [Answer; 5] = [
            (b"1", None, &at(1), record("5 2 4 1")),
            (b"2", None, &at(9), event.clone()),
            (b"3", None, &at(1), event.clone()),
            (b"4", None, &at(6), event.clone()),
            (b"5", Some(404), b"", none.clone()),
        ];
        for (id, status, headers, payload) in steps {
            let replies = inboxes.answered(id, status, headers, &payload, &mut out);
            assert!(replies.is_empty(), "{replies:?}");
        }
        // Meanwhile another device acknowledged past a generation: gone is 8, so events
        // after 5 may be gone. Read again from 9, as a refused resume.
        out.clear();
        let replies = inboxes.answered(b"6", None, &at(2), &record("9 8 9 0"), &mut out);
        assert!(replies.is_empty(), "{replies:?}");
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains(r#""seq":9"#), "{text}");
        inboxes.answered(b"7", None, &at(9), &event, &mut out);
        let replies = inboxes.answered(b"8", Some(404), b"", &none, &mut out);
        match &replies[..] {
            [(
                1,
                Reply::InboxPage {
                    greeting: Some(greeting),
                    events,
                    ..
                },
            )] => {
                assert_eq!(greeting.resumed, Some(false));
                assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [9]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unanswered_acks_receipts_go_once_the_record_shows_its_write_landed() {
        let (mut inboxes, mut out) = driver_acks_bob(5);
        let none = Bytes::new();
        inboxes.answered(b"1", Some(404), b"", &none, &mut out);
        let event = Bytes::from(encode_event(OutKind::NewMessage, Priority::Normal, b"{}"));
        let with_receipt = b"NATS/1.0\r\nNats-Sequence: 5\r\nChat-Receipt: ann m1\r\n\r\n";
        inboxes.answered(b"2", None, with_receipt, &event, &mut out);
        let text = String::from_utf8_lossy(&out).into_owned();
        let token = text
            .split("Chat-Writer: ")
            .nth(1)
            .and_then(|rest| rest.split("\r\n").next())
            .expect("the write names its token")
            .to_owned();
        // Cut off before the answer: no receipt yet.
        assert!(inboxes.disconnected().is_empty());
        inboxes.epochs = vec!["e".into()];
        out.clear();
        assert!(inboxes.expire(Instant::now(), &mut out).is_empty());
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.contains(r#"{"last_by_subj":"$KV.chat_acks_0.bob"}"#),
            "{text}"
        );
        // The record read again names the write: it landed, and the receipt goes, once.
        let headers = format!("NATS/1.0\r\nNats-Sequence: 9\r\nChat-Writer: {token}\r\n\r\n");
        let record = Bytes::from_static(b"5 0 0 1");
        let replies = inboxes.answered(b"4", None, headers.as_bytes(), &record, &mut out);
        match &replies[..] {
            [(2, Reply::Receipts { user, receipts })] => {
                assert_eq!(&**user, "bob");
                assert_eq!(receipts.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        assert!(inboxes.unsure.is_empty());
    }
}
