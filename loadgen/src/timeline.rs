//! The load phase second by second: messages sent, delivered and acknowledged in each
//! second, and the delivery and ack latencies observed in it (p50, p99, max), so that a
//! spike in the middle of a long run (a store compaction, a stall of the box) shows where
//! the run's final percentiles would hide it.
//!
//! Each worker records into its current second ([`Recorder`]) and hands it to the shared
//! [`Timeline`] when its clock moves past it: one lock and one histogram merge a second
//! per worker, nothing per message. A worker hands its seconds over in order, so once
//! every worker has handed over second `s` or later, no second up to `s` changes again:
//! the timeline then reduces them to their figures and drops their histograms. Its memory
//! is a few seconds' histograms, whatever the run's length.

use std::{collections::BTreeMap, sync::Mutex};

use crate::latency::Latency;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// One second's counts and latencies, while it can still change.
#[derive(Debug, Clone)]
pub struct Second {
    sent: u64,
    delivered: u64,
    acked: u64,
    delivery: Latency,
    ack: Latency,
}

impl Default for Second {
    fn default() -> Self {
        Second {
            sent: 0,
            delivered: 0,
            acked: 0,
            delivery: Latency::per_second(),
            ack: Latency::per_second(),
        }
    }
}

impl Second {
    /// A message sent.
    pub fn sent(&mut self) {
        self.sent += 1;
    }

    /// A message that reached its receiver `latency_us` after its scheduled send.
    pub fn delivered(&mut self, latency_us: u64) {
        self.delivered += 1;
        self.delivery.record_us(latency_us);
    }

    /// An ack (`sent` or `queued`) that came `latency_us` after its message's scheduled send.
    pub fn acked(&mut self, latency_us: u64) {
        self.acked += 1;
        self.ack.record_us(latency_us);
    }

    fn merge(&mut self, other: &Second) {
        self.sent += other.sent;
        self.delivered += other.delivered;
        self.acked += other.acked;
        self.delivery.merge(&other.delivery);
        self.ack.merge(&other.ack);
    }

    fn figures(&self, second: u64) -> SecondFigures {
        SecondFigures {
            second,
            sent: self.sent,
            delivered: self.delivered,
            acked: self.acked,
            delivery: Tail::of(&self.delivery),
            ack: Tail::of(&self.ack),
        }
    }
}

/// A second's latency figures in µs (all 0 when nothing was recorded in it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tail {
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// The largest.
    pub max_us: u64,
}

impl Tail {
    fn of(latency: &Latency) -> Tail {
        if latency.count() == 0 {
            return Tail::default();
        }
        Tail {
            p50_us: latency.at(0.5),
            p99_us: latency.at(0.99),
            max_us: latency.at(1.0),
        }
    }
}

/// One second of the load, reduced to what the report shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SecondFigures {
    /// Seconds since the load began.
    pub second: u64,
    /// Messages sent in this second.
    pub sent: u64,
    /// Messages that arrived in this second.
    pub delivered: u64,
    /// Acks that arrived in this second.
    pub acked: u64,
    /// Latencies of the messages that arrived in this second.
    pub delivery: Tail,
    /// Latencies of the acks that arrived in this second.
    pub ack: Tail,
}

impl SecondFigures {
    /// The `timeline` entry of `report.json` (schema in the README).
    pub fn to_json(self) -> serde_json::Value {
        let tail = |t: &Tail| serde_json::json!({"p50_us": t.p50_us, "p99_us": t.p99_us, "max_us": t.max_us});
        serde_json::json!({
            "second": self.second,
            "sent": self.sent,
            "delivered": self.delivered,
            "acked": self.acked,
            "delivery": tail(&self.delivery),
            "ack": tail(&self.ack),
        })
    }
}

/// Every worker's seconds, merged: reduced to figures once final, held whole until then.
#[derive(Debug, Default)]
pub struct Timeline {
    /// Per worker, the last second it handed over (`u64::MAX` once it has finished).
    handed: Vec<Option<u64>>,
    /// Seconds some worker may still add to.
    open: BTreeMap<u64, Second>,
    /// Final seconds, by second (gaps are seconds nothing happened in).
    done: BTreeMap<u64, SecondFigures>,
}

impl Timeline {
    /// A timeline for `workers` workers.
    pub fn new(workers: usize) -> Timeline {
        Timeline {
            handed: vec![None; workers],
            ..Timeline::default()
        }
    }

    /// Worker `worker` is past `index`: what it recorded in that second joins the others'.
    fn hand_over(&mut self, worker: usize, index: u64, second: Second) {
        match self.open.get_mut(&index) {
            Some(merged) => merged.merge(&second),
            None => {
                self.open.insert(index, second);
            }
        }
        self.mark(worker, index);
    }

    /// Worker `worker` will hand nothing more over.
    fn finished(&mut self, worker: usize) {
        self.mark(worker, u64::MAX);
    }

    fn mark(&mut self, worker: usize, index: u64) {
        if let Some(handed) = self.handed.get_mut(worker) {
            *handed = Some(index);
        }
        // Every worker is past `upto`: no second up to it changes again.
        let Some(upto) = self.handed.iter().copied().min().flatten() else {
            return;
        };
        while let Some(entry) = self.open.first_entry() {
            if *entry.key() > upto {
                break;
            }
            let (index, second) = entry.remove_entry();
            self.done.insert(index, second.figures(index));
        }
    }

    /// Every second from the load's start to the last anything happened in, in order
    /// (seconds nothing happened in are zeros). Seconds still open (a worker that never
    /// finished: an interrupted run) are included as they are.
    pub fn seconds(&self) -> Vec<SecondFigures> {
        let open = self.open.iter().map(|(i, s)| (*i, s.figures(*i)));
        let all: BTreeMap<u64, SecondFigures> = self
            .done
            .iter()
            .map(|(i, f)| (*i, *f))
            .chain(open)
            .collect();
        let Some(last) = all.keys().next_back().copied() else {
            return Vec::new();
        };
        (0..=last)
            .map(|second| {
                all.get(&second).copied().unwrap_or(SecondFigures {
                    second,
                    ..SecondFigures::default()
                })
            })
            .collect()
    }
}

/// One worker's current second of the load.
#[derive(Debug)]
pub struct Recorder {
    worker: usize,
    /// When the load began, in ns since the run's epoch (the same for every worker).
    start_ns: u64,
    index: u64,
    second: Second,
}

impl Recorder {
    /// The recorder of worker `worker`, for a load that began at `start_ns`.
    pub fn new(worker: usize, start_ns: u64) -> Recorder {
        Recorder {
            worker,
            start_ns,
            index: 0,
            second: Second::default(),
        }
    }

    /// The second `now_ns` falls in; hands the current one to `shared` first if `now_ns` is
    /// past it. Allocation-aware: a new second's histograms are allocated once a second,
    /// nothing per message.
    pub fn at(&mut self, now_ns: u64, shared: &Mutex<Timeline>) -> &mut Second {
        let index = now_ns.saturating_sub(self.start_ns) / NANOS_PER_SEC;
        if index > self.index {
            let second = std::mem::take(&mut self.second);
            lock(shared).hand_over(self.worker, self.index, second);
            self.index = index;
        }
        &mut self.second
    }

    /// The load is over for this worker: its last second joins the others'.
    pub fn finish(self, shared: &Mutex<Timeline>) {
        let mut timeline = lock(shared);
        timeline.hand_over(self.worker, self.index, self.second);
        timeline.finished(self.worker);
    }
}

/// The timeline, even if a worker panicked holding it (its figures are still counts).
pub fn lock(shared: &Mutex<Timeline>) -> std::sync::MutexGuard<'_, Timeline> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = NANOS_PER_SEC;

    #[test]
    fn seconds_merge_across_workers_and_become_final_once_every_worker_is_past_them() {
        let shared = Mutex::new(Timeline::new(2));
        let (mut a, mut b) = (Recorder::new(0, 5 * SEC), Recorder::new(1, 5 * SEC));
        a.at(5 * SEC, &shared).sent();
        a.at(5 * SEC + 10, &shared).delivered(1_000);
        b.at(5 * SEC + 20, &shared).delivered(3_000);
        // a moves to second 2 (nothing in second 1): second 0 is a's, but b may add to it.
        a.at(7 * SEC, &shared).delivered(90_000);
        assert!(lock(&shared).done.is_empty());
        b.at(6 * SEC, &shared).acked(2_000);
        assert_eq!(lock(&shared).done.len(), 1, "second 0 is final");
        assert_eq!(
            lock(&shared).open.len(),
            0,
            "a has not handed second 2 over yet"
        );
        a.finish(&shared);
        b.finish(&shared);
        let timeline = lock(&shared);
        assert!(
            timeline.open.is_empty(),
            "all final once every worker finished"
        );
        let seconds = timeline.seconds();
        assert_eq!(seconds.len(), 3);
        assert_eq!((seconds[0].sent, seconds[0].delivered), (1, 2));
        assert_eq!(seconds[0].delivery.max_us / 100, 30);
        assert!(seconds[0].delivery.p50_us >= 990 && seconds[0].delivery.p50_us <= 1_010);
        assert_eq!((seconds[1].acked, seconds[1].ack.p99_us / 100), (1, 20));
        assert_eq!(
            seconds[2].delivery.max_us / 1000,
            90,
            "the spike is in its second"
        );
        assert_eq!(
            seconds[1].delivery,
            Tail::default(),
            "nothing arrived in it"
        );
    }

    #[test]
    fn an_interrupted_run_reports_the_seconds_still_open() {
        let shared = Mutex::new(Timeline::new(2));
        let mut a = Recorder::new(0, 0);
        a.at(0, &shared).sent();
        a.at(SEC, &shared).sent();
        // Worker 1 never recorded anything, so no second is final.
        let seconds = lock(&shared).seconds();
        assert_eq!(seconds.len(), 1);
        assert_eq!(seconds[0].sent, 1);
        let json = seconds[0].to_json();
        assert_eq!(json["delivery"]["p99_us"], 0);
        assert_eq!(json["second"], 0);
    }

    #[test]
    fn a_timeline_with_nothing_recorded_is_empty() {
        assert!(Timeline::new(1).seconds().is_empty());
    }
}
