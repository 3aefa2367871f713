//! A minimal chat relay as most Rust services would write it: tokio's multi-threaded
//! runtime, tokio-tungstenite, one task per connection plus one writer task fed by an
//! unbounded channel, and a user → devices registry behind an `RwLock`.
//!
//! Speaks the subset of the engine's protocol that benches/compare.sh drives: `auth`
//! (open mode), `ping`, `send_message` routed to every device of the receiver with a
//! `message_ack` (or `peer_offline`), and the plain echo scenario (text that is not a JSON
//! object comes back as it was).
//!
//! Usage: peer-tokio-tungstenite 127.0.0.1:PORT

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_tungstenite::tungstenite::Message;

type Outbound = mpsc::UnboundedSender<Message>;
/// userId → (connection id, that connection's outbound channel) for each device.
type Registry = Arc<RwLock<HashMap<String, Vec<(u64, Outbound)>>>>;

#[tokio::main]
async fn main() {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18090".into())
        .parse()
        .expect("usage: peer-tokio-tungstenite ADDR");
    let listener = TcpListener::bind(addr).await.expect("bind");
    println!("listening on {}", listener.local_addr().expect("local addr"));
    let registry = Registry::default();
    let ids = Arc::new(AtomicU64::new(0));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue; // out of fds, say: keep serving the ones we have
        };
        let id = ids.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(serve(stream, id, registry.clone()));
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn serve(stream: TcpStream, id: u64, registry: Registry) {
    let _ = stream.set_nodelay(true);
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            if sink.send(message).await.is_err() {
                break;
            }
        }
    });
    let mut user: Option<String> = None;
    while let Some(Ok(message)) = source.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let parsed: Option<Value> = serde_json::from_str(&text).ok().filter(Value::is_object);
        let Some(request) = parsed else {
            let _ = tx.send(Message::Text(text)); // the echo scenario
            continue;
        };
        match request["type"].as_str() {
            Some("auth") => {
                let Some(user_id) = request["userId"].as_str() else {
                    continue;
                };
                registry
                    .write()
                    .unwrap()
                    .entry(user_id.to_owned())
                    .or_default()
                    .push((id, tx.clone()));
                let reply = json!({"type": "auth_success", "userId": user_id,
                    "deviceId": request["deviceId"], "timestamp": now_ms()});
                let _ = tx.send(Message::Text(reply.to_string()));
                user = Some(user_id.to_owned());
            }
            Some("ping") => {
                let reply = json!({"type": "pong", "ts": request["ts"], "timestamp": now_ms()});
                let _ = tx.send(Message::Text(reply.to_string()));
            }
            Some("send_message") => {
                let Some(sender) = user.as_deref() else {
                    continue;
                };
                let receiver = request["receiverId"].as_str().unwrap_or_default();
                let frame = json!({"type": "new_message", "messageId": request["messageId"],
                    "senderId": sender, "receiverId": receiver, "content": request["content"],
                    "timestamp": now_ms(), "status": "delivered"})
                .to_string();
                let delivered = match registry.read().unwrap().get(receiver) {
                    Some(devices) => {
                        for (_, device) in devices {
                            let _ = device.send(Message::Text(frame.clone()));
                        }
                        !devices.is_empty()
                    }
                    None => false,
                };
                let reply = if delivered {
                    json!({"type": "message_ack", "messageId": request["messageId"],
                        "status": "sent", "timestamp": now_ms()})
                } else {
                    json!({"type": "error", "code": "peer_offline",
                        "message": "no device online", "ref": request["messageId"]})
                };
                let _ = tx.send(Message::Text(reply.to_string()));
            }
            _ => {}
        }
    }
    if let Some(user) = user {
        let mut registry = registry.write().unwrap();
        if let Some(devices) = registry.get_mut(&user) {
            devices.retain(|(device, _)| *device != id);
            if devices.is_empty() {
                registry.remove(&user);
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}
