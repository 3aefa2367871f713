//! The handshake's traffic secrets, which a session needs for key updates and rustls hands
//! out only through its `KeyLog` hook: [`key_log`] goes in the config, and the secrets
//! logged while a [`crate::Handshake`] call runs on this thread are that handshake's.

use std::{cell::RefCell, sync::Arc};

use rustls::KeyLog;

/// The labels of the first application traffic secrets (RFC 8446 §7.1, as key logs name
/// them).
const CLIENT: &str = "CLIENT_TRAFFIC_SECRET_0";
const SERVER: &str = "SERVER_TRAFFIC_SECRET_0";

/// Both directions' first application traffic secrets, once the handshake has made them.
#[derive(Default)]
pub(crate) struct TrafficSecrets {
    pub(crate) client: Option<Vec<u8>>,
    pub(crate) server: Option<Vec<u8>>,
}

impl TrafficSecrets {
    /// Keeps what `other` has.
    pub(crate) fn merge(&mut self, mut other: TrafficSecrets) {
        if other.client.is_some() {
            self.client = other.client.take();
        }
        if other.server.is_some() {
            self.server = other.server.take();
        }
    }
}

impl Drop for TrafficSecrets {
    fn drop(&mut self) {
        for secret in [&mut self.client, &mut self.server].into_iter().flatten() {
            secret.fill(0);
        }
    }
}

thread_local! {
    static CAPTURED: RefCell<TrafficSecrets> = RefCell::default();
}

/// What was logged on this thread since the last call.
pub(crate) fn take() -> TrafficSecrets {
    CAPTURED.with(|captured| std::mem::take(&mut *captured.borrow_mut()))
}

/// The key log every config used with a [`crate::Handshake`] must have: it keeps the two
/// traffic secrets for the session, on the thread that runs the handshake, and writes
/// nothing anywhere.
pub fn key_log() -> Arc<dyn KeyLog> {
    Arc::new(CaptureSecrets)
}

#[derive(Debug)]
struct CaptureSecrets;

impl KeyLog for CaptureSecrets {
    fn will_log(&self, label: &str) -> bool {
        label == CLIENT || label == SERVER
    }

    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        CAPTURED.with(|captured| {
            let mut captured = captured.borrow_mut();
            match label {
                CLIENT => captured.client = Some(secret.to_vec()),
                SERVER => captured.server = Some(secret.to_vec()),
                _ => {}
            }
        });
    }
}
