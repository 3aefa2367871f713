//! The cluster thread's work, on its tokio runtime: connect to NATS (retrying with
//! backoff for as long as it takes), claim the node id in the node bucket, then beat
//! there every [`HEARTBEAT`], watch the bucket for the other nodes, watch the groups'
//! members for the group homes here, and answer pings on the node's subject until told
//! to stop, when the node deletes its key and leaves.
//!
//! The node bucket `chat_nodes` maps a node id to the instance that holds it (a random
//! token per process). An id is claimed with a create, which fails while the key exists;
//! then the holder is pinged on `chat.node.<id>.ping`, and only an id whose holder does
//! not answer (a node killed without a word) is taken over, by an update that names the
//! revision read, so that two starting nodes cannot both win.

use std::{
    cell::Cell,
    sync::{atomic::Ordering, mpsc, Arc},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use async_nats::{
    jetstream::{
        self,
        kv::{self, CreateErrorKind, Operation, UpdateErrorKind},
        stream,
    },
    Client, ConnectOptions, Event, Subscriber,
};
use bytes::Bytes;
use futures_util::StreamExt;
use tracing::{debug, error, info, warn};

use super::{
    backoff,
    inboxes::{self, GROUP_BUCKET},
    instance_token_hex,
    members::{Change, Members, DEAD_AFTER},
    relay::{Inbound, Reactors},
    relayer::{Dialer, Membership, Relayer},
    shards::{Shards, LAYOUT_BUCKET, SHARDS_KEY},
    wire, Claim, Link, State, HEARTBEAT,
};

/// Where the membership watch tells the relay which instances are gone, and which beat
/// (joined, or back after they were counted dead).
type Gone = tokio::sync::mpsc::UnboundedSender<Membership>;

/// The key-value bucket of node claims and heartbeats.
const NODE_BUCKET: &str = "chat_nodes";
/// A key nobody beats for this long is dropped by the server (a dead node's claim).
const NODE_KEY_AGE: Duration = Duration::from_secs(60);
/// How long leaving may take: the node key's delete and a last flush. Past it the node
/// goes without a word, and the others count it dead after the silence.
const LEAVE_WAIT: Duration = Duration::from_secs(2);
/// How long the holder of a claimed id has to answer a ping.
const PING_WAIT: Duration = Duration::from_millis(1000);

/// One node's cluster thread.
pub(super) struct Node {
    servers: Vec<String>,
    /// TLS to the servers that ask for it, or whose URL says `tls://`.
    tls: Arc<rustls::ClientConfig>,
    id: String,
    /// This process's token in its key: tells its own claim from another's.
    instance: Bytes,
    /// `--cluster-replicas`, for the buckets it makes.
    replicas: u8,
    /// `--cluster-shards`, which must be the cluster's.
    shards: Shards,
    state: Arc<State>,
    /// Where the first outcome of the claim goes ([`super::start`] waits for it).
    first: Cell<Option<mpsc::Sender<Claim>>>,
}

/// Why the node stops serving the cluster.
enum Stop {
    /// Shutdown: leave.
    Asked,
    /// Another running node holds the id.
    Refused(String),
}

impl Node {
    pub(super) fn new(
        (servers, (replicas, shards), tls): (Vec<String>, (u8, Shards), Arc<rustls::ClientConfig>),
        id: String,
        state: Arc<State>,
        first: mpsc::Sender<Claim>,
    ) -> Node {
        Node {
            servers,
            tls,
            replicas,
            shards,
            id,
            instance: instance_token(),
            state,
            first: Cell::new(Some(first)),
        }
    }

    /// Runs until `stopped` fires or the reactors are gone (or the id turns out to be
    /// another node's), relaying the reactors' live events all along.
    pub(super) async fn run(self, link: Link, mut stopped: tokio::sync::oneshot::Receiver<()>) {
        let client = tokio::select! {
            client = self.connect() => client,
            _ = &mut stopped => return,
        };
        let Link {
            reactors,
            relays,
            doorbell,
            local_stats,
            streams,
            store_stats,
            events,
        } = link;
        let homes = reactors.clone();
        let figures = (self.state.clone(), local_stats);
        let instance = String::from_utf8_lossy(&self.instance);
        let me = (&*self.id, &*instance);
        let stores = (streams, store_stats);
        let me = (
            me.0,
            me.1,
            format!("_INBOX.{}.", super::instance_token_hex()),
        );
        let relayer = Relayer::new(me, (reactors, stores), figures).with_events(events);
        let dialer = Dialer::new(&self.servers, self.tls.clone(), &self.id);
        // The instances of nodes that died or left, from the watch to the relay (their
        // users' presence goes with them).
        let (gone, gone_instances) = tokio::sync::mpsc::unbounded_channel();
        let outcome = tokio::select! {
            outcome = self.serve(&client, gone, &homes) => outcome,
            () = relayer.run(dialer, relays, doorbell, gone_instances) => Stop::Asked,
            _ = &mut stopped => Stop::Asked,
        };
        // Bounded: with NATS away, a request or a flush waits for a reconnect that may
        // never come, and the shutdown waits for this thread.
        let goodbye = async {
            match outcome {
                Stop::Asked => self.leave(&client).await,
                Stop::Refused(why) => self.refuse(why),
            }
            let _ = client.flush().await;
        };
        if tokio::time::timeout(LEAVE_WAIT, goodbye).await.is_err() {
            warn!("cluster: NATS did not answer; leaving without deleting the node key");
        }
    }

    /// A client that connects, and reconnects, with backoff for as long as it takes,
    /// proving itself with the credentials of the servers' URLs (async-nats does not
    /// read them there; the URLs it gets have none, so no log shows them).
    async fn connect(&self) -> Client {
        let state = self.state.clone();
        let servers: Vec<async_nats::ServerAddr> = self
            .servers
            .iter()
            .filter_map(|url| url.parse().ok())
            .collect();
        let credentials = servers
            .iter()
            .map(wire::Credentials::of)
            .find(|c| *c != wire::Credentials::None);
        let bare: Vec<String> = servers
            .iter()
            .map(|s| {
                let scheme = if s.tls_required() { "tls" } else { "nats" };
                format!("{scheme}://{}:{}", s.host(), s.port())
            })
            .collect();
        let mut options = ConnectOptions::new();
        match credentials {
            Some(wire::Credentials::UserPassword(user, pass)) => {
                options = options.user_and_password(user, pass)
            }
            Some(wire::Credentials::Token(token)) => options = options.token(token),
            Some(wire::Credentials::None) | None => {}
        }
        let options = options
            .tls_client_config((*self.tls).clone())
            .name(format!("engine {}", self.id))
            .retry_on_initial_connect()
            // Its own pings never come back to it (`holder_answers` asks the others).
            .no_echo()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| backoff(attempts as u32))
            .event_callback(move |event| {
                let state = state.clone();
                async move { note_event(&state, event) }
            });
        loop {
            match options.clone().connect(&bare[..]).await {
                Ok(client) => return client,
                Err(e) => {
                    warn!("cluster: cannot set up the NATS client: {e}; retrying");
                    tokio::time::sleep(backoff(u32::MAX)).await;
                }
            }
        }
    }

    /// Claims the id, then beats, watches (telling `gone` the instances of nodes that die
    /// or leave) and answers pings; returns only on a refusal.
    async fn serve(&self, client: &Client, gone: Gone, homes: &Reactors) -> Stop {
        let bucket = self.bucket(client, NODE_BUCKET, NODE_KEY_AGE).await;
        let groups = self.bucket(client, GROUP_BUCKET, Duration::ZERO).await;
        // Answering before the claim: a node starting with the same id meanwhile must
        // find this one alive.
        let pings = self.answer_pings(client, self.ping_subscription(client).await);
        if let Err(why) = self.agree_on_shards(client).await {
            return Stop::Refused(why);
        }
        let revision = match self.claim(client, &bucket).await {
            Ok(revision) => revision,
            Err(why) => return Stop::Refused(why),
        };
        self.state.claimed.store(true, Ordering::Release);
        self.state.nodes.fetch_max(1, Ordering::AcqRel);
        info!(node = %self.id, "cluster: joined");
        if let Some(first) = self.first.take() {
            let _ = first.send(Claim::Held);
        }
        tokio::select! {
            why = self.beat(&bucket, revision) => Stop::Refused(why),
            _ = self.watch(&bucket, &gone) => unreachable!("the watch retries forever"),
            _ = watch_groups(&groups, homes) => unreachable!("the group watch retries forever"),
            _ = pings => unreachable!("the ping answers retry forever"),
        }
    }

    /// Key-value bucket `name` (entries kept `max_age`, zero: for ever), created if it is
    /// not there yet (every node asks the same).
    async fn bucket(&self, client: &Client, name: &str, max_age: Duration) -> kv::Store {
        let js = jetstream::new(client.clone());
        let mut attempts = 0;
        loop {
            let config = kv_stream(name, max_age, self.replicas);
            let created = js.get_or_create_stream(config).await;
            match created {
                Ok(_) => match js.get_key_value(name).await {
                    Ok(bucket) => return bucket,
                    Err(e) => warn!("cluster: bucket {name} does not open: {e}"),
                },
                // Created by a node with another configuration (an older version): use it.
                Err(created) => match js.get_key_value(name).await {
                    Ok(bucket) => return bucket,
                    Err(_) => {
                        attempts += 1;
                        warn!(
                            attempts,
                            "cluster: no bucket {name} yet ({created}); retrying"
                        );
                        tokio::time::sleep(backoff(attempts)).await;
                    }
                },
            }
        }
    }

    /// Checks this node's `--cluster-shards` against the count the cluster's first node
    /// wrote down (writing it, if this node is the first): `Err` says why a node with
    /// another count must not serve, since it would look for users' state in the wrong
    /// streams.
    async fn agree_on_shards(&self, client: &Client) -> Result<(), String> {
        let layout = self.bucket(client, LAYOUT_BUCKET, Duration::ZERO).await;
        let count = Bytes::from(self.shards.count().to_string());
        let mut attempts = 0;
        loop {
            attempts += 1;
            let failed = match layout.create(SHARDS_KEY, count.clone()).await {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                    match layout.get(SHARDS_KEY).await {
                        Ok(Some(stored)) => return self.shards.agrees(&stored),
                        // Deleted meanwhile: create it again.
                        Ok(None) => continue,
                        Err(e) => e.to_string(),
                    }
                }
                Err(e) => e.to_string(),
            };
            warn!(
                attempts,
                "cluster: cannot read the cluster's shards: {failed}"
            );
            tokio::time::sleep(backoff(attempts)).await;
        }
    }

    /// Takes the id: its revision, or why another node has it.
    async fn claim(&self, client: &Client, bucket: &kv::Store) -> Result<u64, String> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match bucket.create(&self.id, self.instance.clone()).await {
                Ok(revision) => return Ok(revision),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                    if let Some(revision) = self.take_over(client, bucket).await? {
                        return Ok(revision);
                    }
                }
                Err(e) => {
                    warn!(attempts, "cluster: cannot claim node id {}: {e}", self.id);
                    tokio::time::sleep(backoff(attempts)).await;
                }
            }
        }
    }

    /// The id's key exists: refuses if its holder answers, else takes the key over.
    /// `Ok(None)`: the key changed meanwhile; claim again.
    async fn take_over(&self, client: &Client, bucket: &kv::Store) -> Result<Option<u64>, String> {
        if self.holder_answers(client).await {
            return Err(format!(
                "node id '{}' is held by a running node: give each node its own --node-id",
                self.id
            ));
        }
        let Ok(Some(entry)) = bucket.entry(&self.id).await else {
            return Ok(None);
        };
        match bucket
            .update(&self.id, self.instance.clone(), entry.revision)
            .await
        {
            Ok(revision) => {
                info!(node = %self.id, "cluster: took over the id of a node that did not answer");
                Ok(Some(revision))
            }
            Err(_) => Ok(None),
        }
    }

    /// Whether another process answers a ping on this node's subject within
    /// [`PING_WAIT`] (this one's own answer, carrying its token, does not count; with
    /// `no_echo` it does not come at all).
    async fn holder_answers(&self, client: &Client) -> bool {
        let inbox = client.new_inbox();
        let Ok(mut replies) = client.subscribe(inbox.clone()).await else {
            return false;
        };
        let sent = client
            .publish_with_reply(ping_subject(&self.id), inbox, Bytes::new())
            .await;
        if sent.is_err() || client.flush().await.is_err() {
            return false;
        }
        let deadline = tokio::time::Instant::now() + PING_WAIT;
        while let Ok(Some(reply)) = tokio::time::timeout_at(deadline, replies.next()).await {
            // A status (503, "no responders") is the server's: nobody holds the subject.
            if reply.status.is_some() {
                return false;
            }
            if reply.payload != self.instance {
                return true;
            }
        }
        false
    }

    /// The subscription to the node's ping subject, retried until the server takes it.
    async fn ping_subscription(&self, client: &Client) -> Subscriber {
        let mut attempts = 0;
        loop {
            match client.subscribe(ping_subject(&self.id)).await {
                Ok(pings) => return pings,
                Err(e) => {
                    attempts += 1;
                    debug!("cluster: ping subscription: {e}");
                    tokio::time::sleep(backoff(attempts)).await;
                }
            }
        }
    }

    /// Answers pings on the node's subject with the instance token, resubscribing if
    /// the subscription ends.
    async fn answer_pings(&self, client: &Client, mut pings: Subscriber) {
        loop {
            while let Some(ping) = pings.next().await {
                if let Some(reply) = ping.reply {
                    let _ = client.publish(reply, self.instance.clone()).await;
                }
            }
            pings = self.ping_subscription(client).await;
        }
    }

    /// Beats every [`HEARTBEAT`] from `revision` on; returns why the id is lost, if
    /// another node took it.
    async fn beat(&self, bucket: &kv::Store, mut revision: u64) -> String {
        let mut ticks = tokio::time::interval(HEARTBEAT);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match bucket
                .update(&self.id, self.instance.clone(), revision)
                .await
            {
                Ok(next) => revision = next,
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                    match bucket.entry(&self.id).await {
                        Ok(Some(entry))
                            if entry.operation == Operation::Put
                                && entry.value != self.instance =>
                        {
                            return format!(
                                "node id '{}' was taken over by another node (this one was \
                                 silent for {} s?)",
                                self.id,
                                DEAD_AFTER.as_secs()
                            );
                        }
                        Ok(Some(entry)) if entry.operation == Operation::Put => {
                            revision = entry.revision;
                        }
                        // Gone (aged out while NATS was away): claim it again.
                        Ok(_) => match bucket.create(&self.id, self.instance.clone()).await {
                            Ok(next) => revision = next,
                            Err(e) => debug!("cluster: reclaiming the node key: {e}"),
                        },
                        Err(e) => debug!("cluster: reading the node key: {e}"),
                    }
                }
                Err(e) => debug!("cluster: heartbeat not written: {e}"),
            }
        }
    }

    /// Keeps [`State::nodes`] up to date from the bucket's changes and the silence of
    /// nodes that stopped beating, and tells `gone` each instance that died, left or was
    /// replaced; rewatches from each key's last value if the watch ends (what it knew is
    /// kept, so a node that died meanwhile is still counted dead).
    async fn watch(&self, bucket: &kv::Store, gone: &Gone) {
        let mut expiry = tokio::time::interval(Duration::from_secs(1));
        let mut members = Members::default();
        loop {
            // Each node's last beat first (dated, so a dead node's stale key does not
            // count), then every change: a node that joins knows the others at once.
            let mut changes = watch_from_history(bucket, "node").await;
            loop {
                tokio::select! {
                    change = changes.next() => match change {
                        Some(Ok(entry)) => self.note(&mut members, &entry, gone),
                        Some(Err(e)) => debug!("cluster: node watch: {e}"),
                        None => break,
                    },
                    _ = expiry.tick() => {
                        for (id, instance) in members.expire(Instant::now()) {
                            warn!(node = &*id, "cluster: node silent for {} s: counted dead", DEAD_AFTER.as_secs());
                            let _ = gone.send(Membership::Gone(instance));
                        }
                    }
                }
                self.state
                    .nodes
                    .store(members.count() as u32, Ordering::Release);
            }
        }
    }

    /// One change of the node bucket.
    fn note(&self, members: &mut Members, entry: &kv::Entry, gone: &Gone) {
        match entry.operation {
            Operation::Put => {
                let now = Instant::now();
                let age = age_of(entry.created.unix_timestamp_nanos());
                let at = now.checked_sub(age).unwrap_or(now);
                let instance = String::from_utf8_lossy(&entry.value);
                match members.heard(&self.id, (&entry.key, &instance), at, now) {
                    Change::Joined => {
                        info!(node = %entry.key, "cluster: node joined");
                        let _ = gone.send(Membership::Joined(instance.into()));
                    }
                    Change::Replaced(old) => {
                        info!(node = %entry.key, "cluster: node id taken over by a new process");
                        let _ = gone.send(Membership::Gone(old));
                        let _ = gone.send(Membership::Joined(instance.into()));
                    }
                    Change::Beat | Change::Ignored => {}
                }
            }
            Operation::Delete | Operation::Purge => {
                if let Some(instance) = members.left(&entry.key) {
                    info!(node = %entry.key, "cluster: node left");
                    let _ = gone.send(Membership::Gone(instance));
                }
            }
        }
    }

    /// Deletes the node's key, so that the others count it gone at once.
    async fn leave(&self, client: &Client) {
        if !self.state.claimed.swap(false, Ordering::AcqRel) {
            return;
        }
        let bucket = match jetstream::new(client.clone())
            .get_key_value(NODE_BUCKET)
            .await
        {
            Ok(bucket) => bucket,
            Err(e) => return warn!("cluster: leaving without deleting the node key: {e}"),
        };
        match bucket.delete(&self.id).await {
            Ok(()) => info!(node = %self.id, "cluster: left"),
            Err(e) => warn!("cluster: node key not deleted: {e}"),
        }
    }

    /// The id is another running node's: this node must not serve. The start is failed
    /// if it waits on the claim; otherwise the process is asked to drain and stop.
    fn refuse(&self, why: String) {
        error!("cluster: {why}");
        self.state.claimed.store(false, Ordering::Release);
        self.state.refused.store(true, Ordering::Release);
        match self.first.take() {
            Some(first) => {
                let _ = first.send(Claim::Refused(why));
            }
            None => {
                // SAFETY: kill(2) on this process with SIGTERM, which main waits for.
                unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
            }
        }
    }
}

/// The stream behind key-value bucket `bucket` (one value per key, kept `max_age`, in
/// `replicas` copies), as
/// the key-value API lays it out. Created through the stream API because async-nats'
/// `create_key_value` first reads the account's limits in a shape nats-server 2.9 (the
/// Debian package) does not send.
pub(super) fn kv_stream(bucket: &str, max_age: Duration, replicas: u8) -> stream::Config {
    stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: usize::from(replicas),
        ..Default::default()
    }
}

/// Hands every change of the groups' members and settings to the group's home reactor on
/// this node:
/// each key's last value first (a node that starts learns every member), then each
/// change as it comes; watches again if the watch ends.
async fn watch_groups(bucket: &kv::Store, homes: &Reactors) {
    loop {
        let mut changes = watch_from_history(bucket, "group").await;
        while let Some(change) = changes.next().await {
            let entry = match change {
                Ok(entry) => entry,
                Err(e) => {
                    debug!("cluster: group watch: {e}");
                    continue;
                }
            };
            let put = entry.operation == Operation::Put;
            let Some((home, change)) =
                inboxes::group_change(&entry.key, put, &entry.value, homes.senders.len())
            else {
                continue;
            };
            homes.send(home, Inbound::Mail(change));
        }
    }
}

/// A watch of every key of `bucket` from its last value on, asked again with backoff
/// until the server gives one (`what` names it in the log).
async fn watch_from_history(bucket: &kv::Store, what: &str) -> kv::Watch {
    let mut attempts = 0;
    loop {
        match bucket.watch_with_history(">").await {
            Ok(changes) => return changes,
            Err(e) => {
                attempts += 1;
                debug!("cluster: {what} watch: {e}");
                tokio::time::sleep(backoff(attempts)).await;
            }
        }
    }
}

/// Records what the client reports about its connection in `state`.
fn note_event(state: &State, event: Event) {
    match event {
        Event::Connected => {
            state.connected.store(true, Ordering::Release);
            info!("cluster: connected to NATS");
        }
        Event::Disconnected => {
            state.connected.store(false, Ordering::Release);
            warn!("cluster: disconnected from NATS; reconnecting");
        }
        Event::Closed => state.connected.store(false, Ordering::Release),
        // Each failed attempt to reach a server; the backoff retries it.
        Event::ClientError(e) => debug!("cluster: NATS: {e}"),
        other => warn!("cluster: NATS: {other}"),
    }
}

/// The subject a node answers pings on.
fn ping_subject(id: &str) -> String {
    format!("chat.node.{id}.ping")
}

/// How long ago a server timestamp (Unix ns) was, by this host's clock.
fn age_of(unix_nanos: i128) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    Duration::from_nanos(now.saturating_sub(unix_nanos).clamp(0, u64::MAX as i128) as u64)
}

/// A token no other process has: the pid and a random number.
fn instance_token() -> Bytes {
    Bytes::from(format!("{}-{}", std::process::id(), instance_token_hex()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_differ() {
        assert_ne!(instance_token(), instance_token());
    }
}
