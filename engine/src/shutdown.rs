//! The process's signals: SIGTERM/SIGINT and SIGHUP are blocked in every thread and taken
//! by the main thread with `sigwait`. SIGTERM/SIGINT start the drain (close 1001, bounded
//! by time); SIGHUP rereads the TLS certificate and key (`--tls-cert`, `--tls-key`).

use nix::sys::signal::{SigSet, Signal};

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread and the threads it spawns later.
pub fn block_signals() -> nix::Result<SigSet> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set.thread_block()?;
    Ok(set)
}

/// Waits for one of the blocked signals.
pub fn wait_for(set: &SigSet) -> nix::Result<Signal> {
    set.wait()
}
