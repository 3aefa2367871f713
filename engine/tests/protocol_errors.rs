//! Errors and limits of PROTOCOL.md: error replies keep the connection; frame faults close
//! it with the documented code.

mod common;

use common::{on_both_drivers, raw_frame, Server};
use serde_json::json;
use tungstenite::{
    protocol::frame::{
        coding::{Data, OpCode},
        Frame,
    },
    Message,
};

#[test]
fn bad_json_unknown_types_and_bad_fields_get_errors_and_the_connection_stays() {
    on_both_drivers(|driver| {
        let server = Server::start(driver, &[]);
        let mut client = server.login("alice", "phone");
        let cases = [
            ("{not json", "bad_json"),
            ("[1,2,3]", "bad_json"),
            (r#"{"type":"dance"}"#, "unknown_type"),
            (r#"{"no":"type"}"#, "bad_request"),
            (
                r#"{"type":"send_message","messageId":"m1","receiverId":"b"}"#,
                "bad_request",
            ),
            (
                r#"{"type":"send_message","messageId":"m1","receiverId":5,"content":"x"}"#,
                "bad_request",
            ),
            (
                r#"{"type":"typing","receiverId":"b","isTyping":"yes"}"#,
                "bad_request",
            ),
            (
                r#"{"type":"presence_subscribe","userIds":"b"}"#,
                "bad_request",
            ),
        ];
        for (text, code) in cases {
            client.send_text(text);
            let reply = client.recv();
            assert_eq!(reply["type"], "error", "{text}");
            assert_eq!(reply["code"], code, "{text}: {reply}");
            assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
        client.send(&json!({"type":"ping","ts":"still-open"}));
        assert_eq!(client.recv()["ts"], "still-open");
    });
}

#[test]
fn oversize_messages_close_with_1009() {
    on_both_drivers(|driver| {
        let server = Server::start(driver, &["--max-message-bytes", "1024"]);
        let mut client = server.login("alice", "phone");
        client.send_text(&"x".repeat(2000));
        assert_eq!(client.expect_close(), 1009);
        // Fragments that add up to too much are refused as well.
        let mut client = server.login("bob", "phone");
        client.write_raw(&raw_frame(0x01, &[b' '; 600]));
        client.write_raw(&raw_frame(0x80, &[b' '; 600]));
        assert_eq!(client.expect_close(), 1009);
    });
}

#[test]
fn binary_frames_close_with_1003() {
    on_both_drivers(|driver| {
        let server = Server::start(driver, &[]);
        let mut client = server.login("alice", "phone");
        client.ws.send(Message::binary(vec![1, 2, 3])).unwrap();
        assert_eq!(client.expect_close(), 1003);
    });
}

#[test]
fn invalid_utf8_closes_with_1007() {
    on_both_drivers(|driver| {
        let server = Server::start(driver, &[]);
        let mut client = server.login("alice", "phone");
        client.write_raw(&raw_frame(0x81, &[b'"', 0xff, 0xfe, b'"']));
        assert_eq!(client.expect_close(), 1007);
    });
}

#[test]
fn protocol_violations_close_with_1002() {
    on_both_drivers(|driver| {
        let server = Server::start(driver, &[]);
        let violations: [(&str, Vec<u8>); 5] = [
            ("unmasked frame", vec![0x81, 0x02, b'{', b'}']),
            ("reserved opcode", raw_frame(0x83, b"x")),
            ("reserved bit", raw_frame(0xC1, b"{}")),
            ("continuation without a message", raw_frame(0x80, b"x")),
            ("fragmented ping", raw_frame(0x09, b"")),
        ];
        for (what, bytes) in violations {
            let mut client = server.login("alice", &what.replace(" ", "-"));
            client.write_raw(&bytes);
            assert_eq!(client.expect_close(), 1002, "{what}");
        }
    });
}

#[test]
fn fragmented_messages_are_reassembled_with_control_frames_between() {
    on_both_drivers(|driver| {
        let server = Server::start(driver, &[]);
        let mut client = server.login("alice", "phone");
        client.write_raw(&raw_frame(0x01, br#"{"type":"pi"#));
        client.write_raw(&raw_frame(0x89, b"hello")); // a ping between fragments
        client.write_raw(&raw_frame(0x00, br#"ng","ts":"#));
        client.write_raw(&raw_frame(0x80, b"42}"));
        match client.ws.read().unwrap() {
            Message::Pong(payload) => assert_eq!(&payload[..], b"hello"),
            other => panic!("expected the pong first, got {other:?}"),
        }
        assert_eq!(client.recv()["ts"], 42);
        // A new text frame inside a fragmented message is a protocol error.
        client.write_raw(&raw_frame(0x01, b"{"));
        client
            .ws
            .send(Message::Frame(Frame::message(
                b"{}".to_vec(),
                OpCode::Data(Data::Text),
                true,
            )))
            .unwrap();
        assert_eq!(client.expect_close(), 1002);
    });
}

#[test]
fn a_frame_split_across_many_writes_is_read_whole() {
    let server = Server::start(common::Driver::IoUring, &[]);
    let mut client = server.login("alice", "phone");
    let frame = raw_frame(0x81, br#"{"type":"ping","ts":7}"#);
    for byte in frame {
        client.write_raw(&[byte]);
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(client.recv()["ts"], 7);
}

#[test]
fn the_close_handshake_is_answered_with_the_same_code() {
    on_both_drivers(|driver| {
        let server = Server::start(driver, &[]);
        let mut client = server.login("alice", "phone");
        client.write_raw(&raw_frame(0x88, &[0x0f, 0xa0, b'b', b'y', b'e'])); // 4000 "bye"
        assert_eq!(client.expect_close(), 4000);
        // A close with a reserved code is a protocol error.
        let mut client = server.login("bob", "phone");
        client.write_raw(&raw_frame(0x88, &[0x03, 0xed]));
        assert_eq!(client.expect_close(), 1002);
    });
}

#[test]
fn websocket_pings_get_pongs() {
    on_both_drivers(|driver| {
        let server = Server::start(driver, &[]);
        let mut client = server.connect();
        client
            .ws
            .send(Message::Ping(b"abc".to_vec().into()))
            .unwrap();
        match client.ws.read().unwrap() {
            Message::Pong(payload) => assert_eq!(&payload[..], b"abc"),
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn an_abrupt_disconnect_takes_the_user_offline() {
    on_both_drivers(|driver| {
        let server = Server::start(driver, &[]);
        let mut bob = server.login("bob", "phone");
        let alice = server.login("alice", "phone");
        drop(alice); // TCP close without a close frame
        server.wait_offline("alice");
        bob.send(
            &json!({"type":"send_message","messageId":"m","receiverId":"alice","content":"x"}),
        );
        // Alice is offline now: the message waits in her queue.
        assert_eq!(bob.recv()["status"], "queued");
    });
}
