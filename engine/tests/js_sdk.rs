//! The JavaScript SDK's own tests (`clients/js/test/`, Node's built-in test runner)
//! against this build of the engine: `cargo test --workspace` runs them.
//!
//! They need Node 20 or later (its WebSocket); without it this test says why and passes,
//! except under CI, where `.ci/run` installs it.

mod common;

use std::{path::Path, process::Command};

#[test]
fn the_js_sdk_passes_its_tests_against_this_engine() {
    let test = "the_js_sdk_passes_its_tests_against_this_engine";
    let version = Command::new("node").arg("--version").output();
    let major = version
        .as_ref()
        .ok()
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .strip_prefix('v')
                .map(str::to_owned)
        })
        .and_then(|v| v.split('.').next()?.parse::<u32>().ok());
    match major {
        Some(major) if major >= 20 => {}
        Some(major) => return common::nats::skip(test, &format!("node {major} is older than 20")),
        None => return common::nats::skip(test, "no node (Node.js 20 or later)"),
    }
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/js");
    let output = Command::new("node")
        .args(["--experimental-websocket", "--test", "test/"])
        .current_dir(&sdk)
        .env("ENGINE_BIN", env!("CARGO_BIN_EXE_engine"))
        .output()
        .expect("node runs");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the SDK's tests failed:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains("# fail 0"), "{report}");
    assert!(!report.contains("# pass 0"), "no test ran: {report}");
}
