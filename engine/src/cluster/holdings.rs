//! The users each node holds, kept in JetStream while the events webhook is on, so that
//! a node that dies (or leaves with users still in their grace) does not leave them
//! online for ever in the backend that hears the events ([`super::presence_events`]).
//!
//! A stream of each process's own, `CHAT_HOLDINGS_<instance>`, one message a subject:
//! - `chat.holdings.<instance>.<user>`: `1 <since ms>` while the process holds the user
//!   (or owes the user's `user_offline`), `0 <at ms>` once the offline is settled. A `1`
//!   is a request whose acknowledgement says the holding is kept: only then does the
//!   relayer ask whether to report the user online, or answer that it holds the user. A
//!   `0` goes without an answer (lost, it only makes a reaper ask about the user again).
//!   What changes while NATS is away, or before the stream is known, is written when it
//!   is, the latest change of each user.
//!
//! A stream of its own because reading and removing one process's holdings from a stream
//! of every process's was a scan of them all on nats-server (a consumer's creation
//! counts what it will deliver, a purge by subject looks at every message): 0.84 s and
//! 3.4 s at a million holdings among a million others, against 0.9 ms for a consumer
//! without a filter and 33 ms to delete the stream (`benches/tools/nats_reads.py`).
//!
//! Stream `CHAT_REAPS`, small (a few messages a process), so that reading it never scans
//! anything large:
//! - `chat.reaps.holder.<instance>`: the node id of a process that has written holdings,
//!   so that one started later finds the processes that died while nobody was there to
//!   reap them (a one-node cluster restarted, or the node key aged out).
//! - `chat.reaps.reaper.<instance>`: who reaps a gone process, written with a
//!   compare-and-set (`Nats-Expected-Last-Subject-Sequence`): of the nodes that hear it
//!   gone, one reaps. A node finding the claim taken reads it: a reaper that is itself
//!   gone is taken over.
//!
//! Reaping a gone process: once claimed, its stream's last sequence bounds the walk;
//! walk the stream through a pull consumer without acks, [`PULL_BATCH`] holdings a pull
//! (a new consumer after a cut, or a pull unanswered); each user it still held goes to
//! the relayer, which asks whether anyone holds the user and, if nobody answers, reports
//! `user_offline`. Once the walk is done and every such check is settled
//! ([`Holdings::reap_checked`]), the stream is deleted, then the process's names in
//! `CHAT_REAPS`. Until then the stream is the reap's record: a reaper that dies first
//! leaves its claim, and the node that reaps it takes the unfinished reap over and walks
//! it again (a user reported twice at worst). A process counted dead that beats again
//! is not reaped further.
//!
//! A process counted dead that was not (frozen, say) may find its stream deleted. It
//! makes it anew when it learns so, and has every user it holds written again
//! ([`Outcome::Lost`]): when a holding's write fails, on each connection, and with each
//! sweep (the stream's `created` time tells a new stream from its own).
//!
//! Every node also sweeps `chat.reaps.holder.*`. As soon as it holds its node id, it
//! reaps every earlier process of that id (a node id is one live process's: a process
//! that died in a crash loop, before anyone reaped its predecessor). Then,
//! [`SWEEP_AFTER`] after it holds its id and every [`SWEEP_EVERY`], it reaps each
//! process there that is neither alive nor itself: those that died while no node was
//! up, or whose reaper died too.
//!
//! No I/O: requests go into the relayer's output, and answers come back through
//! [`Holdings::answered`].

use std::{sync::Arc, time::Duration};

use bytes::BytesMut;
use hashbrown::{HashMap, HashSet};
use serde_json::Value;
use tokio::time::Instant;
use tracing::{debug, error, info};

use super::{
    members::DEAD_AFTER,
    relay::{from_subject_token, subject_token},
    requests::{
        self, direct_get, Requests, STREAM_DIFFERS, STREAM_NOT_FOUND, SUBJECTS_OVERLAP,
        WRONG_LAST_SEQUENCE,
    },
    wire,
};

/// The streams a process sets up: its own of holdings, and the one of the processes that
/// wrote holdings and of who reaps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Held,
    Reaps,
}

impl Stream {
    const BOTH: [Stream; 2] = [Stream::Held, Stream::Reaps];

    /// The stream's name and subjects, for process `instance`.
    fn of(self, instance: &str) -> (String, Vec<String>) {
        match self {
            Stream::Held => (held_stream(instance), vec![held_subject(instance, ">")]),
            Stream::Reaps => (
                REAPS.to_owned(),
                vec![holder_subject("*"), reaper_subject("*")],
            ),
        }
    }
}

/// The stream of the processes that wrote holdings and of who reaps them.
const REAPS: &str = "CHAT_REAPS";

/// Process `instance`'s stream of holdings.
fn held_stream(instance: &str) -> String {
    format!("CHAT_HOLDINGS_{instance}")
}

/// Process `instance`'s holding of the user whose subject token is `user` (`>`: all).
fn held_subject(instance: &str, user: &str) -> String {
    format!("chat.holdings.{instance}.{user}")
}

/// Where process `instance` names its node id (in [`REAPS`]).
fn holder_subject(instance: &str) -> String {
    format!("chat.reaps.holder.{instance}")
}

/// Where the reaper of process `instance` claims it (in [`REAPS`]).
fn reaper_subject(instance: &str) -> String {
    format!("chat.reaps.reaper.{instance}")
}

/// Where process `instance` answers that it lives (a reaper asks before it deletes the
/// process's stream).
pub(super) fn process_subject(instance: &str) -> String {
    format!("chat.process.{instance}")
}

/// The holdings a pull of a reap's walk asks for. A direct get a holding cost nats-server
/// 10–13 µs, where a pull consumer's batches cost 2.5–4.5 µs a holding
/// (`benches/tools/nats_reads.py`, 20,000 and 1,000,000 holdings among twice as many); a
/// pull is one request, and a batch's holdings come back to back.
const PULL_BATCH: usize = 1024;
/// How long JetStream keeps a walk's consumer that nobody pulls (a reaper cut off or
/// gone): the walk makes another from where it was.
const CONSUMER_IDLE: Duration = Duration::from_secs(60);
/// How long after it first holds its id a node looks for processes that nobody reaped:
/// long enough for the membership watch to have heard every live node and counted the
/// silent ones dead.
const SWEEP_AFTER: Duration = Duration::from_secs(DEAD_AFTER.as_secs() + 2);
/// How often a node looks again.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How long after JetStream's advisory that its stream of holdings was deleted a
/// process makes it anew: nats-server 2.9 sends the advisory before it removes the
/// stream's files, and a stream made at once under the same name lost what was written
/// to it (seen with the integration test).
const REMAKE_AFTER: Duration = Duration::from_secs(2);

/// What waits on a request's answer.
#[derive(Debug)]
enum Pending {
    /// A stream's creation (or its description).
    Setup(Stream),
    /// A holding's write.
    Held(Arc<str>),
    /// The claim to reap a gone process.
    Claim(Box<str>),
    /// The claim another node made, read.
    ClaimRead(Box<str>),
    /// The gone process's stream's last sequence, once the reap is claimed: the walk's
    /// bound.
    Extent(Box<str>),
    /// The next claim to reap, for the claims a gone process made itself.
    ClaimsOf(Box<str>),
    /// The consumer of a gone process's holdings, created.
    Consumer(Box<str>),
    /// A pull of that consumer: its end, when fewer holdings came than asked.
    Pull(Box<str>),
    /// The next process that has written holdings, for the sweep.
    Sweep,
    /// Whether a reaped process still answers on NATS, before its stream is deleted.
    Alive(Box<str>),
    /// The deletion of a reaped process's stream: its names in `CHAT_REAPS` stored up
    /// to the reap's claim (at this sequence) go next.
    Deleted(Box<str>, u64),
    /// A purge, or a consumer's deletion: its answer changes nothing.
    Cleanup,
}

/// A gone process to reap.
#[derive(Debug)]
struct Reap {
    /// This node reaps it (its claim was stored).
    claimed: bool,
    /// The claim's `Nats-Msg-Id`: the same when it is sent again after a cut, so that
    /// JetStream recognises it.
    claim_id: u64,
    /// The claim subject's last sequence the claim expects: 0, or a gone reaper's claim.
    expected: u64,
    /// The claim's sequence in `CHAT_REAPS`: the claims the gone process made itself
    /// came before it.
    claim_seq: u64,
    /// Claimed, the reap reads the claims the gone process made itself (reaps it left
    /// unfinished, taken over then), from this sequence on, until done.
    claims_next: Option<u64>,
    /// One past the gone process's stream's last sequence once the reap is claimed
    /// (`u64::MAX` until it is read; 1 for no stream): what the gone process wrote came
    /// before, and the walk reads no further (a process counted dead that was not may
    /// still write).
    upto: u64,
    /// A request of the claim, or of the claims read, is under way.
    asked: bool,
    /// The walk over the gone process's holdings, once claimed and bounded.
    walk: Option<Walk>,
    /// This reap's number, in the users it hands the relayer ([`Outcome::Reaped`]).
    serial: u64,
    /// The users handed to the relayer whose checks have not settled yet: the reap is
    /// purged once its walk is done and this is 0.
    checking: usize,
    /// Finished, whether the gone process answers is asked ([`Pending::Alive`]).
    pinged: bool,
}

/// A reap's walk: a pull consumer of the gone process's holdings, read from `next`.
#[derive(Debug)]
struct Walk {
    /// Where the walk reads on: a new consumer starts there (after a cut, say).
    next: u64,
    /// The consumer's name, once created on this connection.
    consumer: Option<Box<str>>,
    /// Its creation is under way.
    creating: bool,
    /// The pull under way: its request's number and the holdings it brought so far.
    pull: Option<(u64, usize)>,
    /// Nothing is left to read before the reap's bound.
    done: bool,
}

impl Walk {
    fn new() -> Walk {
        Walk {
            next: 1,
            consumer: None,
            creating: false,
            pull: None,
            done: false,
        }
    }
}

impl Reap {
    /// Whether the walk is over and every user it found is checked: time to delete the
    /// gone process's stream.
    fn finished(&self) -> bool {
        self.walk.as_ref().is_some_and(|walk| walk.done) && self.checking == 0
    }

    /// Whether nothing of its current step is under way.
    fn idle(&self) -> bool {
        match &self.walk {
            None => !self.asked,
            Some(walk) => !walk.creating && walk.pull.is_none() && !walk.done,
        }
    }
}

/// The sweep for processes that nobody reaped: when it is due (once this node holds its
/// id), and where it reads on.
#[derive(Debug, Default)]
struct Sweep {
    at: Option<Instant>,
    next: u64,
    asked: bool,
    /// The first sweep, at once: only this node id's earlier processes.
    same_node: bool,
}

/// This process's holdings in JetStream, and the gone processes it reaps.
pub(super) struct Holdings {
    /// This process's token.
    instance: Box<str>,
    /// This node's id, in `chat.reaps.holder.<instance>`.
    node_id: Box<str>,
    /// The streams' copies (`--cluster-replicas`).
    replicas: u8,
    /// Requests under way, answered to `<inbox>r<number>`.
    requests: Requests<Pending>,
    /// Connected to NATS.
    online: bool,
    /// The streams' set-up is under way.
    setting_up: bool,
    /// Each stream ([`Stream::BOTH`]) is known on this connection.
    streams_known: [bool; 2],
    /// When this process's stream of holdings was created, as JetStream said at its
    /// set-up: another time says it was deleted meanwhile.
    held_created: Option<Box<str>>,
    /// A stream's creation was refused for subjects another stream takes: said once.
    overlap_said: bool,
    /// This node holds its id (membership's claim).
    claimed: bool,
    /// The streams are known and `chat.reaps.holder.<instance>` written on this connection,
    /// which needs the node's id held: writes go at once.
    ready: bool,
    /// The last claim id given out.
    claims: u64,
    /// The last reap number given out ([`Reap::serial`]).
    reaps_started: u64,
    /// Changes not written yet (NATS out of reach, or the stream not set up): user →
    /// held (since) or let go (at), Unix ms.
    unwritten: HashMap<Arc<str>, (bool, u64)>,
    /// Users whose holding is written and not acknowledged yet: since when (Unix ms),
    /// and the write's request number.
    unacked: HashMap<Arc<str>, (u64, u64)>,
    /// The other processes alive, as the membership watch said.
    alive: HashSet<Box<str>>,
    /// Gone processes, by instance.
    reaps: HashMap<Box<str>, Reap>,
    /// The sweep of `chat.reaps.holder.*`.
    sweep: Sweep,
    /// The events webhook is behind ([`Holdings::pace`]): the walks wait.
    walks_wait: bool,
    /// JetStream said this process's stream of holdings was deleted: it is made anew
    /// then ([`REMAKE_AFTER`]).
    remake_at: Option<Instant>,
}

impl Holdings {
    /// The holdings of process `instance` of node `node_id`, with answers to `<inbox>r…`
    /// and `replicas` copies of the stream.
    pub(super) fn new(inbox: &str, (node_id, instance): (&str, &str), replicas: u8) -> Holdings {
        Holdings {
            instance: instance.into(),
            node_id: node_id.into(),
            replicas,
            requests: Requests::new(inbox, 'r'),
            online: false,
            setting_up: false,
            streams_known: [false; 2],
            held_created: None,
            overlap_said: false,
            claimed: false,
            ready: false,
            claims: 0,
            reaps_started: 0,
            unwritten: HashMap::new(),
            unacked: HashMap::new(),
            alive: HashSet::new(),
            reaps: HashMap::new(),
            sweep: Sweep {
                next: 1,
                same_node: true,
                ..Sweep::default()
            },
            walks_wait: false,
            remake_at: None,
        }
    }

    /// Whether this process's holding of `user`, if any, is kept: JetStream acknowledged
    /// it (and nothing since is waiting to be written). Only then may the node report the
    /// user online, or answer that it holds the user.
    pub(super) fn kept(&self, user: &str) -> bool {
        self.ready && !self.unacked.contains_key(user) && !self.unwritten.contains_key(user)
    }

    /// This process holds `user` since `since_ms` (`true`), or let the user go at `at_ms`.
    pub(super) fn changed(&mut self, user: Arc<str>, held: bool, at_ms: u64, out: &mut BytesMut) {
        self.unacked.remove(&user);
        if self.ready {
            self.write(user, held, at_ms, out);
        } else {
            self.unwritten.insert(user, (held, at_ms));
        }
    }

    /// Writes a change: a holding with a request, whose acknowledgement says it is kept;
    /// a letting go without one (lost, it only makes a reaper ask about the user again).
    fn write(&mut self, user: Arc<str>, held: bool, at_ms: u64, out: &mut BytesMut) {
        let subject = held_subject(&self.instance, &subject_token(&user));
        let value = format!("{} {at_ms}", u8::from(held));
        if !held {
            return wire::publish(out, subject.as_bytes(), None, value.as_bytes());
        }
        let pending = Pending::Held(user.clone());
        let number = (self.requests).send_within(
            out,
            (&subject, &[]),
            value.as_bytes(),
            pending,
            requests::REQUEST_WAIT,
        );
        self.unacked.insert(user, (at_ms, number));
    }

    /// Whether the walks may read on: not while the events webhook is `behind`, since a
    /// reap reports its users faster than a webhook may take them, and the events queue
    /// would drop some. The walks go on at the next [`Holdings::expire`] after it is not.
    pub(super) fn pace(&mut self, behind: bool) {
        self.walks_wait = behind;
    }

    /// On a new connection: the stream is made sure of before anything is written.
    pub(super) fn connected(&mut self, out: &mut BytesMut) {
        (self.online, self.streams_known, self.ready) = (true, [false; 2], false);
        self.set_up_streams(out);
    }

    /// Where JetStream says that this process's stream of holdings was deleted (an
    /// advisory): a reaper took the process for dead.
    pub(super) fn deleted_subject(&self) -> String {
        format!(
            "$JS.EVENT.ADVISORY.STREAM.DELETED.{}",
            held_stream(&self.instance)
        )
    }

    /// JetStream said at `now` that this process's stream of holdings was deleted: it
    /// is made anew [`REMAKE_AFTER`] that, and its answer's `created` has what this
    /// process holds written again ([`Outcome::Lost`]). Without the advisory, a failed
    /// write or the next sweep would find it.
    pub(super) fn deleted(&mut self, now: Instant) {
        info!("cluster: JetStream says this node's holdings were deleted: made anew soon");
        self.streams_known[Stream::Held as usize] = false;
        self.remake_at = Some(now + REMAKE_AFTER); // `expire` sets it up then
    }

    /// Whether both streams are known on this connection.
    fn streams_known(&self) -> bool {
        self.streams_known.iter().all(|known| *known)
    }

    /// Creates the streams not known yet (or learns they are there).
    fn set_up_streams(&mut self, out: &mut BytesMut) {
        self.setting_up = true;
        for stream in Stream::BOTH {
            if !self.streams_known[stream as usize] {
                self.set_up(stream, out);
            }
        }
    }

    /// Creates `stream` (or learns it is there, and, for this process's holdings, since
    /// when: [`Outcome::Lost`]).
    fn set_up(&mut self, stream: Stream, out: &mut BytesMut) {
        let (name, subjects) = stream.of(&self.instance);
        let config = serde_json::json!({
            "name": name,
            "subjects": subjects,
            "storage": "file",
            "retention": "limits",
            "max_msgs_per_subject": 1,
            "discard": "old",
            "allow_direct": true,
            "num_replicas": self.replicas,
        });
        let subject = format!("$JS.API.STREAM.CREATE.{name}");
        let body = config.to_string();
        let pending = Pending::Setup(stream);
        (self.requests).send(out, (&subject, &[]), body.as_bytes(), pending);
    }

    /// Cut off from NATS: nothing under way will be answered.
    pub(super) fn disconnected(&mut self) {
        for (user, (since_ms, _)) in self.unacked.drain() {
            self.unwritten.insert(user, (true, since_ms));
        }
        (self.online, self.setting_up, self.remake_at) = (false, false, None);
        (self.streams_known, self.ready) = ([false; 2], false);
        self.requests.drain();
        for reap in self.reaps.values_mut() {
            (reap.asked, reap.pinged) = (false, false);
            if let Some(walk) = &mut reap.walk {
                // The consumer goes with the connection: JetStream drops it once idle.
                (walk.consumer, walk.creating, walk.pull) = (None, false, None);
            }
        }
        self.sweep.asked = false;
    }

    /// Process `instance` beats: alive, and not reaped (any more).
    pub(super) fn joined(&mut self, instance: &str, out: &mut BytesMut) {
        self.alive.insert(instance.into());
        if self.reaps.contains_key(instance) {
            info!(
                instance,
                "cluster: a node counted dead beats again: not reaped"
            );
            self.drop_reap(instance, out);
        }
    }

    /// Ends the reap of `instance`, which lives: its stream stays, and its next death is
    /// anyone's to reap again.
    fn drop_reap(&mut self, instance: &str, out: &mut BytesMut) {
        let Some(reap) = self.reaps.remove(instance) else {
            return;
        };
        let consumer = reap.walk.and_then(|walk| walk.consumer);
        self.drop_consumer(instance, consumer.as_deref(), out);
        if reap.claimed && self.ready {
            self.purge_reaps(&reaper_subject(instance), None, out);
        }
    }

    /// Process `instance` died, left or was replaced: reaped by whichever node claims it.
    pub(super) fn gone(&mut self, instance: &str, out: &mut BytesMut) {
        self.alive.remove(instance);
        if *instance == *self.instance || self.reaps.contains_key(instance) {
            return;
        }
        self.start_reap(instance, out);
    }

    fn start_reap(&mut self, instance: &str, out: &mut BytesMut) {
        self.claims += 1;
        self.reaps_started += 1;
        let reap = Reap {
            claimed: false,
            claim_id: self.claims,
            expected: 0,
            claim_seq: 0,
            claims_next: Some(1),
            upto: u64::MAX,
            asked: false,
            walk: None,
            serial: self.reaps_started,
            checking: 0,
            pinged: false,
        };
        self.reaps.insert(instance.into(), reap);
        if self.ready {
            self.go_on(instance, out);
        }
    }

    /// The next request of the reap of `instance`: its claim, its stream's last
    /// sequence, the next claim it made itself, or its walk's consumer or next pull when
    /// none is under way (unless the walks wait, [`Holdings::pace`]).
    fn go_on(&mut self, instance: &str, out: &mut BytesMut) {
        let Some(reap) = self.reaps.get_mut(instance) else {
            return;
        };
        let bounded = reap.upto != u64::MAX;
        if reap.claimed && bounded && reap.claims_next.is_none() {
            let walk = reap.walk.get_or_insert_with(Walk::new);
            walk.done |= walk.next >= reap.upto; // nothing (left) before the bound
            if walk.done {
                return self.walk_on(instance, out);
            }
            if self.walks_wait || walk.creating || walk.pull.is_some() {
                return;
            }
            let stream = held_stream(instance);
            let Some(consumer) = &walk.consumer else {
                walk.creating = true;
                // No filter: the stream is the process's own, and a filter would make
                // nats-server count what the consumer will deliver, a scan.
                let config = serde_json::json!({
                    "stream_name": stream,
                    "config": {
                        "deliver_policy": "by_start_sequence",
                        "opt_start_seq": walk.next,
                        "ack_policy": "none",
                        "mem_storage": true,
                        "num_replicas": 1,
                        "inactive_threshold": CONSUMER_IDLE.as_nanos() as u64,
                    },
                });
                let subject = format!("$JS.API.CONSUMER.CREATE.{stream}");
                let pending = Pending::Consumer(instance.into());
                let body = config.to_string();
                return (self.requests).send(out, (&subject, &[]), body.as_bytes(), pending);
            };
            let subject = format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}");
            let body = format!(r#"{{"batch":{PULL_BATCH},"no_wait":true}}"#);
            let pending = Pending::Pull(instance.into());
            let wait = requests::REQUEST_WAIT;
            let number =
                (self.requests).send_within(out, (&subject, &[]), body.as_bytes(), pending, wait);
            walk.pull = Some((number, 0));
            return;
        }
        reap.asked = true;
        if reap.claimed && !bounded {
            let subject = format!("$JS.API.STREAM.INFO.{}", held_stream(instance));
            let pending = Pending::Extent(instance.into());
            return self.requests.send(out, (&subject, &[]), b"", pending);
        }
        if let Some(next) = reap.claims_next.filter(|_| reap.claimed) {
            let filter = reaper_subject("*");
            let body = serde_json::json!({"seq": next, "next_by_subj": filter});
            let pending = Pending::ClaimsOf(instance.into());
            let to = direct_get(REAPS);
            let body = body.to_string();
            return self
                .requests
                .send(out, (&to, &[]), body.as_bytes(), pending);
        }
        let subject = reaper_subject(instance);
        let id = format!("reap {instance} {} {}", self.instance, reap.claim_id);
        let expected = reap.expected.to_string();
        let headers = [
            ("Nats-Expected-Last-Subject-Sequence", expected.as_str()),
            // A claim sent again after a cut is recognised, not refused as another's.
            ("Nats-Msg-Id", id.as_str()),
        ];
        let pending = Pending::Claim(instance.into());
        self.requests
            .send(out, (&subject, &headers), self.instance.as_bytes(), pending);
    }

    /// An answer to request `number`: the users a gone process held (each to be reported
    /// offline if nobody holds the user now).
    pub(super) fn answered(
        &mut self,
        number: &[u8],
        status: Option<u16>,
        headers: &[u8],
        payload: &[u8],
        out: &mut BytesMut,
    ) -> Vec<Outcome> {
        let Some(pending) = self.requests.answered(number) else {
            return Vec::new();
        };
        let answer = || serde_json::from_slice::<Value>(payload).unwrap_or_default();
        match pending {
            Pending::Held(user) => {
                let number = (std::str::from_utf8(number).ok()).and_then(|n| n.parse().ok());
                let Some(&(since_ms, sent)) = self.unacked.get(&user) else {
                    return Vec::new(); // let go meanwhile
                };
                if Some(sent) != number {
                    return Vec::new(); // an earlier write's answer
                }
                self.unacked.remove(&user);
                match requests::api_error(status, &answer()) {
                    None => vec![Outcome::Kept(user)],
                    Some(e) => {
                        debug!(%user, "cluster: holding not written: {e}"); // again
                        self.unwritten.insert(user, (true, since_ms));
                        // The stream may have been deleted (this process counted dead
                        // and reaped): set up again, it says.
                        self.streams_known[Stream::Held as usize] = false;
                        self.ready = false;
                        Vec::new()
                    }
                }
            }
            Pending::Setup(stream) => {
                self.setting_up = false;
                self.set_up_answered(stream, status, &answer(), out)
            }
            Pending::Claim(instance) => {
                let answer = answer();
                let Some(reap) = self.reaps.get_mut(&instance) else {
                    return Vec::new();
                };
                reap.asked = false;
                match requests::api_error(status, &answer) {
                    None => {
                        info!(%instance, "cluster: reaping the holdings of a gone node");
                        reap.claimed = true;
                        reap.claim_seq = answer["seq"].as_u64().unwrap_or(u64::MAX);
                        self.go_on(&instance, out);
                    }
                    Some(_)
                        if answer["error"]["err_code"].as_u64() == Some(WRONG_LAST_SEQUENCE) =>
                    {
                        // Another node's claim: read whose.
                        reap.asked = true;
                        let subject = reaper_subject(&instance);
                        let body = serde_json::json!({ "last_by_subj": subject }).to_string();
                        let pending = Pending::ClaimRead(instance);
                        let to = direct_get(REAPS);
                        self.requests
                            .send(out, (&to, &[]), body.as_bytes(), pending);
                    }
                    Some(e) => debug!(%instance, "cluster: reap not claimed: {e}"), // again
                }
                Vec::new()
            }
            Pending::ClaimRead(instance) => {
                self.claim_read(&instance, status, headers, payload, out);
                Vec::new()
            }
            Pending::Extent(instance) => {
                let Some(reap) = self.reaps.get_mut(&instance) else {
                    return Vec::new();
                };
                reap.asked = false;
                let answer = answer();
                let last = answer["state"]["last_seq"].as_u64();
                let missing = answer["error"]["err_code"].as_u64() == Some(STREAM_NOT_FOUND);
                match (requests::api_error(status, &answer), last) {
                    (None, Some(last)) => reap.upto = last.saturating_add(1),
                    // It wrote no holding, or its stream was deleted by a reaper that
                    // died before removing its names: nothing to walk.
                    _ if missing => reap.upto = 1,
                    (e, _) => {
                        debug!(%instance, "cluster: reap not bounded: {e:?}"); // again
                        return Vec::new();
                    }
                }
                self.go_on(&instance, out);
                Vec::new()
            }
            Pending::ClaimsOf(instance) => {
                self.claims_of(&instance, status, headers, payload, out);
                Vec::new()
            }
            Pending::Consumer(instance) => {
                let Some(walk) = self.reaps.get_mut(&instance).and_then(|r| r.walk.as_mut()) else {
                    return Vec::new(); // beats again
                };
                walk.creating = false;
                let answer = answer();
                let missing = answer["error"]["err_code"].as_u64() == Some(STREAM_NOT_FOUND);
                match (
                    requests::api_error(status, &answer),
                    answer["name"].as_str(),
                ) {
                    (None, Some(name)) => walk.consumer = Some(name.into()),
                    _ if missing => walk.done = true, // deleted meanwhile
                    (e, _) => debug!(%instance, "cluster: reap walk not started: {e:?}"), // again
                }
                self.go_on(&instance, out);
                Vec::new()
            }
            Pending::Pull(instance) => {
                self.pull_ended(&instance, status, out);
                Vec::new()
            }
            Pending::Sweep => {
                self.swept(status, headers, payload, out);
                Vec::new()
            }
            Pending::Alive(instance) => {
                let Some(reap) = self.reaps.get_mut(&instance) else {
                    return Vec::new();
                };
                reap.pinged = false;
                match status {
                    // Its connection is gone: it writes no more, and its stream goes.
                    Some(503) => self.delete_reaped(&instance, out),
                    // It lives (taken for dead): its stream keeps what it wrote past the
                    // walk's bound, and the users it holds answered `held`.
                    None => {
                        info!(%instance, "cluster: a node counted dead answers: not reaped");
                        self.drop_reap(&instance, out);
                    }
                    Some(other) => debug!(%instance, "cluster: a reaped node's ping: {other}"),
                }
                Vec::new()
            }
            Pending::Deleted(instance, claim_seq) => {
                let answer = answer();
                let missing = answer["error"]["err_code"].as_u64() == Some(STREAM_NOT_FOUND);
                match requests::api_error(status, &answer) {
                    Some(e) if !missing => {
                        // Its names stay: the next sweep reaps it again.
                        debug!(%instance, "cluster: a reaped node's stream not deleted: {e}");
                    }
                    // Up to the claim: a process reaped alive names itself again as it
                    // hears of the deletion, maybe before this purge.
                    _ => {
                        self.purge_reaps(&format!("chat.reaps.*.{instance}"), Some(claim_seq), out)
                    }
                }
                Vec::new()
            }
            Pending::Cleanup => Vec::new(),
        }
    }

    /// The answer to the creation of `stream`. A stream of this process's holdings
    /// created since it was last seen (its `created` time differs) means the one before
    /// was deleted: every user this process holds is to be written again.
    fn set_up_answered(
        &mut self,
        stream: Stream,
        status: Option<u16>,
        answer: &Value,
        out: &mut BytesMut,
    ) -> Vec<Outcome> {
        let name = || stream.of(&self.instance).0;
        match answer["error"]["err_code"].as_u64() {
            Some(SUBJECTS_OVERLAP) if !self.overlap_said => {
                self.overlap_said = true;
                error!(
                    "cluster: stream {} not set up: another stream takes its subjects; \
                     without it no user is reported offline when this node dies \
                     (docs/cluster.md, \"Presence events\")",
                    name()
                );
                return Vec::new();
            }
            Some(STREAM_DIFFERS) => {} // there, with a configuration of its own
            _ => {
                if let Some(e) = requests::api_error(status, answer) {
                    debug!("cluster: stream {} not set up: {e}", name()); // again
                    return Vec::new();
                }
            }
        }
        let mut moved = Vec::new();
        if let (Stream::Held, Some(created)) = (stream, answer["created"].as_str()) {
            let before = self.held_created.replace(created.into());
            if before.is_some_and(|before| *before != *created) {
                info!("cluster: this node's holdings were deleted (counted dead?): written again");
                moved.push(Outcome::Lost);
                // Its names in `CHAT_REAPS` went with them: named again, first.
                self.ready = false;
            }
        }
        self.streams_known[stream as usize] = true;
        moved.extend(self.become_ready(out));
        moved
    }

    /// Another node's claim on the reap of `instance`, read: a live reaper (or this
    /// process, whose claim's answer was lost) keeps it; a gone one's is taken over.
    fn claim_read(
        &mut self,
        instance: &str,
        status: Option<u16>,
        headers: &[u8],
        reaper: &[u8],
        out: &mut BytesMut,
    ) {
        let Some(reap) = self.reaps.get_mut(instance) else {
            return;
        };
        reap.asked = false;
        match status {
            Some(404) => {
                self.reaps.remove(instance); // reaped meanwhile
                return;
            }
            Some(other) => return debug!(instance, "cluster: reap claim read: status {other}"),
            None => {}
        }
        let Some((_, seq)) = stored_at(headers) else {
            return debug!(instance, "cluster: a reap claim without its sequence");
        };
        let reaper = String::from_utf8_lossy(reaper);
        if *reaper == *self.instance {
            (reap.claimed, reap.claim_seq) = (true, seq);
        } else if self.alive.contains(&*reaper) {
            self.reaps.remove(instance);
            return;
        } else {
            info!(instance, %reaper, "cluster: taking over the reap of a gone node");
            self.claims += 1;
            (reap.expected, reap.claim_id) = (seq, self.claims);
        }
        self.go_on(instance, out);
    }

    /// Once the stream is there and this node holds its id: the process is named in
    /// `chat.holder` (first, so that a sweep finds whatever it writes), what waited is
    /// written, and the reaps go on.
    fn become_ready(&mut self, out: &mut BytesMut) -> Vec<Outcome> {
        if self.ready || !self.streams_known() || !self.claimed {
            return Vec::new();
        }
        self.ready = true;
        self.name_process(out);
        let mut unwritten: Vec<(Arc<str>, (bool, u64))> = self.unwritten.drain().collect();
        unwritten.sort_unstable();
        for (user, (held, at_ms)) in unwritten {
            self.write(user, held, at_ms, out);
        }
        self.go_on_all(out);
        vec![Outcome::Ready]
    }

    /// Names this process and its node id in `chat.reaps.holder.<instance>`.
    fn name_process(&self, out: &mut BytesMut) {
        let subject = holder_subject(&self.instance);
        wire::publish(out, subject.as_bytes(), None, self.node_id.as_bytes());
    }

    /// Sends the next request of every reap with none under way (in instance order).
    /// Reaps finished while writes could not go (NATS away) are purged first.
    fn go_on_all(&mut self, out: &mut BytesMut) {
        for instance in self.reaps_that(|reap| reap.finished() && !reap.pinged) {
            self.reaped_all(&instance, out);
        }
        for instance in self.reaps_that(Reap::idle) {
            self.go_on(&instance, out);
        }
    }

    /// The gone processes whose reap is `in_state`, in instance order.
    fn reaps_that(&self, in_state: fn(&Reap) -> bool) -> Vec<Box<str>> {
        let mut instances: Vec<Box<str>> = (self.reaps.iter())
            .filter(|(_, reap)| in_state(reap))
            .map(|(instance, _)| instance.clone())
            .collect();
        instances.sort_unstable();
        instances
    }

    /// One claim read while reaping `instance`: a reap it claimed itself, and left
    /// unfinished when it died, is taken over.
    fn claims_of(
        &mut self,
        instance: &str,
        status: Option<u16>,
        headers: &[u8],
        claimer: &[u8],
        out: &mut BytesMut,
    ) {
        let Some(reap) = self.reaps.get_mut(instance) else {
            return; // beats again
        };
        reap.asked = false;
        match status {
            Some(404) => reap.claims_next = None, // read them all: on to its holdings
            Some(other) => return debug!(instance, "cluster: reading claims: status {other}"),
            None => {}
        }
        let claimed = stored_at(headers).filter(|_| status.is_none());
        let claimed = claimed.filter(|(_, seq)| *seq < reap.claim_seq);
        match claimed {
            Some((_, seq)) => reap.claims_next = Some(seq + 1),
            None if status.is_none() => reap.claims_next = None, // past the claim: done
            None => {}
        }
        let prefix = reaper_subject("");
        let target = (claimed.and_then(|(subject, _)| subject.strip_prefix(&prefix)))
            .filter(|target| *target != instance && claimer == instance.as_bytes())
            .map(Box::<str>::from);
        self.go_on(instance, out);
        if let Some(target) = target {
            if *target != *self.instance && !self.reaps.contains_key(&target) {
                info!(%target, "cluster: a gone node's own reap left unfinished, taken over");
                self.start_reap(&target, out);
            }
        }
    }

    /// A pull of the walk over `instance`'s holdings ended before it brought all it
    /// asked for, with `status`: 404, nothing (left) to read; 408, fewer than asked came,
    /// and the walk pulls again; another (the consumer gone, say), a new consumer reads
    /// on from where the walk was.
    fn pull_ended(&mut self, instance: &str, status: Option<u16>, out: &mut BytesMut) {
        let Some(walk) = self.reaps.get_mut(instance).and_then(|r| r.walk.as_mut()) else {
            return;
        };
        walk.pull = None;
        match status {
            Some(404) => walk.done = true,
            Some(408) | None => {}
            Some(other) => {
                debug!(instance, "cluster: reap walk: status {other}");
                let consumer = walk.consumer.take();
                self.drop_consumer(instance, consumer.as_deref(), out); // a new one reads on
            }
        }
        self.walk_on(instance, out);
    }

    /// A holding a walk's consumer delivered: on `subject` (`chat.holdings.<instance>.<user>`),
    /// with the consumer's acknowledgement subject `ack` (its name, the holding's
    /// sequence and how many are left). A user the gone process still held is handed on.
    /// Allocation: the reaped user's name; once a pull, the instance's.
    pub(super) fn delivered(
        &mut self,
        subject: &[u8],
        ack: &[u8],
        payload: &[u8],
        out: &mut BytesMut,
    ) -> Vec<Outcome> {
        let Some((consumer, seq, left)) = delivery_of(ack) else {
            debug!("cluster: a delivery whose acknowledgement subject does not parse");
            return Vec::new();
        };
        let found = self.reaps.iter_mut().find(|(_, reap)| {
            let walk = reap.walk.as_ref();
            walk.and_then(|w| w.consumer.as_deref()) == Some(consumer)
        });
        let Some((instance, reap)) = found else {
            return Vec::new(); // a consumer dropped: its reap ended, or beats again
        };
        let Some(walk) = reap.walk.as_mut() else {
            return Vec::new();
        };
        if seq < walk.next {
            return Vec::new(); // read already
        }
        let mut user = None;
        if seq >= reap.upto {
            walk.done = true; // written since (by a process counted dead that was not)
        } else {
            walk.next = seq + 1;
            walk.done = left == 0;
            let name = (subject.strip_prefix(b"chat.holdings."))
                .and_then(|rest| rest.strip_prefix(instance.as_bytes()))
                .and_then(|rest| rest.strip_prefix(b"."))
                .and_then(|name| std::str::from_utf8(name).ok());
            let still_held = payload.first() == Some(&b'1');
            user = (name.and_then(from_subject_token))
                .filter(|_| still_held)
                .map(|user| Outcome::Reaped {
                    user: user.into(),
                    reap: reap.serial,
                });
            reap.checking += usize::from(user.is_some());
        }
        if let Some((number, received)) = &mut walk.pull {
            *received += 1;
            if *received < PULL_BATCH && !walk.done {
                return user.into_iter().collect(); // the pull goes on
            }
            // Retired: a status that may still end it changes nothing.
            self.requests.answered(number.to_string().as_bytes());
            walk.pull = None;
        }
        let instance = instance.clone(); // once a pull
        self.walk_on(&instance, out);
        user.into_iter().collect()
    }

    /// After a step of the walk over `instance`'s holdings: done, its consumer goes (and,
    /// every check settled, the reap); else it reads on.
    fn walk_on(&mut self, instance: &str, out: &mut BytesMut) {
        let Some(reap) = self.reaps.get_mut(instance) else {
            return;
        };
        let Some(walk) = reap.walk.as_mut().filter(|walk| walk.done) else {
            return self.go_on(instance, out);
        };
        let consumer = walk.consumer.take();
        let finished = reap.finished();
        self.drop_consumer(instance, consumer.as_deref(), out);
        if finished {
            self.reaped_all(instance, out);
        }
    }

    /// Deletes `consumer` of `instance`'s holdings, if there is one: its walk is done,
    /// or its reap ended.
    fn drop_consumer(&mut self, instance: &str, consumer: Option<&str>, out: &mut BytesMut) {
        let Some(consumer) = consumer else {
            return;
        };
        let stream = held_stream(instance);
        let subject = format!("$JS.API.CONSUMER.DELETE.{stream}.{consumer}");
        (self.requests).send(out, (&subject, &[]), b"", Pending::Cleanup);
    }

    /// The relayer settled the check of a user that reap number `reap` handed it
    /// ([`Outcome::Reaped`]): the reap ends once its walk is done and this was the last. A reap dropped meanwhile (its process beats again) is not looked for.
    pub(super) fn reap_checked(&mut self, reap: u64, out: &mut BytesMut) {
        let found = self.reaps.iter_mut().find(|(_, r)| r.serial == reap);
        let Some((instance, reap)) = found else {
            return;
        };
        reap.checking = reap.checking.saturating_sub(1);
        if reap.finished() && self.ready {
            let instance = instance.clone();
            self.reaped_all(&instance, out);
        }
    }

    /// The walk over `instance`'s holdings is done and every user it found is checked:
    /// unless the process still answers on NATS ([`Pending::Alive`]: taken for dead, it
    /// may have written holdings past the walk's bound), its stream goes.
    fn reaped_all(&mut self, instance: &str, out: &mut BytesMut) {
        let Some(reap) = self.reaps.get_mut(instance).filter(|reap| !reap.pinged) else {
            return;
        };
        reap.pinged = true;
        let subject = process_subject(instance);
        let pending = Pending::Alive(instance.into());
        (self.requests).send(out, (&subject, &[]), b"", pending);
    }

    /// A reaped process that no longer answers: its stream goes (with its consumers),
    /// then its names ([`Pending::Deleted`]), and so does its reap.
    fn delete_reaped(&mut self, instance: &str, out: &mut BytesMut) {
        let Some(reap) = self.reaps.remove(instance) else {
            return;
        };
        info!(instance, "cluster: the holdings of a gone node are reaped");
        let subject = format!("$JS.API.STREAM.DELETE.{}", held_stream(instance));
        let pending = Pending::Deleted(instance.into(), reap.claim_seq);
        (self.requests).send(out, (&subject, &[]), b"", pending);
    }

    /// One step of the sweep: a process with holdings that is neither alive nor this one
    /// is reaped.
    fn swept(&mut self, status: Option<u16>, headers: &[u8], node_id: &[u8], out: &mut BytesMut) {
        let sweep = &mut self.sweep;
        sweep.asked = false;
        match status {
            Some(404) => {
                // Done: again later, from the start, for every node.
                let wait = if sweep.same_node {
                    SWEEP_AFTER
                } else {
                    SWEEP_EVERY
                };
                sweep.next = 1;
                sweep.at = Some(Instant::now() + wait);
                sweep.same_node = false;
                return;
            }
            Some(other) => return debug!("cluster: holdings sweep: status {other}"),
            None => {}
        }
        let Some((subject, seq)) = stored_at(headers) else {
            return;
        };
        sweep.next = seq + 1;
        if let Some(instance) = subject.strip_prefix(&holder_subject("")) {
            let gone = match sweep.same_node {
                true => node_id == self.node_id.as_bytes(),
                false => !self.alive.contains(instance),
            };
            let gone = gone && *instance != *self.instance;
            if gone && !self.reaps.contains_key(instance) {
                self.start_reap(instance, out);
            }
        }
        self.sweep_on(out);
    }

    fn sweep_on(&mut self, out: &mut BytesMut) {
        let sweep = &mut self.sweep;
        sweep.asked = true;
        let filter = holder_subject("*");
        let body = serde_json::json!({"seq": sweep.next, "next_by_subj": filter});
        let to = direct_get(REAPS);
        let body = body.to_string();
        (self.requests).send(out, (&to, &[]), body.as_bytes(), Pending::Sweep);
    }

    /// Purges `filter` from [`REAPS`]: all of it, or what is stored up to sequence
    /// `up_to`.
    fn purge_reaps(&mut self, filter: &str, up_to: Option<u64>, out: &mut BytesMut) {
        let body = match up_to {
            // JetStream purges below `seq`.
            Some(up_to) => serde_json::json!({ "filter": filter, "seq": up_to + 1 }),
            None => serde_json::json!({ "filter": filter }),
        };
        let body = body.to_string();
        let subject = format!("$JS.API.STREAM.PURGE.{REAPS}");
        self.requests
            .send(out, (&subject, &[]), body.as_bytes(), Pending::Cleanup);
    }

    /// Requests not answered by `now` are given up, and what they were for goes on: the
    /// streams' set-up, the reaps, and the sweep once it is due (`SWEEP_AFTER` after this
    /// node first held its id, `claimed`), with a look at this process's stream.
    pub(super) fn expire(
        &mut self,
        now: Instant,
        claimed: bool,
        out: &mut BytesMut,
    ) -> Vec<Outcome> {
        for pending in self.requests.late(now) {
            match pending {
                Pending::Setup(_) => self.setting_up = false,
                Pending::Held(user) => {
                    if let Some((since_ms, _)) = self.unacked.remove(&user) {
                        self.unwritten.insert(user, (true, since_ms));
                        self.ready = false; // written again, first
                    }
                }
                Pending::Claim(instance)
                | Pending::ClaimRead(instance)
                | Pending::Extent(instance)
                | Pending::ClaimsOf(instance) => {
                    if let Some(reap) = self.reaps.get_mut(&instance) {
                        reap.asked = false;
                    }
                }
                Pending::Consumer(instance) | Pending::Pull(instance) => {
                    let reap = self.reaps.get_mut(&instance);
                    let Some(walk) = reap.and_then(|reap| reap.walk.as_mut()) else {
                        continue;
                    };
                    // Unanswered: JetStream says nothing to a pull of a consumer it
                    // dropped (unpulled for a minute while the walk waited, say). A new
                    // consumer reads on from where the walk is.
                    let consumer = walk.consumer.take();
                    (walk.creating, walk.pull) = (false, None);
                    self.drop_consumer(&instance, consumer.as_deref(), out);
                }
                Pending::Sweep => self.sweep.asked = false,
                Pending::Alive(instance) => {
                    if let Some(reap) = self.reaps.get_mut(&instance) {
                        reap.pinged = false; // asked again
                    }
                }
                // A reaped process's names stay: the next sweep reaps it again.
                Pending::Deleted(..) | Pending::Cleanup => {}
            }
        }
        if claimed && self.sweep.at.is_none() {
            self.sweep.at = Some(now);
        }
        self.claimed = claimed;
        if !self.online {
            return Vec::new();
        }
        self.remake_at = self.remake_at.filter(|at| *at > now);
        if !self.streams_known() {
            if !self.setting_up && self.remake_at.is_none() {
                self.set_up_streams(out);
            }
            return Vec::new();
        }
        let moved = self.become_ready(out);
        if !self.ready {
            return moved;
        }
        self.go_on_all(out);
        let sweep = &self.sweep;
        if !sweep.asked && sweep.at.is_some_and(|at| at <= now) {
            if sweep.next == 1 && !sweep.same_node {
                // With each sweep: is this process's stream still its own, and is it
                // named (a reaper that took it for dead deletes the stream, then purges
                // its names up to its claim, which a process that never heard of the
                // deletion has not written again)?
                self.set_up(Stream::Held, out);
                self.name_process(out);
            }
            self.sweep_on(out);
        }
        moved
    }
}

/// The consumer, stream sequence and messages left of a consumer's delivery, from its
/// acknowledgement subject: `$JS.ACK.<stream>.<consumer>.<delivered>.<seq>.<consumer
/// seq>.<time>.<left>`, or with a domain and an account hash after `$JS.ACK` (9 tokens,
/// or 11 and more).
fn delivery_of(ack: &[u8]) -> Option<(&str, u64, u64)> {
    let ack = std::str::from_utf8(ack).ok()?;
    let mut tokens = [""; 12];
    let mut count = 0;
    for token in ack.split('.') {
        *tokens.get_mut(count)? = token;
        count += 1;
    }
    let at = match count {
        9 => 2,
        11 | 12 => 4,
        _ => return None,
    };
    let number = |i: usize| tokens[at + i].parse::<u64>().ok();
    Some((tokens[at + 1], number(3)?, number(6)?))
}

/// What the holdings tell the relayer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// A gone process held `user`: offline, unless someone holds the user. The relayer
    /// says when its check is settled ([`Holdings::reap_checked`]), with `reap`.
    Reaped { user: Arc<str>, reap: u64 },
    /// This process's holding of the user is kept: its changes can be asked about.
    Kept(Arc<str>),
    /// Writes go at once again: every user's holding not waiting on a write is kept.
    Ready,
    /// This process's stream of holdings was deleted (a reaper took the process for
    /// dead) and is made anew: every user it holds, or owes an offline, is to be written
    /// again ([`Holdings::changed`]).
    Lost,
}

/// The subject and sequence of a direct get's message, from its headers.
fn stored_at(headers: &[u8]) -> Option<(&str, u64)> {
    let subject = std::str::from_utf8(wire::header(headers, "Nats-Subject")?).ok()?;
    let seq = std::str::from_utf8(wire::header(headers, "Nats-Sequence")?).ok()?;
    Some((subject, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A direct get's answer: a message on `subject` at `seq`.
    fn found(subject: &str, seq: u64) -> Vec<u8> {
        format!("NATS/1.0\r\nNats-Subject: {subject}\r\nNats-Sequence: {seq}\r\n\r\n").into_bytes()
    }

    /// The text written since the last call.
    fn written(out: &mut BytesMut) -> String {
        String::from_utf8_lossy(&out.split()).into_owned()
    }

    /// Holdings of process `i1` of node `n`, its streams set up and its id held, and its
    /// first sweep (request 3) asked; with `swept`, the sweep found nothing (the next
    /// request is number 4).
    fn ready(out: &mut BytesMut, swept: bool) -> Holdings {
        let mut holdings = Holdings::new("_INBOX.x.", ("n", "i1"), 1);
        holdings.connected(out);
        let created = br#"{"config":{}}"#;
        assert!(holdings.answered(b"1", None, b"", created, out).is_empty());
        assert!(holdings.answered(b"2", None, b"", created, out).is_empty());
        let moved = holdings.expire(Instant::now(), true, out);
        assert_eq!(moved, [Outcome::Ready]);
        if swept {
            holdings.answered(b"3", Some(404), b"", b"", out);
        }
        written(out);
        holdings
    }

    #[test]
    fn a_holding_is_kept_once_acknowledged_and_nothing_is_written_before_the_claim() {
        let mut out = BytesMut::new();
        let mut holdings = Holdings::new("_INBOX.x.", ("n", "i1"), 1);
        holdings.changed("alice".into(), true, 5, &mut out);
        holdings.connected(&mut out);
        let creates = written(&mut out);
        assert!(
            creates.contains("$JS.API.STREAM.CREATE.CHAT_HOLDINGS_i1"),
            "{creates}"
        );
        assert!(
            creates.contains("$JS.API.STREAM.CREATE.CHAT_REAPS"),
            "{creates}"
        );
        for number in [b"1", b"2"] {
            let moved = holdings.answered(number, None, b"", b"{}", &mut out);
            assert!(moved.is_empty());
        }
        assert!(out.is_empty(), "not before the node holds its id");
        assert!(!holdings.kept("alice"));
        let moved = holdings.expire(Instant::now(), true, &mut out);
        assert_eq!(moved, [Outcome::Ready]);
        let text = written(&mut out);
        let holder = text.find("PUB chat.reaps.holder.i1 1\r\nn").expect(&text);
        let held = text
            .find("PUB chat.holdings.i1.alice _INBOX.x.r3")
            .expect(&text);
        assert!(holder < held, "the process is named first: {text}");
        assert!(!holdings.kept("alice"), "not acknowledged yet");
        let moved = holdings.answered(b"3", None, b"", br#"{"seq":2}"#, &mut out);
        assert_eq!(moved, [Outcome::Kept("alice".into())]);
        assert!(holdings.kept("alice") && holdings.kept("bob"));
        // A letting go goes without an answer; cut off, changes wait for the next
        // connection, and a holding unacknowledged is written again.
        holdings.changed("alice".into(), false, 9, &mut out);
        assert!(written(&mut out).contains("PUB chat.holdings.i1.alice 3\r\n0 9"));
        holdings.changed("bob".into(), true, 10, &mut out);
        holdings.disconnected();
        assert!(!holdings.kept("bob"));
        holdings.connected(&mut out);
        written(&mut out);
        holdings.answered(b"6", None, b"", b"{}", &mut out);
        holdings.answered(b"7", None, b"", b"{}", &mut out);
        holdings.expire(Instant::now(), true, &mut out);
        assert!(written(&mut out).contains("chat.holdings.i1.bob _INBOX.x.r8"));
    }

    /// Claims the reap of `i0` (request 4, stored at `claim_seq` in `CHAT_REAPS`), with
    /// its stream's last sequence `last_seq` (request 5) and no claims of its own
    /// (request 6): the walk's consumer (request 7) is `w1`, and its first pull is
    /// request 8.
    fn claimed_i0(holdings: &mut Holdings, (claim_seq, last_seq): (u64, u64), out: &mut BytesMut) {
        holdings.gone("i0", out);
        let claim = written(out);
        assert!(
            claim.starts_with("HPUB chat.reaps.reaper.i0 _INBOX.x.r4"),
            "{claim}"
        );
        assert!(
            claim.contains("Nats-Expected-Last-Subject-Sequence: 0"),
            "{claim}"
        );
        let stored = format!(r#"{{"seq":{claim_seq}}}"#);
        holdings.answered(b"4", None, b"", stored.as_bytes(), out);
        assert!(written(out).contains("PUB $JS.API.STREAM.INFO.CHAT_HOLDINGS_i0 _INBOX.x.r5"));
        let state = format!(r#"{{"state":{{"last_seq":{last_seq}}}}}"#);
        holdings.answered(b"5", None, b"", state.as_bytes(), out);
        let claims = written(out);
        assert!(
            claims.contains("DIRECT.GET.CHAT_REAPS _INBOX.x.r6"),
            "{claims}"
        );
        assert!(claims.contains(r#""next_by_subj":"chat.reaps.reaper.*""#));
        holdings.answered(b"6", Some(404), b"", b"", out);
        let create = written(out);
        assert!(
            create.contains("CONSUMER.CREATE.CHAT_HOLDINGS_i0 _INBOX.x.r7"),
            "{create}"
        );
        assert!(
            !create.contains("filter_subject"),
            "its own stream: {create}"
        );
        assert!(create.contains(r#""opt_start_seq":1"#), "{create}");
        holdings.answered(b"7", None, b"", br#"{"name":"w1"}"#, out);
        let pull = written(out);
        let expected = "PUB $JS.API.CONSUMER.MSG.NEXT.CHAT_HOLDINGS_i0.w1 _INBOX.x.r8";
        assert!(pull.starts_with(expected), "{pull}");
        assert!(pull.contains(r#"{"batch":1024,"no_wait":true}"#), "{pull}");
    }

    /// Consumer `w1`'s delivery of `subject` at `seq`, with `left` more after it.
    fn deliver(
        holdings: &mut Holdings,
        (subject, seq, left): (&str, u64, u64),
        value: &[u8],
        out: &mut BytesMut,
    ) -> Vec<Outcome> {
        let ack = format!("$JS.ACK.CHAT_HOLDINGS_i0.w1.1.{seq}.1.1700000000000000000.{left}");
        holdings.delivered(subject.as_bytes(), ack.as_bytes(), value, out)
    }

    #[test]
    fn a_gone_process_is_claimed_walked_up_to_its_streams_last_sequence_then_and_the_stream_deleted_once_its_users_are_checked(
    ) {
        let mut out = BytesMut::new();
        let mut holdings = ready(&mut out, true);
        claimed_i0(&mut holdings, (3, 9), &mut out);
        let alice = ("chat.holdings.i0.alice", 4, 2);
        let moved = deliver(&mut holdings, alice, b"1 5", &mut out);
        let alice_reaped = Outcome::Reaped {
            user: "alice".into(),
            reap: 1,
        };
        assert_eq!(moved, [alice_reaped]);
        let moved = deliver(&mut holdings, alice, b"1 5", &mut out);
        assert!(moved.is_empty(), "read already");
        // Bob, let go: nothing owed.
        let moved = deliver(
            &mut holdings,
            ("chat.holdings.i0.bob", 6, 1),
            b"0 7",
            &mut out,
        );
        assert!(moved.is_empty());
        assert!(written(&mut out).is_empty(), "the pull goes on");
        // Past the last sequence (9): written since (by a process counted dead that was
        // not), not the gone process's. The walk is done, and its consumer goes.
        let later = ("chat.holdings.i0.carol", 11, 0);
        assert!(deliver(&mut holdings, later, b"1 20", &mut out).is_empty());
        let text = written(&mut out);
        let delete = "PUB $JS.API.CONSUMER.DELETE.CHAT_HOLDINGS_i0.w1 _INBOX.x.r9 0";
        assert!(text.starts_with(delete), "{text}");
        assert!(
            !text.contains("STREAM.DELETE"),
            "alice's check is not settled: the holdings are the reap's record until it is"
        );
        holdings.answered(b"8", Some(408), b"", b"", &mut out);
        assert!(written(&mut out).is_empty(), "the pull was retired");
        holdings.reap_checked(2, &mut out);
        assert!(written(&mut out).is_empty(), "another reap's check");
        holdings.reap_checked(1, &mut out);
        let ping = written(&mut out);
        assert_eq!(ping, "PUB chat.process.i0 _INBOX.x.r10 0\r\n\r\n", "alive?");
        holdings.answered(b"10", Some(503), b"", b"", &mut out); // nobody answers
        let delete = written(&mut out);
        assert!(
            delete.starts_with("PUB $JS.API.STREAM.DELETE.CHAT_HOLDINGS_i0 _INBOX.x.r11 0"),
            "{delete}"
        );
        assert!(!delete.contains("PURGE"), "its names go once it is deleted");
        holdings.answered(b"11", None, b"", br#"{"success":true}"#, &mut out);
        let purge = written(&mut out);
        // Up to the claim (at 3): the process, had it lived, names itself again after.
        let named =
            "PURGE.CHAT_REAPS _INBOX.x.r12 36\r\n{\"filter\":\"chat.reaps.*.i0\",\"seq\":4}";
        assert!(purge.contains(named), "{purge}");
    }

    #[test]
    fn a_gone_process_that_still_answers_keeps_its_stream_and_is_left_to_be_reaped_again() {
        let mut out = BytesMut::new();
        let mut holdings = ready(&mut out, true);
        claimed_i0(&mut holdings, (3, 9), &mut out);
        let moved = deliver(
            &mut holdings,
            ("chat.holdings.i0.alice", 9, 0),
            b"1 5",
            &mut out,
        );
        assert_eq!(moved.len(), 1);
        written(&mut out);
        holdings.reap_checked(1, &mut out);
        assert!(written(&mut out).starts_with("PUB chat.process.i0 _INBOX.x.r"));
        // Taken for dead, it lives: what it wrote past the walk's bound stays.
        let number = holdings.requests.last_number().to_string(); // the ping
        holdings.answered(number.as_bytes(), None, b"", b"alive", &mut out);
        let text = written(&mut out);
        assert!(!text.contains("STREAM.DELETE"), "{text}");
        assert!(
            text.contains(r#"{"filter":"chat.reaps.reaper.i0"}"#),
            "its claim goes: {text}"
        );
        assert!(holdings.reaps.is_empty());
    }

    #[test]
    fn a_process_whose_stream_was_deleted_makes_it_anew_and_has_its_holdings_written_again() {
        let mut out = BytesMut::new();
        let mut holdings = Holdings::new("_INBOX.x.", ("n", "i1"), 1);
        holdings.connected(&mut out);
        let created = br#"{"config":{},"created":"2026-12-07T10:00:00Z"}"#;
        assert!(holdings
            .answered(b"1", None, b"", created, &mut out)
            .is_empty());
        holdings.answered(b"2", None, b"", b"{}", &mut out);
        let now = Instant::now();
        assert_eq!(holdings.expire(now, true, &mut out), [Outcome::Ready]);
        holdings.answered(b"3", Some(404), b"", b"", &mut out); // the first sweep
        holdings.changed("alice".into(), true, 5, &mut out);
        written(&mut out);
        // A reaper took this process for dead and deleted its stream: the next write
        // hears "no responders", and the stream is set up again before any write.
        assert!(holdings
            .answered(b"4", Some(503), b"", b"", &mut out)
            .is_empty());
        assert!(!holdings.kept("alice"));
        holdings.expire(now, true, &mut out);
        let text = written(&mut out);
        let create = "PUB $JS.API.STREAM.CREATE.CHAT_HOLDINGS_i1 _INBOX.x.r5";
        assert!(text.starts_with(create), "{text}");
        assert!(!text.contains("chat.holdings.i1.alice"), "{text}");
        // Made anew, at another time: what it held is lost, and written again.
        let anew = br#"{"config":{},"created":"2026-12-07T10:05:00Z"}"#;
        let moved = holdings.answered(b"5", None, b"", anew, &mut out);
        assert_eq!(moved, [Outcome::Lost, Outcome::Ready]);
        let text = written(&mut out);
        let named = text.find("PUB chat.reaps.holder.i1 1\r\nn").expect(&text);
        let alice = text
            .find("PUB chat.holdings.i1.alice _INBOX.x.r6")
            .expect(&text);
        assert!(named < alice, "named again first: {text}");
        let moved = holdings.answered(b"6", None, b"", br#"{"seq":1}"#, &mut out);
        assert_eq!(moved, [Outcome::Kept("alice".into())]);
        // Each sweep looks again; the same stream says nothing.
        holdings.expire(Instant::now() + SWEEP_AFTER, true, &mut out);
        let text = written(&mut out);
        assert!(
            text.starts_with(create.replace("r5", "r7").as_str()),
            "{text}"
        );
        assert!(text.contains("PUB chat.reaps.holder.i1 1\r\nn"), "{text}");
        assert!(text.contains("DIRECT.GET.CHAT_REAPS _INBOX.x.r8"), "{text}");
        assert!(holdings
            .answered(b"7", None, b"", anew, &mut out)
            .is_empty());
        // Deleted and made anew by the next look, writes going on meanwhile: named and
        // written again all the same.
        holdings.answered(b"8", Some(404), b"", b"", &mut out);
        holdings.expire(Instant::now() + SWEEP_AFTER + SWEEP_EVERY, true, &mut out);
        written(&mut out);
        let later = br#"{"config":{},"created":"2026-12-07T10:10:00Z"}"#;
        let moved = holdings.answered(b"9", None, b"", later, &mut out);
        assert_eq!(moved, [Outcome::Lost, Outcome::Ready]);
        assert!(written(&mut out).contains("PUB chat.reaps.holder.i1 1\r\nn"));
    }

    #[test]
    fn a_gone_process_without_a_stream_is_reaped_without_a_walk() {
        let mut out = BytesMut::new();
        let mut holdings = ready(&mut out, true);
        holdings.gone("i0", &mut out);
        holdings.answered(b"4", None, b"", br#"{"seq":3}"#, &mut out);
        let missing =
            br#"{"error":{"code":404,"err_code":10059,"description":"stream not found"}}"#;
        holdings.answered(b"5", None, b"", missing, &mut out);
        holdings.answered(b"6", Some(404), b"", b"", &mut out); // no claims of its own
        let text = written(&mut out);
        assert!(!text.contains("CONSUMER.CREATE"), "{text}");
        assert!(text.contains("PUB chat.process.i0 _INBOX.x.r7 0"), "{text}");
        holdings.answered(b"7", Some(503), b"", b"", &mut out);
        let delete = "PUB $JS.API.STREAM.DELETE.CHAT_HOLDINGS_i0 _INBOX.x.r8 0";
        assert!(written(&mut out).contains(delete));
        // Not there (a reaper deleted it and died before its names went): they go now.
        holdings.answered(b"8", None, b"", missing, &mut out);
        assert!(written(&mut out).contains("PURGE.CHAT_REAPS _INBOX.x.r9"));
        assert!(holdings.reaps.is_empty());
    }

    #[test]
    fn a_stream_refused_for_subjects_another_takes_is_not_counted_set_up() {
        let mut out = BytesMut::new();
        let mut holdings = Holdings::new("_INBOX.x.", ("n", "i1"), 1);
        holdings.connected(&mut out);
        written(&mut out);
        let overlap = br#"{"error":{"code":400,"err_code":10065,"description":"subjects overlap with an existing stream"}}"#;
        holdings.answered(b"1", None, b"", overlap, &mut out);
        holdings.answered(b"2", None, b"", b"{}", &mut out);
        assert!(holdings.overlap_said);
        assert!(holdings.expire(Instant::now(), true, &mut out).is_empty());
        let again = written(&mut out);
        assert!(
            again.contains("STREAM.CREATE.CHAT_HOLDINGS_i1 _INBOX.x.r3"),
            "{again}"
        );
        assert!(
            !again.contains("PUB chat.reaps.holder"),
            "not ready: {again}"
        );
    }

    #[test]
    fn a_walk_pulls_again_until_nothing_is_left_and_after_a_cut_reads_on_with_a_new_consumer() {
        let mut out = BytesMut::new();
        let mut holdings = ready(&mut out, true);
        claimed_i0(&mut holdings, (3, 9), &mut out);
        deliver(
            &mut holdings,
            ("chat.holdings.i0.alice", 4, 3),
            b"1 5",
            &mut out,
        );
        // Fewer came than asked (the rest was written meanwhile): pulled again.
        holdings.answered(b"8", Some(408), b"", b"", &mut out);
        assert!(written(&mut out).contains("MSG.NEXT.CHAT_HOLDINGS_i0.w1 _INBOX.x.r9"));
        // Cut off: the consumer goes with the connection; back, a new one reads on
        // after alice.
        holdings.disconnected();
        holdings.connected(&mut out);
        holdings.answered(b"10", None, b"", b"{}", &mut out);
        holdings.answered(b"11", None, b"", b"{}", &mut out);
        holdings.expire(Instant::now(), true, &mut out);
        let text = written(&mut out);
        assert!(text.contains("CONSUMER.CREATE.CHAT_HOLDINGS_i0"), "{text}");
        assert!(text.contains(r#""opt_start_seq":5"#), "{text}");
        let number = text
            .split("CONSUMER.CREATE.CHAT_HOLDINGS_i0 _INBOX.x.r")
            .nth(1);
        let number = number.and_then(|t| t.split(' ').next()).expect(&text);
        holdings.answered(number.as_bytes(), None, b"", br#"{"name":"w2"}"#, &mut out);
        let pull = written(&mut out);
        assert!(pull.contains("MSG.NEXT.CHAT_HOLDINGS_i0.w2"), "{pull}");
        // A delivery of the consumer before the cut is not the walk's any more.
        let old = deliver(
            &mut holdings,
            ("chat.holdings.i0.bob", 6, 0),
            b"1 5",
            &mut out,
        );
        assert!(old.is_empty());
        // Nothing left: the walk is done.
        let number = pull
            .split("_INBOX.x.r")
            .nth(1)
            .and_then(|t| t.split(' ').next());
        holdings.answered(
            number.expect(&pull).as_bytes(),
            Some(404),
            b"",
            b"",
            &mut out,
        );
        let text = written(&mut out);
        assert!(
            text.contains("CONSUMER.DELETE.CHAT_HOLDINGS_i0.w2"),
            "{text}"
        );
        holdings.reap_checked(1, &mut out);
        assert!(written(&mut out).contains("PUB chat.process.i0 "), "alive?");
    }

    #[test]
    fn a_pull_that_brought_all_it_asked_for_is_followed_by_the_next() {
        let mut out = BytesMut::new();
        let mut holdings = ready(&mut out, true);
        claimed_i0(&mut holdings, (3, 5000), &mut out);
        let batch = PULL_BATCH as u64;
        for seq in 10..10 + batch {
            let user = format!("chat.holdings.i0.u{seq}");
            let moved = deliver(&mut holdings, (&user, seq, 5), b"0 1", &mut out);
            assert!(moved.is_empty(), "let go: nothing owed");
            let text = written(&mut out);
            match seq + 1 - 10 < batch {
                true => assert!(text.is_empty(), "{seq}: {text}"),
                false => assert!(text.contains("MSG.NEXT.CHAT_HOLDINGS_i0.w1 _INBOX.x.r9")),
            }
        }
        // The first pull ended without a status: none is waited for. The second is not
        // answered (JetStream dropped the consumer): a new one reads on from the walk.
        holdings.expire(Instant::now() + Duration::from_secs(6), true, &mut out);
        let text = written(&mut out);
        assert!(
            text.contains("CONSUMER.DELETE.CHAT_HOLDINGS_i0.w1"),
            "{text}"
        );
        let start = format!(r#""opt_start_seq":{}"#, 10 + batch);
        assert!(text.contains(&start), "{text}");
    }

    #[test]
    fn a_delivery_is_read_from_either_form_of_its_acknowledgement_subject() {
        let old = b"$JS.ACK.CHAT_HOLDINGS_i0.w1.1.42.7.1700000000000000000.3";
        assert_eq!(delivery_of(old), Some(("w1", 42, 3)));
        let new = b"$JS.ACK.hub.ACCHASH.CHAT_HOLDINGS_i0.w1.1.42.7.1700000000000000000.3.tok";
        assert_eq!(delivery_of(new), Some(("w1", 42, 3)));
        assert_eq!(delivery_of(b"$JS.ACK.CHAT_HOLDINGS_i0.w1.1.x.7.1.3"), None);
        assert_eq!(delivery_of(b"$JS.ACK.too.short"), None);
    }

    #[test]
    fn the_claims_a_gone_process_made_are_read_up_to_its_reaps_claim() {
        let mut out = BytesMut::new();
        let mut holdings = ready(&mut out, true);
        holdings.gone("i0", &mut out);
        holdings.answered(b"4", None, b"", br#"{"seq":3}"#, &mut out);
        holdings.answered(b"5", None, b"", br#"{"state":{"last_seq":900}}"#, &mut out);
        written(&mut out);
        // i0 claimed i5's reap before the claim on i0 (3), and i6's after it: i0 was
        // counted dead while it was not, and its later claims are its own.
        let before = found("chat.reaps.reaper.i5", 2);
        holdings.answered(b"6", None, &before, b"i0", &mut out);
        let text = written(&mut out);
        assert!(
            text.contains("HPUB chat.reaps.reaper.i5"),
            "taken over: {text}"
        );
        assert!(text.contains(r#"{"next_by_subj":"chat.reaps.reaper.*","seq":3}"#));
        let after = found("chat.reaps.reaper.i6", 4);
        holdings.answered(b"7", None, &after, b"i0", &mut out);
        let text = written(&mut out);
        assert!(!text.contains("chat.reaps.reaper.i6"), "{text}");
        assert!(
            text.contains("CONSUMER.CREATE.CHAT_HOLDINGS_i0"),
            "the walk starts: {text}"
        );
    }

    #[test]
    fn a_walk_waits_while_the_events_webhook_is_behind() {
        let mut out = BytesMut::new();
        let mut holdings = ready(&mut out, true);
        claimed_i0(&mut holdings, (10, 9), &mut out);
        holdings.pace(true);
        let alice = ("chat.holdings.i0.alice", 4, 5);
        let moved = deliver(&mut holdings, alice, b"1 5", &mut out);
        assert_eq!(moved.len(), 1, "what was read is handed on");
        holdings.answered(b"8", Some(408), b"", b"", &mut out);
        holdings.expire(Instant::now(), true, &mut out);
        assert!(!written(&mut out).contains("MSG.NEXT"), "no more is read");
        holdings.pace(false);
        holdings.expire(Instant::now(), true, &mut out);
        let pulls = written(&mut out);
        assert_eq!(pulls.matches("MSG.NEXT").count(), 1, "{pulls}");
    }

    #[test]
    fn a_claim_of_a_live_reaper_is_left_to_it_and_a_gone_ones_is_taken_over() {
        let mut out = BytesMut::new();
        let mut holdings = ready(&mut out, true);
        holdings.joined("i2", &mut out);
        written(&mut out);
        let refused = br#"{"error":{"err_code":10071,"description":"wrong last sequence"}}"#;
        // i0's reap is claimed by i2, alive: left to it.
        holdings.gone("i0", &mut out);
        holdings.answered(b"4", None, b"", refused, &mut out);
        let read = written(&mut out);
        assert!(read.contains("DIRECT.GET.CHAT_REAPS"), "{read}");
        assert!(read.contains(r#"{"last_by_subj":"chat.reaps.reaper.i0"}"#));
        let claim = found("chat.reaps.reaper.i0", 8);
        holdings.answered(b"5", None, &claim, b"i2", &mut out);
        assert!(out.is_empty() && holdings.reaps.is_empty());
        // i3's reap is claimed by i4, gone: taken over, expecting that claim.
        holdings.gone("i3", &mut out);
        holdings.answered(b"6", None, b"", refused, &mut out);
        written(&mut out);
        let claim = found("chat.reaps.reaper.i3", 9);
        holdings.answered(b"7", None, &claim, b"i4", &mut out);
        let again = written(&mut out);
        assert!(
            again.contains("Nats-Expected-Last-Subject-Sequence: 9"),
            "{again}"
        );
        // And a node counted dead that beats again is reaped no further.
        holdings.joined("i3", &mut out);
        assert!(holdings.reaps.is_empty());
    }

    /// The number of the direct get in `text` (its reply subject's tail).
    fn get_number(text: &str) -> Vec<u8> {
        let after = text.split("DIRECT.GET.CHAT_REAPS _INBOX.x.r").nth(1);
        let number = after.and_then(|t| t.split(' ').next());
        number.expect(text).as_bytes().to_vec()
    }

    #[test]
    fn a_starting_node_reaps_its_ids_earlier_processes_first_and_later_any_not_alive() {
        let mut out = BytesMut::new();
        let mut holdings = ready(&mut out, false);
        // The first sweep (request 3) takes only this node id's earlier processes.
        let earlier = found("chat.reaps.holder.i0", 3);
        holdings.answered(b"3", None, &earlier, b"n", &mut out);
        let other_node = found("chat.reaps.holder.i7", 4);
        holdings.answered(b"5", None, &other_node, b"m", &mut out);
        let text = written(&mut out);
        assert!(text.contains("HPUB chat.reaps.reaper.i0"), "{text}");
        assert!(!text.contains("chat.reaps.reaper.i7"), "not yet: {text}");
        let own = found("chat.reaps.holder.i1", 5);
        holdings.answered(b"6", None, &own, b"n", &mut out);
        holdings.answered(b"7", Some(404), b"", b"", &mut out);
        assert!(!holdings.sweep.same_node);
        // Then, once membership has had time to hear every live node: i7, not alive,
        // is reaped too, and i2, alive, is not.
        holdings.joined("i2", &mut out);
        written(&mut out);
        holdings.expire(Instant::now() + SWEEP_AFTER, true, &mut out);
        let number = get_number(&written(&mut out));
        let alive = found("chat.reaps.holder.i2", 4);
        holdings.answered(&number, None, &alive, b"m", &mut out);
        let text = written(&mut out);
        assert!(!text.contains("chat.reaps.reaper.i2"), "{text}");
        holdings.answered(&get_number(&text), None, &other_node, b"m", &mut out);
        assert!(written(&mut out).contains("HPUB chat.reaps.reaper.i7"));
    }
}
