//! Why the store could not do what was asked: a closed set the reactors turn into a
//! client's error text, kept apart from the storage engine's own error types.

use std::{fmt, io};

use crate::protocol::codes::ErrorCode;

/// Why a commit or a read failed. Nothing of a failed commit is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No room: the disk, the quota or the file-size limit is full.
    Full,
    /// Another I/O error.
    Io(io::ErrorKind),
    /// The file holds what this store did not write or cannot read (corruption, a
    /// newer format, a value over the engine's limits).
    Damaged,
    /// The file could not be reopened after an earlier error.
    Closed,
    /// The store has stopped (the gateway is shutting down): nothing reached it.
    Stopped,
    /// In a cluster: NATS is out of reach, so the inbox in JetStream is too.
    Unreachable,
    /// In a cluster: JetStream refused the write or the read (its storage is full, its
    /// stream is missing).
    Refused,
}

impl Failure {
    /// The error code a client is told: `cluster_unavailable` when NATS is out of reach,
    /// else `otherwise`, what the asking path says of its store failing.
    pub fn code_or(self, otherwise: ErrorCode) -> ErrorCode {
        match self {
            Failure::Unreachable => ErrorCode::ClusterUnavailable,
            _ => otherwise,
        }
    }
}

impl From<&io::Error> for Failure {
    fn from(error: &io::Error) -> Failure {
        match error.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => Failure::Full,
            _ => Failure::Io(error.kind()),
        }
    }
}

impl From<redb::Error> for Failure {
    fn from(error: redb::Error) -> Failure {
        match &error {
            redb::Error::Io(io) => Failure::from(io),
            // redb refuses work after an I/O error until the file is reopened.
            redb::Error::PreviousIo => Failure::Closed,
            _ => Failure::Damaged,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Full => f.write_str("the store's disk is full"),
            Failure::Io(kind) => write!(f, "the store's disk failed ({kind})"),
            Failure::Damaged => f.write_str("the store file is damaged"),
            Failure::Closed => {
                f.write_str("the store file could not be reopened after an earlier error")
            }
            Failure::Stopped => f.write_str("the store is shut down"),
            Failure::Unreachable => f.write_str("the cluster (NATS) is out of reach"),
            Failure::Refused => f.write_str("the cluster's JetStream store refused it"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_told_apart() {
        let full = io::Error::from_raw_os_error(libc::EFBIG);
        assert_eq!(Failure::from(&full), Failure::Full);
        let denied = io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(
            Failure::from(&denied),
            Failure::Io(io::ErrorKind::PermissionDenied)
        );
        let corrupt = redb::Error::Corrupted("bad page".into());
        assert_eq!(Failure::from(corrupt), Failure::Damaged);
        assert_eq!(Failure::Full.to_string(), "the store's disk is full");
    }
}
