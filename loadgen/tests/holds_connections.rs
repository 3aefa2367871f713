//! The loadgen against the real engine (started in this process on an ephemeral port):
//! every connection is held and the JSON report says so.

use std::process::Command;

use engine::{config::Config, Engine};

fn engine(reactors: usize) -> Engine {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        reactors,
        ..Config::default()
    };
    Engine::start(config).expect("engine starts")
}

#[test]
fn two_thousand_connections_are_held_and_reported() {
    let engine = engine(2);
    let out = std::env::temp_dir().join(format!("loadgen-test-{}", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--target",
            &engine.local_addr().to_string(),
            "--connections",
            "2000",
            "--ramp-per-sec",
            "4000",
        ])
        .args([
            "--hold-secs",
            "1",
            "--rate",
            "2000",
            "--duration-secs",
            "1",
            "--out",
        ])
        .arg(&out)
        .args(["--server-pid", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["attempted"], 2000);
    assert_eq!(report["held"], 2000, "{report}");
    assert_eq!(report["failed_total"], 0);
    assert!(report["connect_rate_per_sec"].as_f64().unwrap() > 0.0);
    assert!(report["server"]["rss_bytes_per_connection"].is_number());
    assert_eq!(report["load"]["sent"], 2000);
    assert_eq!(report["load"]["lost"], 0);
    assert_eq!(report["load"]["delivered"], 2000);
    std::fs::remove_dir_all(out).unwrap();
    assert!(engine.shutdown());
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
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        reactors: 1,
        jwt_secret: Some(b"secret".to_vec()),
        ..Config::default()
    };
    let engine = Engine::start(config).unwrap();
    let out = std::env::temp_dir().join(format!("loadgen-test-fail-{}", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--target",
            &engine.local_addr().to_string(),
            "--connections",
            "20",
            "--hold-secs",
            "0",
            "--out",
        ])
        .arg(&out)
        .status()
        .unwrap();
    assert!(
        !status.success(),
        "auth without tokens must fail and the run must say so"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["held"], 0);
    assert_eq!(report["failed"]["auth_failed"], 20, "{report}");
    std::fs::remove_dir_all(out).unwrap();
    assert!(engine.shutdown());
}

#[test]
fn an_open_loop_load_phase_delivers_every_message_and_writes_histograms() {
    let engine = engine(2);
    let out = std::env::temp_dir().join(format!("loadgen-test-load-{}", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--target",
            &engine.local_addr().to_string(),
            "--connections",
            "500",
            "--ramp-per-sec",
            "5000",
        ])
        .args([
            "--hold-secs",
            "0",
            "--rate",
            "1000",
            "--duration-secs",
            "2",
            "--out",
        ])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["load"]["sent"], 2000, "{report}");
    assert_eq!(report["load"]["delivered"], 2000, "{report}");
    assert_eq!(report["load"]["lost"], 0);
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
    std::fs::remove_dir_all(out).unwrap();
    assert!(engine.shutdown());
}

#[test]
fn ctrl_c_ends_the_run_early_with_a_partial_report() {
    let engine = engine(1);
    let out = std::env::temp_dir().join(format!("loadgen-test-int-{}", std::process::id()));
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
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["interrupted"], true);
    assert_eq!(report["held"], 100, "{report}");
    std::fs::remove_dir_all(out).unwrap();
    assert!(engine.shutdown());
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}
