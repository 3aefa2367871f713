//! Criterion micro-benchmarks of the pieces every message goes through: client frame
//! parsing (with unmasking), frame encoding, masking (word-at-a-time against the byte
//! loop), JSON parsing of our messages (simd-json tape against serde_json), outbound JSON
//! writing, and the mailbox (batched rings against one ring slot per envelope).
//!
//! `cargo bench -p engine --bench hot_paths` (add a filter such as `json` to run a group).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use engine::{
    mailbox::{self, Doorbell, Outbox},
    protocol::{
        inbound::JsonParser,
        outbound::{self, NewMessage},
        Priority,
    },
    ws::{
        frame::{encode_client, encode_text, parse_client_frame},
        mask::{unmask, unmask_reference},
    },
};
use tungstenite::protocol::frame::coding::{Data, OpCode};

/// A `send_message` as the loadgen and typical clients send it.
const SEND_MESSAGE: &[u8] = br#"{"type":"send_message","messageId":"1732370000000-3-12345","receiverId":"user48213","content":"see you at the station at 7, bring the tickets","priority":"normal"}"#;
/// The same with a 4 KiB content: a long message.
fn long_send_message() -> Vec<u8> {
    let content = "x".repeat(4096);
    format!(r#"{{"type":"send_message","messageId":"m-1","receiverId":"user48213","content":"{content}"}}"#)
        .into_bytes()
}

fn frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame");
    for (name, payload) in [
        ("send_message", SEND_MESSAGE.to_vec()),
        ("4KiB", long_send_message()),
    ] {
        let mut wire = Vec::new();
        encode_client(
            OpCode::Data(Data::Text),
            &payload,
            [0x12, 0x34, 0x56, 0x78],
            &mut wire,
        );
        group.throughput(Throughput::Bytes(wire.len() as u64));
        group.bench_function(format!("parse_client/{name}"), |b| {
            b.iter_batched_ref(
                || wire.clone(),
                |buf| black_box(parse_client_frame(buf, 1 << 20).unwrap()),
                BatchSize::SmallInput,
            )
        });
        group.bench_function(format!("encode_text/{name}"), |b| {
            b.iter(|| black_box(encode_text(black_box(&payload))))
        });
    }
    group.finish();
}

fn masking(c: &mut Criterion) {
    let mut group = c.benchmark_group("mask");
    for len in [16usize, 160, 4096, 65536] {
        let mut buf = vec![0xA5u8; len];
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(format!("words/{len}"), |b| {
            b.iter(|| unmask(black_box(&mut buf), [1, 2, 3, 4], 1))
        });
        group.bench_function(format!("bytes/{len}"), |b| {
            b.iter(|| unmask_reference(black_box(&mut buf), [1, 2, 3, 4], 1))
        });
    }
    group.finish();
}

/// The typed form a serde user would write for the same message.
#[derive(serde::Deserialize)]
#[allow(dead_code)] // fields are read by the deserializer only
struct SendMessage<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(rename = "messageId")]
    message_id: &'a str,
    #[serde(rename = "receiverId")]
    receiver_id: &'a str,
    content: &'a str,
    priority: Option<&'a str>,
}

fn json(c: &mut Criterion) {
    let mut group = c.benchmark_group("json");
    group.throughput(Throughput::Bytes(SEND_MESSAGE.len() as u64));
    let mut parser = JsonParser::default();
    group.bench_function("simd_json_tape/send_message", |b| {
        b.iter_batched_ref(
            || SEND_MESSAGE.to_vec(),
            |buf| {
                black_box(parser.parse(buf).is_ok());
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("serde_json_value/send_message", |b| {
        b.iter(|| black_box(serde_json::from_slice::<serde_json::Value>(SEND_MESSAGE).unwrap()))
    });
    group.bench_function("serde_json_typed/send_message", |b| {
        b.iter(|| {
            black_box(
                serde_json::from_slice::<SendMessage>(SEND_MESSAGE)
                    .unwrap()
                    .content
                    .len(),
            )
        })
    });
    let mut out = outbound::OutJson::default();
    let message = NewMessage {
        message_id: "1732370000000-3-12345",
        sender_id: "user1",
        receiver_id: "user48213",
        content: "see you at the station at 7, bring the \"tickets\"",
        message_type: "text",
        priority: Priority::Normal,
        timestamp_ms: 1_732_370_000_000,
        group_id: None,
    };
    group.bench_function("write_new_message/ours", |b| {
        b.iter(|| {
            outbound::new_message(&mut out, black_box(&message));
            black_box(out.json().len())
        })
    });
    group.bench_function("write_new_message/serde_json", |b| {
        b.iter(|| {
            let m = black_box(&message);
            let value = serde_json::json!({"type": "new_message", "messageId": m.message_id,
                "senderId": m.sender_id, "receiverId": m.receiver_id, "content": m.content,
                "messageType": m.message_type, "priority": "normal",
                "timestamp": m.timestamp_ms, "status": "delivered"});
            black_box(serde_json::to_vec(&value).unwrap().len())
        })
    });
    group.finish();
}

/// An item the size of the engine's `Envelope` (64 bytes).
type Item = [u64; 8];
/// Envelopes per batch of work in the mailbox benchmarks.
const BATCH: usize = 64;

fn mailboxes(c: &mut Criterion) {
    let mut group = c.benchmark_group("mailbox");
    group.throughput(Throughput::Elements(BATCH as u64));
    let doorbells = [Doorbell::new().unwrap(), Doorbell::new().unwrap()];
    let (mut producers, mut consumers) = mailbox::rings::<Item>(2);
    let mut outbox = Outbox::new(std::mem::take(&mut producers[0]));
    group.bench_function("batched/push_flush_drain_64", |b| {
        b.iter(|| {
            for i in 0..BATCH {
                outbox.push(1, [i as u64; 8]);
            }
            // The doorbell stays rung (never cleared here), so this measures the rings,
            // not the eventfd syscall both designs make once per batch.
            outbox.flush(&doorbells);
            let mut sum = 0;
            mailbox::drain(&mut consumers[1], |item| sum += item[0]);
            black_box(sum)
        })
    });
    let (mut single_tx, mut single_rx) = rtrb::RingBuffer::<Item>::new(1024);
    group.bench_function("per_envelope/push_pop_64", |b| {
        b.iter(|| {
            for i in 0..BATCH {
                single_tx.push([i as u64; 8]).unwrap();
            }
            let mut sum = 0;
            while let Ok(item) = single_rx.pop() {
                sum += item[0];
            }
            black_box(sum)
        })
    });
    group.finish();
}

criterion_group!(benches, frames, masking, json, mailboxes);
criterion_main!(benches);
