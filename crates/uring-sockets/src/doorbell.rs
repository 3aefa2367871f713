//! A thread's wake-up from other threads: an eventfd in its readiness set, rung at most
//! once per wake.

use std::{
    io,
    os::fd::RawFd,
    sync::atomic::{AtomicBool, Ordering},
};

/// A thread's wake-up: an eventfd, created before any thread unshares its fd table so the
/// same number is valid in every table, plus a flag so a batch of work rings it at most
/// once.
#[derive(Debug)]
pub struct Doorbell {
    fd: RawFd,
    notified: AtomicBool,
}

impl Doorbell {
    /// Creates a non-blocking eventfd.
    pub fn new() -> io::Result<Doorbell> {
        // SAFETY: eventfd takes no pointers; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Doorbell {
            fd,
            notified: AtomicBool::new(false),
        })
    }

    /// The eventfd, for the owner's readiness set.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Wakes the owner unless a wake-up is already pending.
    pub fn ring(&self) {
        if !self.notified.swap(true, Ordering::AcqRel) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to our eventfd. A failure can only be
            // EAGAIN at counter overflow, which still leaves the owner woken.
            unsafe { libc::write(self.fd, (&one as *const u64).cast(), 8) };
        }
    }

    /// Whether a wake-up is pending (rung and not yet cleared).
    pub fn is_rung(&self) -> bool {
        self.notified.load(Ordering::Acquire)
    }

    /// Called by the owner when woken, before it drains its rings: later pushes ring again.
    pub fn clear(&self) {
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our non-blocking eventfd.
        unsafe { libc::read(self.fd, (&mut count as *mut u64).cast(), 8) };
        // Acquire pairs with the producer's release in `ring`, so its pushes are visible.
        self.notified.swap(false, Ordering::AcqRel);
    }
}

impl Drop for Doorbell {
    fn drop(&mut self) {
        // SAFETY: we own this fd; reactors hold their own copies in their own tables.
        unsafe { libc::close(self.fd) };
    }
}
