//! The operator's side of the world: calls to the operator's API (`/api/admin/*`) at
//! random moments, and the events webhook's hooks, with what each must say.
//!
//! - An answer about a user's devices lists only that user's devices, each once; a
//!   presence answer names the users asked, each once, in the order asked; a disconnect
//!   closes at most the user's devices.
//! - At rest (every grace over, nothing in flight), the devices listed are exactly the
//!   devices connected, and a user is online exactly when a device is connected.
//! - The hooks say `user_online` and `user_offline` in turn for each user, starting
//!   online, and at rest they agree with the truth. One node alone posts nothing for a
//!   crash, so its hooks are judged within one process's life; a cluster's next process
//!   reports the users the dead one held offline (`cluster::holdings`), so after a
//!   crash a user's next hook may say either (a device back on the next process is
//!   reported online again; an offline whose holding's update died with the process is
//!   reported again, and so is one whose online the process died before reporting), a
//!   user the reap checks after the next process let the user go is reported offline
//!   again, and at rest the hooks must still agree. Once a node came back on NATS after
//!   a cut or a process crashed, `user_online` may come twice running: the holders
//!   check the users again.
//! - Every close is reported once, with its code (or as replaced, when the device
//!   connected again before its close reached the home).
//! - With several nodes `user_online` and `user_offline` may come twice running (the
//!   cluster's checks between nodes can say one twice: docs/cluster.md, "Where it can
//!   say twice"), but at rest the latest of each user's by `at_ms` agrees with the truth
//!   ("Checked again"); where two nodes' tie on the world's coarse clock, either may.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use engine::{events::Hook, http::admin::AdminRequest};
use serde_json::Value;

/// The HTTP connections the operator asks from: slots far above any WebSocket's.
const SLOT_BASE: u32 = 1 << 30;

/// What the operator did and saw.
#[derive(Debug, Default)]
pub struct Operator {
    /// Calls waiting for their answer, by their connection's slot, with the node asked.
    pending: HashMap<u32, (AdminRequest, usize)>,
    next_slot: u32,
    /// Per user, whether the hooks last said online (in this process's life, alone).
    said_online: BTreeMap<String, bool>,
    /// The node is a cluster's: its hooks speak across crashes.
    cluster: bool,
    /// A cluster's node crashed: a user's first hook after it may say either.
    crashed: bool,
    /// The users with a hook since the last crash.
    hooked_since_crash: BTreeSet<String>,
    /// A cluster's node came back on NATS, or a process crashed: the holders check the
    /// users they hold again (`cluster::presence_events`), and may say `user_online`
    /// again.
    checked_again: bool,
    /// Several nodes: `user_online` and `user_offline` are judged at rest only, and a
    /// device may be counted once per node (its old connection on one, closing, and its
    /// new one on another).
    several_nodes: bool,
    /// Per user, the latest `at_ms` the hooks said online or offline, and what they said
    /// then (both, when two nodes' reports tie: a backend cannot tell which came last).
    latest: BTreeMap<String, (u64, BTreeSet<bool>)>,
    /// The nodes (1 alone).
    nodes: usize,
    /// Closes the world made and the hooks have not reported yet: `(user, device, code)`,
    /// and the node the connection was on.
    closes: Vec<(String, String, u16, usize)>,
    /// Calls answered.
    pub answered: usize,
    /// Devices an operator's disconnect closed.
    pub disconnected: usize,
    /// Hooks the shards emitted.
    pub hooks: usize,
}

impl Operator {
    /// A new call on node `node`: the slot of the HTTP connection it is asked from.
    pub fn ask(&mut self, call: AdminRequest, node: usize) -> u32 {
        let slot = SLOT_BASE + self.next_slot;
        self.next_slot += 1;
        self.pending.insert(slot, (call, node));
        slot
    }

    /// Whether `slot` is one of the operator's connections.
    pub fn is_operator(slot: u32) -> bool {
        slot >= SLOT_BASE
    }

    /// The call asked from `slot`, which its answer completes.
    pub fn take(&mut self, slot: u32) -> Result<AdminRequest, String> {
        self.answered += 1;
        self.pending
            .remove(&slot)
            .map(|(call, _)| call)
            .ok_or_else(|| format!("an answer for no call waiting (slot {slot})"))
    }

    /// Judges `body`, the answer to `call`; `devices_of(user)` names every device the
    /// user ever had (`d<index>`).
    pub fn judge(
        &mut self,
        call: &AdminRequest,
        body: &[u8],
        devices_of: impl Fn(&str) -> BTreeSet<String>,
    ) -> Result<Value, String> {
        let answer: Value = serde_json::from_slice(body).map_err(|e| format!("{e}"))?;
        let wrong = |why: &str| Err(format!("{why}: {call:?} answered {answer}"));
        match call {
            AdminRequest::Devices { user } => {
                let listed = device_ids(&answer);
                let unique: BTreeSet<&String> = listed.iter().collect();
                let owned = devices_of(user);
                let twice = unique.len() != listed.len() && !self.several_nodes;
                if twice || !listed.iter().all(|d| owned.contains(d)) {
                    return wrong("devices not the user's, or twice");
                }
            }
            AdminRequest::Presence { users } => {
                let named: Vec<&str> = answer["users"]
                    .as_array()
                    .map(|list| list.iter().filter_map(|u| u["user_id"].as_str()).collect())
                    .unwrap_or_default();
                if named != users.iter().map(String::as_str).collect::<Vec<_>>() {
                    return wrong("not the users asked, in order");
                }
            }
            AdminRequest::Disconnect { user, .. } => {
                let closed = answer["disconnected"].as_u64().unwrap_or(u64::MAX);
                let connections = devices_of(user).len() * self.nodes.max(1);
                if closed > connections as u64 {
                    return wrong("more closed than the user has devices");
                }
                self.disconnected += closed as usize;
            }
            AdminRequest::Members { .. } | AdminRequest::Membership { .. } => {
                return wrong("the simulator asks no group calls");
            }
        }
        Ok(answer)
    }

    /// The world closed `device` of `user` on node `node` with `code`: a hook must say so.
    pub fn closing(&mut self, user: &str, device: &str, code: u16, node: usize) {
        self.closes.push((user.into(), device.into(), code, node));
    }

    /// A hook node `node` emitted, dated `at_ms`.
    pub fn hook(&mut self, hook: Hook, node: usize, at_ms: u64) -> Result<(), String> {
        self.hooks += 1;
        match hook {
            Hook::UserOnline { user } => self.said(&user, true, at_ms),
            Hook::UserOffline { user } => self.said(&user, false, at_ms),
            Hook::ConnectionClosed { user, device, code } => {
                let expected = (user.to_string(), device.to_string(), code);
                // A device connected again before its old connection's close reached
                // the home: the home reports the old one replaced, whatever its code.
                let replaced = code == engine::ws::close::REPLACED;
                let matches = |c: &(String, String, u16, usize)| {
                    let same_device = c.0 == expected.0 && c.1 == expected.1 && c.3 == node;
                    same_device && (c.2 == expected.2 || replaced)
                };
                match self.closes.iter().position(matches) {
                    Some(at) => {
                        self.closes.swap_remove(at);
                        Ok(())
                    }
                    None => Err(format!("connection_closed {expected:?} for no close")),
                }
            }
            Hook::GroupMember { .. } => Ok(()),
        }
    }

    /// The hooks said `user` came online (`online`) or went offline at `at_ms`: the
    /// other one must have come before (a user starts offline).
    fn said(&mut self, user: &str, online: bool, at_ms: u64) -> Result<(), String> {
        let latest = self.latest.entry(user.into()).or_default();
        if at_ms > latest.0 {
            *latest = (at_ms, BTreeSet::new());
        }
        if at_ms == latest.0 {
            latest.1.insert(online);
        }
        let before = self
            .said_online
            .insert(user.into(), online)
            .unwrap_or(false);
        let first_since_crash = self.crashed && self.hooked_since_crash.insert(user.into());
        // A dead process's user is checked again by the one that reaps it, which may
        // find the user let go since, and reported offline already.
        let reaped_again = self.crashed && !online;
        let checked_again = self.checked_again && online;
        if self.several_nodes || first_since_crash || reaped_again || checked_again {
            return Ok(());
        }
        if before == online {
            let kind = if online {
                "user_online"
            } else {
                "user_offline"
            };
            return Err(format!("{kind} twice in a row for {user}"));
        }
        Ok(())
    }

    /// The process died: no call is answered. Alone, nothing was posted for who was
    /// online, and the next process starts from nobody online; a cluster's next process
    /// reports the dead one's users.
    pub fn crashed(&mut self) {
        self.pending.clear();
        self.closes.clear();
        if !self.cluster {
            return self.said_online.clear();
        }
        self.crashed = true;
        self.checked_again = true;
        self.hooked_since_crash.clear();
    }

    /// A cluster node is back on NATS: the users it holds may be said online again.
    pub fn reconnected(&mut self) {
        self.checked_again = true;
    }

    /// The hooks come from a cluster's relayers.
    pub fn in_a_cluster(&mut self) {
        self.cluster = true;
    }

    /// The hooks come from `nodes` nodes: one may come twice running.
    pub fn several_nodes(&mut self, nodes: usize) {
        self.several_nodes = true;
        self.nodes = nodes;
    }

    /// Node `node` of several died: its calls are not answered, and the closes it had
    /// not reported never are.
    pub fn crashed_node(&mut self, node: usize) {
        self.pending.retain(|_, (_, asked)| *asked != node);
        self.closes.retain(|close| close.3 != node);
    }

    /// At rest: every close was reported, and the hooks say online exactly the users
    /// in `online`.
    pub fn check_rest(&self, users: usize, online: &BTreeSet<String>) -> Result<(), String> {
        if !self.closes.is_empty() {
            return Err(format!("closes never reported: {:?}", self.closes));
        }
        for user in (0..users).map(|u| format!("u{u}")) {
            let truth = online.contains(&user);
            if self.several_nodes {
                let latest = self.latest.get(&user).map(|(_, said)| said);
                if !latest.map_or(!truth, |said| said.contains(&truth)) {
                    return Err(format!(
                        "at rest the latest hooks of {user} say {latest:?}; the truth: {truth}"
                    ));
                }
                continue;
            }
            let said = self.said_online.get(&user).copied().unwrap_or(false);
            if said != truth {
                return Err(format!(
                    "at rest the hooks say {user} online: {said}; the truth: {}",
                    !said
                ));
            }
        }
        Ok(())
    }
}

/// The device ids a devices answer lists.
pub fn device_ids(answer: &Value) -> Vec<String> {
    answer["devices"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|d| d["device_id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}
