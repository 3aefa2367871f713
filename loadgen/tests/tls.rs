//! The loadgen over TLS (`--tls`) against the real engine serving it (`--tls-cert`): every
//! connection held and every message delivered, with the server's authority or without
//! checking, and a wrong authority failing every connection with a clear reason.

mod common;

use common::{engine_with_tls, quick_load, run, test_certificate};

#[test]
fn over_tls_every_connection_is_held_and_nothing_is_lost() {
    let engine = engine_with_tls(2);
    let target = engine.local_addr().to_string();
    let ca = test_certificate("ca.pem");
    let ca = ca.to_str().unwrap();
    for trust in [&["--tls-ca", ca][..], &["--tls-insecure"][..]] {
        let args = [&quick_load(&target, "500", "1")[..], &["--tls"], trust].concat();
        let (status, report, out) = run("tls", &args);
        assert!(status.success(), "{trust:?}: {report}");
        assert_eq!(report["held"], 500, "{report}");
        assert_eq!(
            report["load"]["sent"], report["load"]["delivered"],
            "{report}"
        );
        assert_eq!(report["load"]["lost"], 0, "{report}");
        std::fs::remove_dir_all(out).unwrap();
    }
    assert!(engine.shutdown());
}

#[test]
fn an_authority_that_did_not_sign_the_server_fails_every_connection() {
    let engine = engine_with_tls(1);
    let target = engine.local_addr().to_string();
    // The server's own certificate is no authority.
    let wrong = test_certificate("ec.pem");
    let args = [
        &quick_load(&target, "20", "1")[..],
        &[
            "--tls",
            "--tls-ca",
            wrong.to_str().unwrap(),
            "--min-held",
            "1",
        ],
    ]
    .concat();
    let (status, report, out) = run("tls-wrong-ca", &args);
    assert!(!status.success(), "{report}");
    assert_eq!(report["held"], 0, "{report}");
    assert!(
        report["failed"]["tls_failed"].as_u64().unwrap_or(0) > 0,
        "{report}"
    );
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn tls_flags_without_tls_or_a_way_to_trust_are_clear_errors() {
    for (args, says) in [
        (&["--tls-insecure"][..], "--tls"),
        (&["--tls"][..], "--tls-ca"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args(["--target", "127.0.0.1:9", "--connections", "1"])
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
