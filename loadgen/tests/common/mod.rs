//! Test harness: runs the loadgen binary and reads back its report.
#![allow(dead_code)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
};

use engine::{config::Config, protocol::jwt::Verifier, sockets::Placement, Engine};

/// Numbers each in-process engine's store directory (one redb file per engine).
static NEXT_STORE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// An engine a test started, whose store directory goes with it.
pub struct TestEngine {
    engine: Option<Engine>,
    store: PathBuf,
}

impl TestEngine {
    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.engine.as_ref().expect("running").local_addr()
    }

    /// Stops it; whether it stopped cleanly. Its store is removed.
    pub fn shutdown(mut self) -> bool {
        self.engine.take().expect("running").shutdown()
    }
}

impl Drop for TestEngine {
    fn drop(&mut self) {
        if let Some(engine) = self.engine.take() {
            engine.shutdown(); // a test that failed before stopping it
        }
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// The real engine in this process, on an ephemeral port.
pub fn engine(reactors: usize, jwt_secret: Option<&[u8]>) -> TestEngine {
    engine_with(reactors, jwt_secret, Placement::Auto, None, |_| {})
}

/// The same, with its sockets placed as `sockets` says.
pub fn engine_with_sockets(reactors: usize, sockets: Placement) -> TestEngine {
    engine_with(reactors, None, sockets, None, |_| {})
}

/// The same, where one sender may leave at most `max` messages waiting for a user with
/// no device online (`--queue-max-per-sender`).
pub fn engine_with_sender_quota(reactors: usize, max: u32) -> TestEngine {
    engine_with(reactors, None, Placement::Auto, None, |config| {
        config.queue_max_per_sender = max
    })
}

/// The test certificates of the TLS record crate (`localhost`, ECDSA P-256, signed by
/// `ca.pem`, valid until 2125): the path of `file` there.
pub fn test_certificate(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/tls-records/testdata")
        .join(file)
}

/// The engine serving TLS with [`test_certificate`]'s `ec.pem`.
pub fn engine_with_tls(reactors: usize) -> TestEngine {
    let certificates =
        engine::tls::Certificates::load(&test_certificate("ec.pem"), &test_certificate("ec.key"))
            .expect("the test certificate loads");
    engine_with(reactors, None, Placement::Auto, Some(certificates), |_| {})
}

fn engine_with(
    reactors: usize,
    jwt_secret: Option<&[u8]>,
    sockets: Placement,
    tls: Option<engine::tls::Certificates>,
    tweak: impl FnOnce(&mut Config),
) -> TestEngine {
    let store = out_dir(&format!(
        "store-{reactors}-{}",
        NEXT_STORE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let mut config = Config {
        socket_placement: sockets,
        listen: "127.0.0.1:0".parse().unwrap(),
        reactors,
        jwt: jwt_secret.map(|secret| {
            std::sync::Arc::new(Verifier::new(Some(secret.to_vec()), Vec::new(), true))
        }),
        data_dir: store.clone(),
        tls: tls.map(std::sync::Arc::new),
        ..Config::default()
    };
    tweak(&mut config);
    TestEngine {
        engine: Some(Engine::start(config).expect("engine starts")),
        store,
    }
}

/// A fresh output directory for one test.
pub fn out_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("loadgen-test-{name}-{}", std::process::id()))
}

/// Reads `report.json` from `out`.
pub fn read_report(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).expect("report written"))
        .expect("report is JSON")
}

/// Runs the loadgen with `args` and `--out`; returns its exit status and report.
pub fn run(name: &str, args: &[&str]) -> (ExitStatus, serde_json::Value, PathBuf) {
    let out = out_dir(name);
    let status = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    let report = read_report(&out);
    (status, report, out)
}

/// A short run: `connections` opened at once, no hold, 500 msg/s for `secs`.
pub fn quick_load<'a>(target: &'a str, connections: &'a str, secs: &'a str) -> Vec<&'a str> {
    vec![
        "--target",
        target,
        "--connections",
        connections,
        "--ramp-per-sec",
        "5000",
        "--hold-secs",
        "0",
        "--rate",
        "500",
        "--duration-secs",
        secs,
    ]
}
