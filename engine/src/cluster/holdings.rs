//! The users each node holds, kept in JetStream while the events webhook is on, so that
//! a node that dies (or leaves with users still in their grace) does not leave them
//! online for ever in the backend that hears the events ([`super::presence_events`]).
//!
//! Stream `CHAT_HELD`, one message a subject:
//! - `chat.held.<instance>.<user>`: `1 <since ms>` while the process holds the user (or
//!   owes the user's `user_offline`), `0 <at ms>` once the offline is settled. A `1` is
//!   a request whose acknowledgement says the holding is kept: only then does the
//!   relayer ask whether to report the user online, or answer that it holds the user. A `0` goes without an answer (lost, it only makes a reaper ask about
//!   the user again). What changes while NATS is away, or before the stream is known, is
//!   written when it is, the latest change of each user.
//!
//! Stream `CHAT_REAPS`, small (a few messages a process), so that reading it never scans
//! the million holdings of `CHAT_HELD` (such a scan held up the reading node's NATS
//! connection for seconds):
//! - `chat.reaps.holder.<instance>`: the node id of a process that has written holdings,
//!   so that one started later finds the processes that died while nobody was there to
//!   reap them (a one-node cluster restarted, or the node key aged out).
//! - `chat.reaps.reaper.<instance>`: who reaps a gone process, written with a
//!   compare-and-set (`Nats-Expected-Last-Subject-Sequence`): of the nodes that hear it
//!   gone, one reaps. A node finding the claim taken reads it: a reaper that is itself
//!   gone is taken over.
//!
//! Reaping a gone process: once claimed, `CHAT_HELD`'s last sequence bounds the walk;
//! walk its `chat.held.<instance>.>` by direct gets, in [`WALKERS`] stretches of the
//! stream at once once the first holding is found; each user
//! it still held goes to the relayer, which asks whether anyone holds the user and, if
//! nobody answers, reports `user_offline`. Once the walk is done and every such check is
//! settled ([`Holdings::reap_checked`]), the process's subjects are purged. Until then
//! they are the reap's record: a reaper that dies first leaves its claim, and the node
//! that reaps it takes the unfinished reap over and walks it again (a user reported
//! twice at worst). A process counted dead that beats again is not reaped further.
//!
//! Every node also sweeps `chat.holder.*`. As soon as it holds its node id, it reaps
//! every earlier process of that id (a node id is one live process's: a process that
//! died in a crash loop, before anyone reaped its predecessor). Then, [`SWEEP_AFTER`]
//! after it holds its id and every [`SWEEP_EVERY`], it reaps each process there that is
//! neither alive nor itself: those that died while no node was up, or whose reaper died
//! too.
//!
//! No I/O: requests go into the relayer's output, and answers come back through
//! [`Holdings::answered`].

use std::{sync::Arc, time::Duration};

use bytes::BytesMut;
use hashbrown::{HashMap, HashSet};
use serde_json::Value;
use tokio::time::Instant;
use tracing::{debug, info};

use super::{
    members::DEAD_AFTER,
    relay::{from_subject_token, subject_token},
    requests::{self, direct_get, Requests, STREAM_DIFFERS, WRONG_LAST_SEQUENCE},
    wire,
};

/// The stream of holdings, and the stream of the processes that wrote them and of who
/// reaps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Held,
    Reaps,
}

impl Stream {
    const BOTH: [Stream; 2] = [Stream::Held, Stream::Reaps];

    fn name(self) -> &'static str {
        match self {
            Stream::Held => "CHAT_HELD",
            Stream::Reaps => "CHAT_REAPS",
        }
    }

    fn subjects(self) -> &'static [&'static str] {
        match self {
            Stream::Held => &["chat.held.>"],
            Stream::Reaps => &["chat.reaps.holder.*", "chat.reaps.reaper.*"],
        }
    }
}

/// Where process `instance` names its node id (in [`Stream::Reaps`]).
fn holder_subject(instance: &str) -> String {
    format!("chat.reaps.holder.{instance}")
}

/// Where the reaper of process `instance` claims it (in [`Stream::Reaps`]).
fn reaper_subject(instance: &str) -> String {
    format!("chat.reaps.reaper.{instance}")
}
/// The stretches a reap's walk reads at once: a direct get waits a round trip to
/// JetStream, and a dead node may have held a million users. 8 reaped 19,000 users a
/// second on the 2-core VM, 32 28,600 and 128 33,200, nats-server's CPU by then the
/// bound (benches/RESULTS.md); a small reap pays a get a stretch, 128 gets (about 5 ms
/// of nats-server, estimated from the 38 µs a reaped user cost then, not measured).
const WALKERS: u64 = 128;
/// How long after it first holds its id a node looks for processes that nobody reaped:
/// long enough for the membership watch to have heard every live node and counted the
/// silent ones dead.
const SWEEP_AFTER: Duration = Duration::from_secs(DEAD_AFTER.as_secs() + 2);
/// How often a node looks again.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

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
    /// `CHAT_HELD`'s last sequence, once the reap is claimed: the walk's bound.
    Extent(Box<str>),
    /// The next claim to reap, for the claims a gone process made itself.
    ClaimsOf(Box<str>),
    /// The next holding of a gone process in one stretch of the stream.
    Walk(Box<str>, usize),
    /// The next process that has written holdings, for the sweep.
    Sweep,
    /// A purge; its answer changes nothing.
    Purge,
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
    /// One past `CHAT_HELD`'s last sequence once the reap is claimed (`u64::MAX` until
    /// it is read): what the gone process wrote came before, and the walk reads no
    /// further (a process counted dead that was not may still write).
    upto: u64,
    /// A request of the claim, or of the claims read, is under way.
    asked: bool,
    /// The walk over the gone process's holdings, once claimed: one stretch of the
    /// stream up to its first holding, then [`WALKERS`] stretches of the rest, read at
    /// once.
    walk: Vec<Stretch>,
    /// The newest holding found: the purge at the end takes everything before it.
    newest: u64,
    /// This reap's number, in the users it hands the relayer ([`Outcome::Reaped`]).
    serial: u64,
    /// The users handed to the relayer whose checks have not settled yet: the reap is
    /// purged once its walk is done and this is 0.
    checking: usize,
}

/// Part of a reap's walk: the gone process's holdings from `next` up to (not including)
/// `end`, one direct get after another.
#[derive(Debug)]
struct Stretch {
    next: u64,
    end: u64,
    asked: bool,
}

impl Stretch {
    /// Read to its end.
    fn done(&self) -> bool {
        self.next >= self.end
    }
}

impl Reap {
    /// Whether the walk is over and every user it found is checked: time to purge.
    fn finished(&self) -> bool {
        !self.walk.is_empty() && self.walk.iter().all(Stretch::done) && self.checking == 0
    }

    /// Whether nothing of its current step is under way.
    fn idle(&self) -> bool {
        match self.walk.is_empty() {
            true => !self.asked,
            false => self.walk.iter().any(|s| !s.asked && !s.done()),
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
        let subject = format!("chat.held.{}.{}", self.instance, subject_token(&user));
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

    /// Whether both streams are known on this connection.
    fn streams_known(&self) -> bool {
        self.streams_known.iter().all(|known| *known)
    }

    /// Creates the streams not known yet (or learns they are there).
    fn set_up_streams(&mut self, out: &mut BytesMut) {
        self.setting_up = true;
        for stream in Stream::BOTH {
            if self.streams_known[stream as usize] {
                continue;
            }
            let config = serde_json::json!({
                "name": stream.name(),
                "subjects": stream.subjects(),
                "storage": "file",
                "retention": "limits",
                "max_msgs_per_subject": 1,
                "discard": "old",
                "allow_direct": true,
                "num_replicas": self.replicas,
            });
            let subject = format!("$JS.API.STREAM.CREATE.{}", stream.name());
            let body = config.to_string();
            (self.requests).send(
                out,
                (&subject, &[]),
                body.as_bytes(),
                Pending::Setup(stream),
            );
        }
    }

    /// Cut off from NATS: nothing under way will be answered.
    pub(super) fn disconnected(&mut self) {
        for (user, (since_ms, _)) in self.unacked.drain() {
            self.unwritten.insert(user, (true, since_ms));
        }
        (self.online, self.setting_up) = (false, false);
        (self.streams_known, self.ready) = ([false; 2], false);
        self.requests.drain();
        for reap in self.reaps.values_mut() {
            reap.asked = false;
            reap.walk
                .iter_mut()
                .for_each(|stretch| stretch.asked = false);
        }
        self.sweep.asked = false;
    }

    /// Process `instance` beats: alive, and not reaped (any more).
    pub(super) fn joined(&mut self, instance: &str, out: &mut BytesMut) {
        self.alive.insert(instance.into());
        if let Some(reap) = self.reaps.remove(instance) {
            info!(
                instance,
                "cluster: a node counted dead beats again: not reaped"
            );
            if reap.claimed && self.ready {
                // Its next death is anyone's to reap again.
                self.purge(Stream::Reaps, &reaper_subject(instance), None, out);
            }
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
            walk: Vec::new(),
            newest: 0,
            serial: self.reaps_started,
            checking: 0,
        };
        self.reaps.insert(instance.into(), reap);
        if self.ready {
            self.go_on(instance, out);
        }
    }

    /// The next requests of the reap of `instance`: its claim, `CHAT_HELD`'s last
    /// sequence, the next claim it made itself, or the next get of each stretch of its
    /// walk with none under way (unless the walks wait, [`Holdings::pace`]).
    fn go_on(&mut self, instance: &str, out: &mut BytesMut) {
        let Some(reap) = self.reaps.get_mut(instance) else {
            return;
        };
        let bounded = reap.upto != u64::MAX;
        if reap.claimed && bounded && reap.claims_next.is_none() {
            if self.walks_wait {
                return;
            }
            if reap.walk.is_empty() {
                let whole = Stretch {
                    next: 1,
                    end: reap.upto,
                    asked: false,
                };
                reap.walk.push(whole);
            }
            let filter = format!("chat.held.{instance}.>");
            for (index, stretch) in reap.walk.iter_mut().enumerate() {
                if stretch.asked || stretch.done() {
                    continue;
                }
                stretch.asked = true;
                let body = serde_json::json!({"seq": stretch.next, "next_by_subj": filter});
                let pending = Pending::Walk(instance.into(), index);
                let to = direct_get(Stream::Held.name());
                let body = body.to_string();
                self.requests
                    .send(out, (&to, &[]), body.as_bytes(), pending);
            }
            return;
        }
        reap.asked = true;
        if reap.claimed && !bounded {
            let subject = format!("$JS.API.STREAM.INFO.{}", Stream::Held.name());
            let pending = Pending::Extent(instance.into());
            return self.requests.send(out, (&subject, &[]), b"", pending);
        }
        if let Some(next) = reap.claims_next.filter(|_| reap.claimed) {
            let filter = reaper_subject("*");
            let body = serde_json::json!({"seq": next, "next_by_subj": filter});
            let pending = Pending::ClaimsOf(instance.into());
            let to = direct_get(Stream::Reaps.name());
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
                        self.ready = false;
                        Vec::new()
                    }
                }
            }
            Pending::Setup(stream) => {
                self.setting_up = false;
                let answer = answer();
                let error = requests::api_error(status, &answer);
                let differs = answer["error"]["err_code"].as_u64() == Some(STREAM_DIFFERS);
                match error {
                    Some(e) if !differs => {
                        debug!("cluster: stream {} not set up: {e}", stream.name());
                        Vec::new()
                    }
                    _ => {
                        self.streams_known[stream as usize] = true;
                        self.become_ready(out)
                    }
                }
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
                        let to = direct_get(Stream::Reaps.name());
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
                match (requests::api_error(status, &answer), last) {
                    (None, Some(last)) => {
                        reap.upto = last + 1;
                        self.go_on(&instance, out);
                    }
                    (e, _) => debug!(%instance, "cluster: reap not bounded: {e:?}"), // again
                }
                Vec::new()
            }
            Pending::ClaimsOf(instance) => {
                self.claims_of(&instance, status, headers, payload, out);
                Vec::new()
            }
            Pending::Walk(instance, stretch) => {
                let answer = (status, headers, payload);
                self.walked(&instance, stretch, answer, out)
            }
            Pending::Sweep => {
                self.swept(status, headers, payload, out);
                Vec::new()
            }
            Pending::Purge => Vec::new(),
        }
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
        let subject = holder_subject(&self.instance);
        wire::publish(out, subject.as_bytes(), None, self.node_id.as_bytes());
        let mut unwritten: Vec<(Arc<str>, (bool, u64))> = self.unwritten.drain().collect();
        unwritten.sort_unstable();
        for (user, (held, at_ms)) in unwritten {
            self.write(user, held, at_ms, out);
        }
        self.go_on_all(out);
        vec![Outcome::Ready]
    }

    /// Sends the next request of every reap with none under way (in instance order).
    /// Reaps finished while writes could not go (NATS away) are purged first.
    fn go_on_all(&mut self, out: &mut BytesMut) {
        for instance in self.reaps_that(Reap::finished) {
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

    /// One step of the walk over `instance`'s holdings, in its stretch `index`. While the
    /// walk is one stretch (from the stream's start, or a rest too short to split), a
    /// holding found splits the rest of it into [`WALKERS`] stretches.
    fn walked(
        &mut self,
        instance: &str,
        index: usize,
        (status, headers, payload): (Option<u16>, &[u8], &[u8]),
        out: &mut BytesMut,
    ) -> Vec<Outcome> {
        let Some(reap) = self.reaps.get_mut(instance) else {
            return Vec::new(); // beats again
        };
        let Some(stretch) = reap.walk.get_mut(index) else {
            return Vec::new();
        };
        stretch.asked = false;
        let found = stored_at(headers).filter(|_| status.is_none());
        let mut user = None;
        match (status, found) {
            (Some(404), _) => stretch.next = stretch.end,
            (Some(other), _) => debug!(instance, "cluster: reap walk: status {other}"), // again
            (None, Some((_, seq))) if seq >= stretch.end => stretch.next = stretch.end,
            (None, Some((subject, seq))) => {
                stretch.next = seq + 1;
                reap.newest = reap.newest.max(seq);
                let prefix = format!("chat.held.{instance}.");
                let name = subject.strip_prefix(&prefix).and_then(from_subject_token);
                let still_held = payload.first() == Some(&b'1');
                user = name.filter(|_| still_held).map(|user| Outcome::Reaped {
                    user: user.into(),
                    reap: reap.serial,
                });
                reap.checking += usize::from(user.is_some());
                // The walk stays whole once nothing is left of it: an empty walk is
                // one not started.
                if reap.walk.len() == 1 && seq + 1 < reap.upto {
                    reap.walk = split(seq + 1, reap.upto);
                }
            }
            (None, None) => debug!(
                instance,
                "cluster: reap walk: an answer without its subject"
            ),
        }
        if reap.finished() {
            self.reaped_all(instance, out);
        } else {
            self.go_on(instance, out);
        }
        user.into_iter().collect()
    }

    /// The relayer settled the check of a user that reap number `reap` handed it
    /// ([`Outcome::Reaped`]): the reap is purged once its walk is done and this was the
    /// last. A reap dropped meanwhile (its process beats again) is not looked for.
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
    /// its subjects go, and so does its reap.
    fn reaped_all(&mut self, instance: &str, out: &mut BytesMut) {
        let Some(reap) = self.reaps.remove(instance) else {
            return;
        };
        info!(instance, "cluster: the holdings of a gone node are reaped");
        let held = format!("chat.held.{instance}.>");
        self.purge(Stream::Held, &held, Some(reap.newest + 1), out);
        let named = format!("chat.reaps.*.{instance}");
        self.purge(Stream::Reaps, &named, None, out);
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
        let to = direct_get(Stream::Reaps.name());
        let body = body.to_string();
        (self.requests).send(out, (&to, &[]), body.as_bytes(), Pending::Sweep);
    }

    /// Purges `filter` from `stream` (below sequence `below`, if given).
    fn purge(&mut self, stream: Stream, filter: &str, below: Option<u64>, out: &mut BytesMut) {
        let mut body = serde_json::json!({ "filter": filter });
        if let Some(below) = below {
            body["seq"] = below.into();
        }
        let subject = format!("$JS.API.STREAM.PURGE.{}", stream.name());
        let body = body.to_string();
        self.requests
            .send(out, (&subject, &[]), body.as_bytes(), Pending::Purge);
    }

    /// Requests not answered by `now` are given up, and what they were for goes on: the
    /// stream's set-up, the reaps, and the sweep once it is due (`SWEEP_AFTER` after this
    /// node first held its id, `claimed`).
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
                Pending::Walk(instance, index) => {
                    let reap = self.reaps.get_mut(&instance);
                    if let Some(stretch) = reap.and_then(|reap| reap.walk.get_mut(index)) {
                        stretch.asked = false;
                    }
                }
                Pending::Sweep => self.sweep.asked = false,
                Pending::Purge => {}
            }
        }
        if claimed && self.sweep.at.is_none() {
            self.sweep.at = Some(now);
        }
        self.claimed = claimed;
        if !self.online {
            return Vec::new();
        }
        if !self.streams_known() {
            if !self.setting_up {
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
            self.sweep_on(out);
        }
        moved
    }
}

/// The sequences from `start` up to (not including) `end`, in [`WALKERS`] stretches.
fn split(start: u64, end: u64) -> Vec<Stretch> {
    let step = end.saturating_sub(start).div_ceil(WALKERS).max(1);
    (0..WALKERS)
        .map(|i| start.saturating_add(i * step))
        .take_while(|&from| from < end)
        .map(|from| Stretch {
            next: from,
            end: from.saturating_add(step).min(end),
            asked: false,
        })
        .collect()
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
            creates.contains("$JS.API.STREAM.CREATE.CHAT_HELD"),
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
            .find("PUB chat.held.i1.alice _INBOX.x.r3")
            .expect(&text);
        assert!(holder < held, "the process is named first: {text}");
        assert!(!holdings.kept("alice"), "not acknowledged yet");
        let moved = holdings.answered(b"3", None, b"", br#"{"seq":2}"#, &mut out);
        assert_eq!(moved, [Outcome::Kept("alice".into())]);
        assert!(holdings.kept("alice") && holdings.kept("bob"));
        // A letting go goes without an answer; cut off, changes wait for the next
        // connection, and a holding unacknowledged is written again.
        holdings.changed("alice".into(), false, 9, &mut out);
        assert!(written(&mut out).contains("PUB chat.held.i1.alice 3\r\n0 9"));
        holdings.changed("bob".into(), true, 10, &mut out);
        holdings.disconnected();
        assert!(!holdings.kept("bob"));
        holdings.connected(&mut out);
        written(&mut out);
        holdings.answered(b"6", None, b"", b"{}", &mut out);
        holdings.answered(b"7", None, b"", b"{}", &mut out);
        holdings.expire(Instant::now(), true, &mut out);
        assert!(written(&mut out).contains("chat.held.i1.bob _INBOX.x.r8"));
    }

    /// Claims the reap of `i0` (request 4, stored at `claim_seq` in `CHAT_REAPS`), with
    /// `CHAT_HELD`'s last sequence 9 (request 5) and no claims of its own (request 6):
    /// the walk's first get is request 7.
    fn claimed_i0(holdings: &mut Holdings, claim_seq: u64, out: &mut BytesMut) {
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
        assert!(written(out).contains("PUB $JS.API.STREAM.INFO.CHAT_HELD _INBOX.x.r5"));
        holdings.answered(b"5", None, b"", br#"{"state":{"last_seq":9}}"#, out);
        let claims = written(out);
        assert!(
            claims.contains("DIRECT.GET.CHAT_REAPS _INBOX.x.r6"),
            "{claims}"
        );
        assert!(claims.contains(r#""next_by_subj":"chat.reaps.reaper.*""#));
        holdings.answered(b"6", Some(404), b"", b"", out);
        let walk = written(out);
        assert!(walk.contains("DIRECT.GET.CHAT_HELD _INBOX.x.r7"), "{walk}");
        assert!(
            walk.contains(r#""next_by_subj":"chat.held.i0.>""#),
            "{walk}"
        );
    }

    #[test]
    fn a_gone_process_is_claimed_walked_up_to_the_holdings_last_sequence_then_and_purged_once_its_users_are_checked(
    ) {
        let mut out = BytesMut::new();
        let mut holdings = ready(&mut out, true);
        claimed_i0(&mut holdings, 3, &mut out);
        let alice = found("chat.held.i0.alice", 4);
        let moved = holdings.answered(b"7", None, &alice, b"1 5", &mut out);
        let alice_reaped = Outcome::Reaped {
            user: "alice".into(),
            reap: 1,
        };
        assert_eq!(moved, [alice_reaped]);
        // The rest, 5 up to the last sequence (9), is read in stretches at once
        // (requests 8 to 12).
        let gets = written(&mut out);
        for seq in 5..10 {
            assert!(gets.contains(&format!(r#""seq":{seq}"#)), "{gets}");
        }
        assert_eq!(gets.matches("DIRECT.GET").count(), 5, "{gets}");
        // Bob, let go, is in the second stretch; the first finds him past its end.
        let bob = found("chat.held.i0.bob", 6);
        let moved = holdings.answered(b"8", None, &bob, b"0 7", &mut out);
        assert!(moved.is_empty(), "past the stretch");
        let moved = holdings.answered(b"9", None, &bob, b"0 7", &mut out);
        assert!(moved.is_empty(), "let go: nothing owed");
        // Past the last sequence: written since (by a process counted dead that was
        // not), not the gone process's.
        let later = found("chat.held.i0.carol", 11);
        for number in [b"10", b"11"] {
            let moved = holdings.answered(number, None, &later, b"1 20", &mut out);
            assert!(moved.is_empty());
        }
        assert!(
            !written(&mut out).contains("PURGE"),
            "a stretch is still read"
        );
        holdings.answered(b"12", None, &later, b"1 20", &mut out);
        assert!(
            !written(&mut out).contains("PURGE"),
            "alice's check is not settled: the holdings are the reap's record until it is"
        );
        holdings.reap_checked(2, &mut out);
        assert!(written(&mut out).is_empty(), "another reap's check");
        holdings.reap_checked(1, &mut out);
        let purges = written(&mut out);
        let held = "PURGE.CHAT_HELD _INBOX.x.r13 35\r\n{\"filter\":\"chat.held.i0.>\",\"seq\":7}";
        assert!(purges.contains(held), "{purges}");
        let named = "PURGE.CHAT_REAPS _INBOX.x.r14 28\r\n{\"filter\":\"chat.reaps.*.i0\"}";
        assert!(purges.contains(named), "{purges}");
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
            text.contains(r#""next_by_subj":"chat.held.i0.>""#),
            "{text}"
        );
    }

    #[test]
    fn a_walk_waits_while_the_events_webhook_is_behind() {
        let mut out = BytesMut::new();
        let mut holdings = ready(&mut out, true);
        claimed_i0(&mut holdings, 10, &mut out);
        holdings.pace(true);
        let alice = found("chat.held.i0.alice", 4);
        let moved = holdings.answered(b"7", None, &alice, b"1 5", &mut out);
        assert_eq!(moved.len(), 1, "what was read is handed on");
        holdings.expire(Instant::now(), true, &mut out);
        assert!(!written(&mut out).contains("DIRECT.GET"), "no more is read");
        holdings.pace(false);
        holdings.expire(Instant::now(), true, &mut out);
        let gets = written(&mut out);
        assert_eq!(gets.matches("DIRECT.GET").count(), 5, "{gets}");
    }

    #[test]
    fn a_walk_is_split_into_stretches_that_cover_the_rest_once() {
        let stretches = split(5, 100_005);
        assert_eq!(stretches.len() as u64, WALKERS);
        assert_eq!(stretches[0].next, 5);
        assert_eq!(stretches.last().unwrap().end, 100_005);
        for pair in stretches.windows(2) {
            assert_eq!(pair[0].end, pair[1].next);
        }
        assert_eq!(split(5, 7).len(), 2);
        assert!(split(7, 7).is_empty());
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
