//! Requests a reactor sends to several homes and completes once each has answered: a
//! `presence_state` gathered from the users' homes, a group post's member homes, an API
//! broadcast's counts. One table for every kind: what differs is what the answers fold
//! into.

use slab::Slab;

use super::ConnAddr;

/// One request waiting for its homes.
#[derive(Debug)]
pub struct Gather<T> {
    /// The connection answered when the last home has answered.
    pub requester: ConnAddr,
    /// Homes that have not answered yet.
    awaiting: usize,
    /// The answers so far, folded.
    pub so_far: T,
}

/// Requests waiting for their homes, by the id each home is told.
#[derive(Debug)]
pub struct Gathers<T> {
    waiting: Slab<Gather<T>>,
}

impl<T> Default for Gathers<T> {
    fn default() -> Self {
        Gathers {
            waiting: Slab::new(),
        }
    }
}

impl<T> Gathers<T> {
    /// Starts a request of `requester` that `awaiting` homes will answer; returns its id.
    pub fn start(&mut self, requester: ConnAddr, awaiting: usize, so_far: T) -> u32 {
        let gather = Gather {
            requester,
            awaiting,
            so_far,
        };
        self.waiting.insert(gather) as u32
    }

    /// Sets how many homes will answer request `id` (for a request whose id must be in
    /// what it sends before it knows how many it sends to).
    pub fn expect(&mut self, id: u32, awaiting: usize) {
        if let Some(gather) = self.waiting.get_mut(id as usize) {
            gather.awaiting = awaiting;
        }
    }

    /// One home's answer to request `id`, folded in by `fold`; the last one completes the
    /// request and returns it. `None` for an unknown id or while others are awaited.
    pub fn answer(&mut self, id: u32, fold: impl FnOnce(&mut T)) -> Option<Gather<T>> {
        let gather = self.waiting.get_mut(id as usize)?;
        fold(&mut gather.so_far);
        gather.awaiting = gather.awaiting.saturating_sub(1);
        (gather.awaiting == 0).then(|| self.waiting.remove(id as usize))
    }

    /// Completes request `id` at once (one that no home was asked).
    pub fn finish(&mut self, id: u32) -> Option<Gather<T>> {
        self.waiting.try_remove(id as usize)
    }

    /// Request `id`, while it waits.
    pub fn get(&self, id: u32) -> Option<&Gather<T>> {
        self.waiting.get(id as usize)
    }

    /// Every request still waiting.
    pub fn waiting_mut(&mut self) -> impl Iterator<Item = &mut Gather<T>> {
        self.waiting.iter_mut().map(|(_, gather)| gather)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::tests::addr;

    #[test]
    fn the_last_answer_completes_and_folds_every_answer() {
        let mut gathers = Gathers::default();
        let id = gathers.start(addr(1), 3, 0u32);
        assert!(gathers.answer(id, |sum| *sum += 1).is_none());
        assert!(gathers.answer(id, |sum| *sum += 2).is_none());
        let done = gathers.answer(id, |sum| *sum += 3).unwrap();
        assert_eq!((done.requester, done.so_far), (addr(1), 6));
        assert!(gathers.answer(id, |_| {}).is_none(), "an id answers once");
    }

    #[test]
    fn a_request_may_learn_its_count_after_it_started() {
        let mut gathers = Gathers::default();
        let id = gathers.start(addr(2), 0, ());
        gathers.expect(id, 1);
        assert!(gathers.answer(id, |_| {}).is_some());
        let none_asked = gathers.start(addr(3), 0, ());
        assert!(gathers.finish(none_asked).is_some());
    }
}
