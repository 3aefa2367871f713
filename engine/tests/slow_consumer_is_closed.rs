//! A client that does not read is cut off with 4002 (what was queued for it is dropped,
//! but the rest of a frame it had begun, then the close frame follows) without slowing
//! anyone else down.

mod common;

use common::{on_both_drivers, Server};
use serde_json::json;

#[test]
fn a_receiver_that_never_reads_is_dropped_and_others_carry_on() {
    on_both_drivers(|driver| {
        let server = Server::start(driver, &[]);
        let mut sender = server.login("sender", "phone");
        let mut stalled = server.login("stalled", "phone"); // does not read until the end
        let mut healthy = server.login("healthy", "phone");
        let content = "x".repeat(60_000);
        let mut dropped_after = None;
        // Bounded: 1,000 × 60 KB is far past the 4 MiB queue plus any kernel buffering.
        for i in 0..1000 {
            sender.send(&json!({"type":"send_message","messageId":format!("m{i}"),"receiverId":"stalled","content":content}));
            let reply = sender.recv();
            // Once dropped, the stalled receiver is offline and messages are queued.
            if reply["status"] == "queued" {
                dropped_after = Some(i);
                break;
            }
            assert_eq!(reply["status"], "sent", "{reply}");
        }
        assert!(
            dropped_after.is_some(),
            "the stalled receiver was never dropped"
        );
        // Reading now (within the close timeout), the stalled client gets what the kernel
        // held, the rest of the frame it had begun, and the close frame.
        assert_eq!(stalled.read_to_end(), Some(4002));
        assert_eq!(server.counted_by_code("engine_closes_total", "4002"), 1);
        // Everyone else is served as before.
        sender.send(&json!({"type":"send_message","messageId":"after","receiverId":"healthy","content":"still here"}));
        assert_eq!(healthy.recv_type("new_message")["content"], "still here");
    });
}
