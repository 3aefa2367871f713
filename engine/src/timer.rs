//! A coarse per-reactor timer wheel: deadlines for auth, idle HTTP and closing handshakes;
//! and [`Sweep`], the walk over a reactor's slots the idle and session checks share.
//!
//! One wheel per reactor, never a timer per connection. Entries exist only while a
//! connection has a deadline pending; an idle authenticated connection has none.

/// Resolution of the wheel: deadlines fire up to one tick late.
pub const TICK_MS: u64 = 100;
/// Slots in the wheel; a deadline further than this many ticks waits extra rounds.
const SLOTS: usize = 512;

/// A deadline for one connection, checked against the connection's own deadline when it
/// fires (so a re-armed or closed connection ignores stale entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The connection's slab key.
    pub slot: usize,
    /// The connection's generation, so a reused slot is not hit.
    pub generation: u32,
    /// The tick at which this entry is due.
    pub due_tick: u64,
}

/// The wheel.
pub struct TimerWheel {
    slots: Vec<Vec<Entry>>,
    now_tick: u64,
}

impl Default for TimerWheel {
    fn default() -> Self {
        TimerWheel {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            now_tick: 0,
        }
    }
}

impl TimerWheel {
    /// The current tick.
    pub fn now_tick(&self) -> u64 {
        self.now_tick
    }

    /// The first tick at least `after_ms` from now. Part of the current tick has gone
    /// already, so that is one tick more than `after_ms` holds: a deadline never fires
    /// early (a 300 ms one set just before a tick fired after 200 ms), and at most one
    /// tick late.
    pub fn tick_after(&self, after_ms: u64) -> u64 {
        self.now_tick + after_ms.div_ceil(TICK_MS) + 1
    }

    /// Schedules `entry`.
    pub fn insert(&mut self, entry: Entry) {
        debug_assert!(entry.due_tick > self.now_tick);
        self.slots[(entry.due_tick % SLOTS as u64) as usize].push(entry);
    }

    /// Advances one tick and moves the entries now due into `due` (cleared first).
    pub fn advance(&mut self, due: &mut Vec<Entry>) {
        due.clear();
        self.now_tick += 1;
        let now = self.now_tick;
        let slot = &mut self.slots[(now % SLOTS as u64) as usize];
        // Entries a whole round ahead stay; the rest are due.
        slot.retain(|e| {
            if e.due_tick <= now {
                due.push(*e);
                false
            } else {
                true
            }
        });
        if slot.is_empty() && slot.capacity() > 64 {
            slot.shrink_to_fit();
        }
    }
}

/// A walk over a reactor's slots that sees every slot once per period, a share of it each
/// tick (the idle and session sweeps: a timer per connection would cost bytes each).
#[derive(Debug, Default)]
pub struct Sweep {
    /// The slot the next share starts at.
    cursor: usize,
    /// Slot looks earned but not made (less than one period's worth).
    credit: u64,
}

impl Sweep {
    /// This tick's share of a slab of `capacity` slots: where it starts and how many
    /// slots it covers (wrapping), so that `capacity` looks are made per `period_ticks`
    /// ticks however the two compare (a small slab is not swept faster than the period).
    pub fn next_share(&mut self, capacity: usize, period_ticks: u64) -> (usize, usize) {
        if capacity == 0 {
            return (0, 0);
        }
        self.credit += capacity as u64;
        let share = (self.credit / period_ticks) as usize;
        self.credit %= period_ticks;
        let start = self.cursor % capacity;
        self.cursor = (start + share) % capacity;
        (start, share)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_fire_on_their_tick_and_not_before() {
        let mut wheel = TimerWheel::default();
        let near = Entry {
            slot: 1,
            generation: 1,
            due_tick: wheel.tick_after(250),
        };
        let far = Entry {
            slot: 2,
            generation: 1,
            due_tick: wheel.tick_after(TICK_MS * (SLOTS as u64 + 3)),
        };
        wheel.insert(near);
        wheel.insert(far);
        let mut due = Vec::new();
        let mut fired = Vec::new();
        for _ in 0..SLOTS + 4 {
            wheel.advance(&mut due);
            fired.extend(due.iter().map(|e| (e.slot, wheel.now_tick())));
        }
        // 250 ms is 3 ticks, and one more for the part of the current tick already gone.
        assert_eq!(fired, vec![(1, 4), (2, SLOTS as u64 + 4)]);
    }
}
