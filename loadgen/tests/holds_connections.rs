//! The loadgen against the real engine (started in this process on an ephemeral port):
//! every connection is held, every message arrives, and the report files say so.

mod common;

use std::process::Command;

use common::{
    engine, engine_with_sender_quota, engine_with_sockets, out_dir, quick_load, read_report, run,
};
use engine::sockets::Placement;

#[test]
fn two_thousand_connections_are_held_and_a_load_phase_loses_nothing() {
    for (placement, flag, name) in [
        (Placement::Direct, "direct", "io_uring direct descriptors"),
        (Placement::FdTable, "fd-table", "fd table"),
    ] {
        holds_and_loses_nothing(placement, flag, name);
    }
}

/// The loadgen with its sockets placed as `--sockets flag` says, against an engine whose
/// sockets are placed the same way; the report names the placement.
fn holds_and_loses_nothing(placement: Placement, flag: &str, name: &str) {
    let engine = engine_with_sockets(2, placement);
    let (target, pid) = (
        engine.local_addr().to_string(),
        std::process::id().to_string(),
    );
    let base = [
        "--target",
        target.as_str(),
        "--connections",
        "2000",
        "--ramp-per-sec",
        "4000",
        "--sockets",
        flag,
    ];
    let (status, report, out) = run("held", &[&base[..], &["--hold-secs", "1"]].concat());
    assert!(status.success(), "{report}");
    assert_eq!(report["sockets"], name);
    assert_eq!(report["attempted"], 2000);
    assert_eq!(report["held"], 2000, "{report}");
    assert_eq!(report["failed_total"], 0);
    assert!(report["connect_rate_per_sec"].as_f64().unwrap() > 0.0);
    std::fs::remove_dir_all(out).unwrap();
    let load = [
        "--hold-secs",
        "0",
        "--rate",
        "2000",
        "--duration-secs",
        "1",
        "--server-pid",
        pid.as_str(),
    ];
    let (status, report, out) = run("held-load", &[&base[..], &load[..]].concat());
    assert!(status.success(), "{report}");
    assert_eq!(
        (
            report["load"]["sent"].as_u64(),
            report["load"]["delivered"].as_u64()
        ),
        (Some(2000), Some(2000))
    );
    assert_eq!(report["load"]["lost"], 0);
    assert!(report["server"]["rss_bytes_per_connection"].is_number());
    // The engine runs in this test's process: its CPU time over the load (2,000
    // messages, tens of milliseconds at the least) is measured.
    assert!(
        report["server"]["cpu_secs_load"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(report["server"]["cpu_secs_per_million_messages"].is_number());
    std::fs::remove_dir_all(out).unwrap();
    assert!(engine.shutdown());
}

#[test]
fn an_open_loop_load_phase_writes_percentiles_hgrm_a_timeline_charts_and_one_page() {
    let engine = engine(2, None);
    let target = engine.local_addr().to_string();
    let (status, report, out) = run(
        "load",
        &[
            "--target",
            &target,
            "--connections",
            "500",
            "--ramp-per-sec",
            "5000",
            "--hold-secs",
            "0",
        ]
        .into_iter()
        .chain(["--rate", "1000", "--duration-secs", "2"])
        .collect::<Vec<_>>(),
    );
    assert!(status.success(), "{report}");
    assert_eq!(report["load"]["sent"], 2000, "{report}");
    assert_eq!(report["load"]["delivered"], 2000, "{report}");
    assert_eq!(report["load"]["acked"], 2000);
    let delivery = &report["latency"]["delivery"];
    let p = |k: &str| delivery[k].as_u64().unwrap();
    assert!(
        p("p50_us") <= p("p90_us") && p("p90_us") <= p("p99_us") && p("p99_us") <= p("p999_us")
    );
    assert!(p("p999_us") <= p("max_us") && p("p50_us") > 0);
    let hgrm = std::fs::read_to_string(out.join("delivery.hgrm")).unwrap();
    let last_row = hgrm
        .lines()
        .rfind(|l| !l.starts_with('#') && !l.trim().is_empty())
        .unwrap();
    assert_eq!(last_row.split_whitespace().nth(2), Some("2000"), "{hgrm}");
    let svg = std::fs::read_to_string(out.join("latency.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.matches("<polyline").count() == 2);
    // Second by second: every message counted once, in the second it was sent or came.
    let timeline = report["timeline"].as_array().unwrap();
    assert!((2..=8).contains(&timeline.len()), "{report}");
    let total = |k: &str| timeline.iter().map(|s| s[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!(
        (total("sent"), total("delivered"), total("acked")),
        (2000, 2000, 2000)
    );
    for (i, second) in timeline.iter().enumerate() {
        assert_eq!(second["second"], i, "{second}");
        let tail = |k: &str| second["delivery"][k].as_u64().unwrap();
        assert!(tail("p50_us") <= tail("p99_us") && tail("p99_us") <= tail("max_us"));
        assert!(tail("max_us") <= p("max_us") + p("max_us") / 50, "{second}");
    }
    let chart = std::fs::read_to_string(out.join("timeline.svg")).unwrap();
    assert!(chart.starts_with("<svg") && chart.matches("<polyline").count() == 6);
    let page = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert_eq!(page.matches("<svg").count(), 2, "both charts inline");
    assert!(page.contains("worst second") && page.contains(r#"href="report.json""#));
    std::fs::remove_dir_all(out).unwrap();
    assert!(engine.shutdown());
}

#[test]
fn offline_receivers_measure_the_store_every_message_acked_queued() {
    let engine = engine(2, None);
    let target = engine.local_addr().to_string();
    let mut args = quick_load(&target, "200", "1");
    args.push("--offline-receivers");
    let (status, report, out) = run("offline", &args);
    assert!(status.success(), "{report}");
    let load = &report["load"];
    assert_eq!(
        (load["sent"].as_u64(), load["queued"].as_u64()),
        (Some(500), Some(500)),
        "{report}"
    );
    assert_eq!(
        (load["delivered"].as_u64(), load["lost"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(report["latency"]["ack"]["count"], 500);
    std::fs::remove_dir_all(out).unwrap();
    assert!(engine.shutdown());
}

#[test]
fn a_rejected_message_is_counted_as_such_not_as_an_ack_or_lost() {
    // One message may wait per sender and receiver: the senders' repeats are rejected.
    let engine = engine_with_sender_quota(2, 1);
    let target = engine.local_addr().to_string();
    let mut args = quick_load(&target, "20", "1");
    args.push("--offline-receivers");
    let (status, report, out) = run("rejected", &args);
    assert!(status.success(), "{report}");
    let load = &report["load"];
    let (queued, rejected) = (load["queued"].as_u64(), load["rejected"].as_u64());
    assert!(rejected.is_some_and(|r| r > 0), "{report}");
    assert_eq!(
        queued.zip(rejected).map(|(q, r)| q + r),
        load["sent"].as_u64()
    );
    assert_eq!(load["lost"].as_u64(), Some(0), "{report}");
    assert_eq!(report["latency"]["ack"]["count"].as_u64(), queued);
    std::fs::remove_dir_all(out).unwrap();
    assert!(engine.shutdown());
}

#[test]
fn churn_drops_and_resumes_devices_and_loses_nothing() {
    let engine = engine(2, None);
    let target = engine.local_addr().to_string();
    let mut args = quick_load(&target, "500", "4");
    args.extend(["--scenario", "churn", "--churn-per-min", "600"]);
    let (status, report, out) = run("churn", &args);
    assert!(status.success(), "{report}");
    let churn = &report["churn"];
    // 600% a minute of 500 connections for 4 s: about 200 drops, each resumed.
    let dropped = churn["dropped"].as_u64().unwrap();
    assert!((100..=300).contains(&dropped), "{report}");
    assert_eq!(churn["resumed"], churn["reconnects"], "{report}");
    assert_eq!(
        (churn["lost"].as_u64(), churn["duplicated"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(report["held"], 500, "every device is back at the end");
    std::fs::remove_dir_all(out).unwrap();
    assert!(engine.shutdown());
}

#[test]
fn a_list_of_targets_spreads_the_users_and_counts_messages_across_them() {
    let (a, b) = (engine(1, None), engine(1, None));
    let targets = format!("{},{}", a.local_addr(), b.local_addr());
    let (status, report, out) = run("targets", &quick_load(&targets, "400", "2"));
    assert!(status.success(), "{report}");
    assert_eq!(report["targets"].as_array().map(Vec::len), Some(2));
    assert_eq!(report["held_per_target"], serde_json::json!([200, 200]));
    let load = &report["load"];
    let count = |k: &str| load[k].as_u64().unwrap();
    // Receivers are drawn at random: about half connect to the other engine. These two
    // are not a cluster, so each of those is queued where its sender is.
    let across = count("sent_across_targets");
    assert!((300..=700).contains(&across), "{report}");
    assert_eq!(count("sent"), 1000, "{report}");
    assert_eq!(count("delivered") + count("queued"), 1000, "{report}");
    assert!(count("queued") <= across, "{report}");
    std::fs::remove_dir_all(out).unwrap();
    assert!(a.shutdown() && b.shutdown());
}

#[test]
fn a_target_named_twice_is_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--target", "127.0.0.1:1,127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("names an address twice"));
}

#[test]
fn an_unreachable_target_is_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--target", "127.0.0.1:1", "--connections", "10"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot reach --target"));
}

#[test]
fn fewer_held_than_min_held_fails_the_run() {
    // The loadgen sends no tokens, so an engine with a JWT secret refuses every auth.
    let engine = engine(1, Some(b"a-secret-of-at-least-thirty-two-bytes"));
    let target = engine.local_addr().to_string();
    let (status, report, out) = run(
        "refused",
        &[
            "--target",
            &target,
            "--connections",
            "20",
            "--hold-secs",
            "0",
        ],
    );
    assert!(
        !status.success(),
        "auth without tokens must fail and the run must say so"
    );
    assert_eq!(report["held"], 0);
    assert_eq!(report["failed"]["auth_failed"], 20, "{report}");
    std::fs::remove_dir_all(out).unwrap();
    assert!(engine.shutdown());
}

#[test]
fn ctrl_c_ends_the_run_early_with_a_partial_report() {
    let engine = engine(1, None);
    let out = out_dir("interrupt");
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--target",
            &engine.local_addr().to_string(),
            "--connections",
            "100",
            "--hold-secs",
            "60",
            "--out",
        ])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    // SAFETY: kill(2) on our own child.
    unsafe { libc_kill(child.id() as i32, 2) };
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "no exit after Ctrl-C"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130));
    let report = read_report(&out);
    assert_eq!(report["interrupted"], true);
    assert_eq!(report["held"], 100, "{report}");
    std::fs::remove_dir_all(out).unwrap();
    assert!(engine.shutdown());
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}
