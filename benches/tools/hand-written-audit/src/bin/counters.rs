// What one counter increment costs on a reactor's hot path: the engine's single-writer
// relaxed load + store, an atomic fetch_add (what a shared metrics registry does), and
// prometheus-client's labelled Family (a lookup under a lock, then fetch_add); then the
// fetch_add shared by two threads on this 2-core box (two reactors on one registry).
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    reactor: u16,
    kind: &'static str,
}

const N: u64 = 50_000_000;

fn time(name: &str, n: u64, f: impl FnOnce()) {
    let start = Instant::now();
    f();
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    println!("{name:<58} {ns:>7.2} ns an increment");
}

fn main() {
    let c = AtomicU64::new(0);
    time("single writer: relaxed load + store (the engine)", N, || {
        for _ in 0..N {
            let c = black_box(&c);
            c.store(c.load(Relaxed) + 1, Relaxed);
        }
    });
    time("fetch_add, one thread", N, || {
        for _ in 0..N {
            black_box(&c).fetch_add(1, Relaxed);
        }
    });
    let counter = Counter::<u64>::default();
    time("prometheus-client Counter::inc, one thread", N, || {
        for _ in 0..N {
            black_box(&counter).inc();
        }
    });
    let family = Family::<Labels, Counter>::default();
    let labels = Labels { reactor: 0, kind: "send_message" };
    time("prometheus-client Family::get_or_create(labels).inc()", N / 10, || {
        for _ in 0..N / 10 {
            black_box(&family).get_or_create(black_box(&labels)).inc();
        }
    });
    let shared = Arc::new(AtomicU64::new(0));
    time("fetch_add on one counter from two threads (per increment)", 2 * N, || {
        let other = shared.clone();
        let t = std::thread::spawn(move || {
            for _ in 0..N {
                black_box(&*other).fetch_add(1, Relaxed);
            }
        });
        for _ in 0..N {
            black_box(&*shared).fetch_add(1, Relaxed);
        }
        t.join().unwrap();
    });
}
