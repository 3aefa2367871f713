//! Failpoints: faults a test switches on through the environment, to prove that the
//! engine contains them. Off unless `ENGINE_FAILPOINT` is set; one comparison per client
//! message when off.
//!
//! - `panic_on_message_from:USER`: handling any message from USER panics (the connection
//!   is closed with 1011; everything else goes on).
//! - `kill_reactor_on_message_from:USER`: a message from USER makes its reactor panic
//!   outside any handler (the engine reports it and exits with code 70).
//! - `stall_reactor_on_message_from:USER`: a message from USER blocks its reactor for
//!   [`STALL`], as a reactor stuck behind a slow disk or a long computation would be; its
//!   peers' rings to it fill up, which is how mailbox backpressure is tested.
//! - `failed_checkpoints:N`: the store's first N checkpoints fail as on a full disk (what
//!   the retry of a checkpoint, and reads from memory meanwhile, are tested against).
//! - `slow_commit_ms:N`: every store commit takes N ms more, as on a slow disk (what a
//!   retry of a message still waiting for its commit is tested against).
//! - `refuse_handoffs:`: every socket handoff to a home reactor fails as a full queue would,
//!   so authenticated connections stay where they were accepted (what the fallback of
//!   `--connections-at-home` is tested against).

/// The environment variable that sets a failpoint.
pub const VARIABLE: &str = "ENGINE_FAILPOINT";

/// How long `stall_reactor_on_message_from` blocks the reactor.
pub const STALL: std::time::Duration = std::time::Duration::from_secs(3);

/// A fault to inject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failpoint {
    /// Panic while handling a message from this user.
    PanicOnMessageFrom(String),
    /// Panic in the reactor's loop after a message from this user.
    KillReactorOnMessageFrom(String),
    /// Block the reactor for [`STALL`] on a message from this user.
    StallReactorOnMessageFrom(String),
    /// Make every store commit this many ms slower.
    SlowCommitMs(u64),
    /// Fail the store's first this many checkpoints.
    FailedCheckpoints(u32),
    /// Fail every socket handoff between reactors.
    RefuseHandoffs,
}

impl Failpoint {
    /// How many of the store's first checkpoints fail (zero unless `failed_checkpoints`).
    pub fn failed_checkpoints(failpoint: Option<&Failpoint>) -> u32 {
        match failpoint {
            Some(Failpoint::FailedCheckpoints(n)) => *n,
            _ => 0,
        }
    }

    /// The delay added to each store commit (zero unless `slow_commit_ms`).
    pub fn commit_delay(failpoint: Option<&Failpoint>) -> std::time::Duration {
        match failpoint {
            Some(Failpoint::SlowCommitMs(ms)) => std::time::Duration::from_millis(*ms),
            _ => std::time::Duration::ZERO,
        }
    }
}

impl Failpoint {
    /// Reads [`VARIABLE`]; an unknown value is an error, so a typo cannot pass silently.
    pub fn from_env() -> Result<Option<Failpoint>, String> {
        let Ok(value) = std::env::var(VARIABLE) else {
            return Ok(None);
        };
        Failpoint::parse(&value).map(Some)
    }

    fn parse(value: &str) -> Result<Failpoint, String> {
        match value.split_once(':') {
            Some(("panic_on_message_from", user)) if !user.is_empty() => {
                Ok(Failpoint::PanicOnMessageFrom(user.to_owned()))
            }
            Some(("kill_reactor_on_message_from", user)) if !user.is_empty() => {
                Ok(Failpoint::KillReactorOnMessageFrom(user.to_owned()))
            }
            Some(("stall_reactor_on_message_from", user)) if !user.is_empty() => {
                Ok(Failpoint::StallReactorOnMessageFrom(user.to_owned()))
            }
            Some(("failed_checkpoints", n)) if n.parse::<u32>().is_ok() => {
                Ok(Failpoint::FailedCheckpoints(n.parse().unwrap_or_default()))
            }
            Some(("slow_commit_ms", ms)) if ms.parse::<u64>().is_ok() => {
                Ok(Failpoint::SlowCommitMs(ms.parse().unwrap_or_default()))
            }
            Some(("refuse_handoffs", "")) => Ok(Failpoint::RefuseHandoffs),
            _ => Err(format!(
                "{VARIABLE}={value:?}: expected panic_on_message_from:USER, \
                 kill_reactor_on_message_from:USER, stall_reactor_on_message_from:USER, \
                 failed_checkpoints:N, slow_commit_ms:N or refuse_handoffs:"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failpoints_parse_and_typos_are_refused() {
        assert_eq!(
            Failpoint::parse("panic_on_message_from:mallory"),
            Ok(Failpoint::PanicOnMessageFrom("mallory".into()))
        );
        assert_eq!(
            Failpoint::parse("kill_reactor_on_message_from:x"),
            Ok(Failpoint::KillReactorOnMessageFrom("x".into()))
        );
        assert_eq!(
            Failpoint::parse("stall_reactor_on_message_from:y"),
            Ok(Failpoint::StallReactorOnMessageFrom("y".into()))
        );
        assert_eq!(
            Failpoint::parse("failed_checkpoints:3"),
            Ok(Failpoint::FailedCheckpoints(3))
        );
        assert_eq!(
            Failpoint::parse("slow_commit_ms:250"),
            Ok(Failpoint::SlowCommitMs(250))
        );
        assert_eq!(
            Failpoint::parse("refuse_handoffs:"),
            Ok(Failpoint::RefuseHandoffs)
        );
        assert!(Failpoint::parse("slow_commit_ms:soon").is_err());
        assert!(Failpoint::parse("panic_on_message_from:").is_err());
        assert!(Failpoint::parse("panic_on_mesage_from:x").is_err());
    }
}
