//! Graceful shutdown: SIGTERM/SIGINT are blocked in every thread and taken by the main
//! thread with `sigwait`, which then starts the drain (close 1001, bounded by time).

use nix::sys::signal::{SigSet, Signal};

/// Blocks SIGTERM and SIGINT in the calling thread and the threads it spawns later.
pub fn block_termination_signals() -> nix::Result<SigSet> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block()?;
    Ok(set)
}

/// Waits for one of the blocked signals.
pub fn wait_for(set: &SigSet) -> nix::Result<Signal> {
    set.wait()
}
