//! Inboxes (PROTOCOL.md v2) at a user's home: who numbers the user's events, the frames
//! with `seq` for the user's devices, and when a new device starts to get them.
//!
//! The store numbers the events of a user with no device online. When a device
//! registers, the home asks the store for the last `seq` ([`Numbering::Opening`]) and
//! numbers every event itself once it has the answer, so a device online gets each event
//! at once, `seq` included, and the store keeps it under the same `seq`. A device gets
//! live events from the moment the home has the numbering; only then is it told
//! (`Registered`), so the inbox it reads next holds everything numbered before (the
//! driver holds what comes live while it reads, and drops what the read already gave).
//!
//! In a cluster the home numbers nothing: every event goes to the user's inbox in
//! JetStream, which numbers it, and reaches the devices on every node as the stream
//! republishes it ([`crate::cluster`]); a device is live as soon as it registers.

use super::{
    directory::{Device, LiveDevice, Numbering, OPENING_TICKET_MASK},
    Effects, Shard,
};
use crate::{
    protocol::{outbound::Outgoing, Priority},
    router::{ConnAddr, Envelope},
    store::Command,
    ws::close,
};

/// Where one event goes at its user's home: the `seq` it got (if the home numbers the
/// user's events), the live devices it is written to, and whether it counts as
/// acknowledged already (only devices that do not acknowledge got it).
#[derive(Debug)]
pub(super) struct Numbered {
    /// The `seq` the home gave it; `None`: the store numbers it.
    pub seq: Option<u64>,
    /// The devices that got it.
    pub devices: smallvec::SmallVec<[LiveDevice; 4]>,
}

impl Numbered {
    /// Whether a device got it.
    pub(super) fn delivered(&self) -> bool {
        !self.devices.is_empty()
    }

    /// Whether only devices that do not acknowledge got it: they are taken to have it
    /// once it is written (v1), and, as in v1, its sender gets no `delivery_receipt`.
    pub(super) fn only_to_v1(&self) -> bool {
        self.delivered() && self.devices.iter().all(|d| !d.acks)
    }
}

impl Shard {
    /// At a user's home: numbers one inbox event of `user` and writes it to the user's
    /// live devices but `except`, each frame with its `seq`.
    ///
    /// Hot path: one frame per event, shared by the user's devices.
    pub(super) fn number_event(
        &mut self,
        user: &str,
        frame: &Outgoing,
        (priority, accepted_ns): (Priority, u64),
        except: Option<ConnAddr>,
        out: &mut Effects,
    ) -> Numbered {
        let seq = match self.directory.numbering(user) {
            Numbering::Home { last } => {
                let seq = last + 1;
                self.directory
                    .set_numbering(user, Numbering::Home { last: seq });
                Some(seq)
            }
            Numbering::Opening { ticket, unassigned } => {
                let unassigned = unassigned + 1;
                let state = Numbering::Opening { ticket, unassigned };
                self.directory.set_numbering(user, state);
                None
            }
            Numbering::Store => None,
        };
        let devices = match seq {
            Some(seq) => {
                let devices = self.directory.live_devices(user, except);
                if !devices.is_empty() {
                    let with_seq = Outgoing::with_seq(frame.kind, &frame.json(), seq);
                    for device in &devices {
                        out.frame_to(device.addr, with_seq.clone(), priority, accepted_ns);
                    }
                }
                devices
            }
            None => smallvec::SmallVec::new(),
        };
        Numbered { seq, devices }
    }

    /// At a user's home: a device registered. Once the home numbers the user's events
    /// the device is made live and told so; until then (the store numbers them, or the
    /// home is waiting for the last `seq`) it waits for [`Shard::inbox_opened`].
    pub(super) fn admit_device(&mut self, user: &str, addr: ConnAddr, out: &mut Effects) {
        if self.relays {
            // In a cluster JetStream numbers every event, and the device gets them as
            // the stream republishes them: it is live at once.
            return self.make_live(user, addr, out);
        }
        match self.directory.numbering(user) {
            Numbering::Home { .. } => self.make_live(user, addr, out),
            Numbering::Opening { .. } => {}
            Numbering::Store => {
                self.next_opening = (self.next_opening + 1) & OPENING_TICKET_MASK;
                let ticket = self.next_opening;
                let state = Numbering::Opening {
                    ticket,
                    unassigned: 0,
                };
                self.directory.set_numbering(user, state);
                out.store(Command::OpenInbox {
                    user: user.into(),
                    home: self.id,
                    ticket,
                });
            }
        }
    }

    /// The store's last `seq` for an inbox this home opened: the home numbers from
    /// there (after the events the store numbered meanwhile), and the devices waiting
    /// are made live.
    pub(super) fn inbox_opened(&mut self, user: &str, ticket: u32, last: u64, out: &mut Effects) {
        let Numbering::Opening {
            ticket: expected,
            unassigned,
        } = self.directory.numbering(user)
        else {
            return; // every device left meanwhile: the store numbers again
        };
        if expected != ticket {
            return; // an older opening's answer
        }
        let last = last + u64::from(unassigned);
        self.directory.set_numbering(user, Numbering::Home { last });
        let waiting: Vec<ConnAddr> = self
            .directory
            .devices(user)
            .iter()
            .filter(|d| !d.live)
            .map(|d| d.addr)
            .collect();
        for addr in waiting {
            self.make_live(user, addr, out);
        }
    }

    /// The device gets live events from now on, and reads its inbox.
    fn make_live(&mut self, user: &str, addr: ConnAddr, out: &mut Effects) {
        if self.directory.set_live(user, addr) {
            out.mail(addr.reactor as usize, Envelope::Registered { addr });
        }
    }

    /// The user's inbox is at `--queue-max-per-user` and its devices online do not ack:
    /// each device that acks (but does not) is closed as a slow consumer (4002). It
    /// resumes from its last ack when it comes back; while none is online, the store
    /// numbers the user's events and refuses them past the bound. Devices that do not ack
    /// (v1) acknowledge what their socket takes, so they are never overdue.
    pub(super) fn acks_overdue(&mut self, user: &str, out: &mut Effects) {
        let close = (close::SLOW_CONSUMER, "slow consumer: acks overdue");
        self.close_devices(user, |device| device.acks, close, out);
    }

    /// In a cluster: the user's devices here missed inbox events that the node can no
    /// longer give them in order (docs/cluster.md, "A gap the stream no longer has").
    /// Each is closed with 1011: a device that resumes is told whether its resume is
    /// honoured, and one that does not reads what no device acknowledged.
    pub(super) fn events_missed(&mut self, user: &str, out: &mut Effects) {
        let close = (close::INTERNAL_ERROR, "inbox events missed: resume");
        self.close_devices(user, |_| true, close, out);
    }

    /// Closes `user`'s devices here that `which` picks with `(code, reason)`.
    fn close_devices(
        &self,
        user: &str,
        which: impl Fn(&Device) -> bool,
        (code, reason): (u16, &'static str),
        out: &mut Effects,
    ) {
        let devices = self.directory.devices(user).iter();
        let picked: smallvec::SmallVec<[ConnAddr; 4]> =
            devices.filter(|d| which(d)).map(|d| d.addr).collect();
        for addr in picked {
            out.mail(
                addr.reactor as usize,
                Envelope::Close { addr, code, reason },
            );
        }
    }

    /// At the device's reactor: `ack {seq}`; the store checks it against the inbox.
    pub(super) fn ack(&mut self, conn: ConnAddr, user: &str, seq: u64, out: &mut Effects) {
        out.store(Command::Ack {
            user: user.into(),
            upto: seq,
            device: Some(conn.into()),
            home: self.home_of(user),
        });
    }
}
