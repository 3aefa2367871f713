//! Handing sockets from one thread to another when each has its own fd table.
//!
//! A thread that unshared its fd table cannot name another thread's fds, so a socket moves
//! the way fds move between processes: as `SCM_RIGHTS` on a Unix socket. Each receiving
//! thread has a [`Handoff`], a `SOCK_SEQPACKET` pair created before any thread unshares
//! (like a [`crate::Doorbell`]), so both ends have the same numbers in every table. A
//! sender releases its sockets into its own table ([`crate::Sockets::release`]), sends up
//! to [`HANDOFF_BATCH_MAX`] of them in one message, each with a 64-bit id, and closes its
//! copies; the receiver takes them with their ids and adopts them.
//!
//! The message carries no other state: the caller sends that its own way (a mailbox), after
//! the sockets, and the receiver pairs the two by id. Sending first means that by the time
//! the receiver learns of a socket, the socket is already in its queue.

use std::{
    io::{self, IoSlice, IoSliceMut},
    os::fd::{FromRawFd, OwnedFd, RawFd},
};

use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, socketpair, sockopt, AddressFamily, ControlMessage,
    ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};

/// The most sockets one [`Handoff::send`] carries (the kernel's `SCM_MAX_FD` is 253).
pub const HANDOFF_BATCH_MAX: usize = 64;
/// Send buffer of the sending end: what may wait for a busy receiver. A message of 64
/// sockets takes about 1.3 KB of it: the kernel's default (208 KiB) holds 167 of them,
/// which a connect storm at a million filled while a receiver's turn lasted seconds; this
/// (doubled by the kernel) holds 6,554 (`a_handoff_holds_many_more_messages_than_a_default_buffer`).
const SEND_BUFFER_BYTES: usize = 4 << 20;

/// A receiving thread's end and everyone's sending end of one `SOCK_SEQPACKET` pair.
#[derive(Debug)]
pub struct Handoff {
    receiver: RawFd,
    sender: RawFd,
}

impl Handoff {
    /// Creates the pair, non-blocking. Call it before any thread unshares its fd table.
    pub fn new() -> io::Result<Handoff> {
        let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
        let (receiver, sender) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, flags)?;
        // Past net.core.wmem_max only with CAP_NET_ADMIN; else as much as that allows.
        if setsockopt(&sender, sockopt::SndBufForce, &SEND_BUFFER_BYTES).is_err() {
            setsockopt(&sender, sockopt::SndBuf, &SEND_BUFFER_BYTES)?;
        }
        Ok(Handoff {
            receiver: std::os::fd::IntoRawFd::into_raw_fd(receiver),
            sender: std::os::fd::IntoRawFd::into_raw_fd(sender),
        })
    }

    /// Sends `sockets`, each an id and an fd of the calling thread's table, in one message.
    /// On success the receiver's queue holds its own references and the caller closes its
    /// fds; on error (`WouldBlock` when the receiver's queue is full) nothing was sent and
    /// the fds are still only the caller's.
    pub fn send(&self, sockets: &[(u64, RawFd)]) -> io::Result<()> {
        assert!(
            !sockets.is_empty() && sockets.len() <= HANDOFF_BATCH_MAX,
            "a handoff carries 1 to {HANDOFF_BATCH_MAX} sockets"
        );
        let mut ids = [0u8; 8 * HANDOFF_BATCH_MAX];
        let mut fds = [0 as RawFd; HANDOFF_BATCH_MAX];
        for (i, &(id, fd)) in sockets.iter().enumerate() {
            ids[i * 8..i * 8 + 8].copy_from_slice(&id.to_le_bytes());
            fds[i] = fd;
        }
        let payload = [IoSlice::new(&ids[..sockets.len() * 8])];
        let rights = [ControlMessage::ScmRights(&fds[..sockets.len()])];
        sendmsg::<UnixAddr>(self.sender, &payload, &rights, MsgFlags::MSG_DONTWAIT, None)?;
        Ok(())
    }

    /// Takes every socket waiting for this thread into `out`, with its id, as fds of the
    /// calling thread's table. Called only by the receiving thread.
    pub fn receive(&self, out: &mut Vec<(u64, OwnedFd)>) -> io::Result<()> {
        let mut ids = [0u8; 8 * HANDOFF_BATCH_MAX];
        let mut control = nix::cmsg_space!([RawFd; HANDOFF_BATCH_MAX]);
        loop {
            let mut payload = [IoSliceMut::new(&mut ids)];
            let message = match recvmsg::<UnixAddr>(
                self.receiver,
                &mut payload,
                Some(&mut control),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(message) => message,
                Err(nix::errno::Errno::EAGAIN) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            let mut fds: Vec<OwnedFd> = Vec::new();
            for cmsg in message.cmsgs()? {
                if let ControlMessageOwned::ScmRights(received) = cmsg {
                    // SAFETY: the kernel installed these fds in our table just now; nothing
                    // else owns them.
                    fds.extend(
                        received
                            .into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            let truncated = message.flags.contains(MsgFlags::MSG_CTRUNC);
            let count = message.bytes / 8;
            if truncated || fds.len() != count {
                // Dropping `fds` closes what did come: those connections end, nothing
                // else is confused with them.
                return Err(io::Error::other(format!(
                    "a handoff brought {} sockets for {count} ids",
                    fds.len()
                )));
            }
            let ids = ids[..count * 8]
                .chunks_exact(8)
                .map(|id| u64::from_le_bytes(id.try_into().expect("8 bytes")));
            out.extend(ids.zip(fds));
        }
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        // SAFETY: we own both fds; threads that unshared hold their own copies.
        unsafe {
            libc::close(self.receiver);
            libc::close(self.sender);
        }
    }
}
