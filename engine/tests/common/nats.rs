//! A real `nats-server` (Debian's package) with JetStream, on a free loopback port in a
//! temporary directory, killed on drop: what the cluster tests run their nodes against;
//! the nodes themselves; and a proxy that cuts one node off from NATS.

use super::{Driver, Server};
use serde_json::Value;
use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

/// Where Debian installs the server.
pub const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// A running nats-server.
pub struct Nats {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    /// Its flags beyond the port and JetStream (a NATS cluster's).
    flags: Vec<String>,
    /// Its monitoring port, in a NATS cluster.
    monitor: Option<u16>,
}

impl Nats {
    /// Starts one on a free port, or says why it cannot: the caller skips (outside CI).
    pub fn start() -> Result<Nats, String> {
        Self::start_on(free_port())
    }

    /// Starts one on `port` (free, or just freed by a stopped server) with JetStream in a
    /// fresh directory, and waits until it takes connections.
    pub fn start_on(port: u16) -> Result<Nats, String> {
        Self::start_with(port, Vec::new())
    }

    /// Starts one on a free port with more flags (`--user`, `--pass`, …).
    pub fn start_with_flags(flags: &[&str]) -> Result<Nats, String> {
        Self::start_with(free_port(), flags.iter().map(|f| f.to_string()).collect())
    }

    /// Starts `size` servers as one NATS cluster with JetStream (each knows the others'
    /// routes), and waits until each takes connections.
    pub fn start_cluster(size: usize) -> Result<Vec<Nats>, String> {
        let routes: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let all: Vec<String> = routes
            .iter()
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect();
        (0..size)
            .map(|i| {
                let monitor = free_port();
                let flags = vec![
                    "-m".into(),
                    monitor.to_string(),
                    "--server_name".into(),
                    format!("s{i}"),
                    "--cluster_name".into(),
                    "chat".into(),
                    "--cluster".into(),
                    all[i].clone(),
                    "--routes".into(),
                    all.join(","),
                ];
                let mut nats = Self::start_with(free_port(), flags)?;
                nats.monitor = Some(monitor);
                Ok(nats)
            })
            .collect()
    }

    /// Whether the server says it is healthy (`/healthz`: in a NATS cluster, JetStream
    /// current with the others).
    pub fn healthy(&self) -> bool {
        let Some(port) = self.monitor else {
            return true;
        };
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let request = "GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n";
        let mut answer = String::new();
        let _ = stream.write_all(request.as_bytes());
        let _ = stream.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
    }

    fn start_with(port: u16, flags: Vec<String>) -> Result<Nats, String> {
        if !std::path::Path::new(NATS_SERVER).exists() {
            return Err(format!(
                "{NATS_SERVER} is not installed (apt install nats-server)"
            ));
        }
        let dir = std::env::temp_dir().join(format!("nats-test-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut nats = Nats {
            child: None,
            port,
            dir,
            flags,
            monitor: None,
        };
        nats.run()?;
        Ok(nats)
    }

    /// Asks `subject` (JetStream's API) with `body` through a client of the test's own,
    /// and returns the JSON answer: for a test that changes a stream the nodes made.
    pub fn request(&self, subject: &str, body: &Value) -> Value {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let client = async_nats::connect(self.url()).await.expect("connected");
            let answer = client
                .request(subject.to_owned(), body.to_string().into())
                .await
                .expect("an answer");
            serde_json::from_slice(&answer.payload).expect("JSON")
        })
    }

    /// Changes stream `stream`'s configuration with `change` (as `nats stream edit`).
    pub fn edit_stream(&self, stream: &str, change: impl FnOnce(&mut Value)) {
        let info = self.request(&format!("$JS.API.STREAM.INFO.{stream}"), &Value::Null);
        let mut config = info["config"].clone();
        assert!(config.is_object(), "{info}");
        change(&mut config);
        let updated = self.request(&format!("$JS.API.STREAM.UPDATE.{stream}"), &config);
        assert!(updated.get("error").is_none(), "{updated}");
    }

    /// `nats://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (its JetStream directory stays, as after a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): its sockets stay open and it answers nothing.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    /// Starts the server again on the same port and directory.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.run()
    }

    fn run(&mut self) -> Result<(), String> {
        let child = Command::new(NATS_SERVER)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir)
            .args(&self.flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{NATS_SERVER} does not start: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                return Err(format!("nats-server took no connection on {}", self.port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port nothing listens on (the kernel's pick, released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

/// Passes a test that needs nats-server without one, saying so where it shows (stderr,
/// which the harness does not capture); under CI, fails instead.
pub fn skip(test: &str, why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{test} cannot run under CI: {why}");
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {why}");
}

/// `--cluster-shards` of every test node (unless a test names its own): more than one, so
/// that every cluster test crosses shards.
pub const TEST_SHARDS: u16 = 3;

/// The stream of kind `base` (`CHAT_INBOX`, `KV_chat_received`, …) that holds `user`'s
/// state in a cluster of [`TEST_SHARDS`].
pub fn user_stream(base: &str, user: &str) -> String {
    let shards = engine::cluster::Shards::new(TEST_SHARDS);
    engine::cluster::Shards::stream(base, shards.of(user))
}

/// A dead node is counted dead after 10 s of silence (PROTOCOL.md: offline within 15 s).
pub const DEATH_BOUND: Duration = Duration::from_secs(15);

/// A node of the cluster at `nats` with id `id`.
pub fn node(nats: &str, id: &str) -> Server {
    node_with(nats, id, &[])
}

/// A node of the cluster at `nats` with id `id` and more flags.
pub fn node_with(nats: &str, id: &str, flags: &[&str]) -> Server {
    let mut args = vec!["--cluster", nats, "--node-id", id];
    args.extend_from_slice(flags);
    Server::start(Driver::IoUring, &args)
}

/// `/health`'s `cluster` object.
pub fn cluster(server: &Server) -> Value {
    let (status, body) = server.get("/health");
    assert_eq!(status, 200, "{body}");
    let health: Value = serde_json::from_str(&body).expect("JSON");
    health["cluster"].clone()
}

/// Waits up to `bound` until `server` counts `nodes` live nodes.
pub fn wait_for_nodes(server: &Server, nodes: u64, bound: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let seen = cluster(server)["nodes"].as_u64();
        if seen == Some(nodes) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < bound,
            "{nodes} nodes not seen within {bound:?}: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `body` with a nats-server of its own, or skips the test without one.
pub fn with_nats(test: &str, body: impl FnOnce(Nats)) {
    match Nats::start() {
        Ok(nats) => body(nats),
        Err(why) => skip(test, &why),
    }
}

/// Two nodes of one cluster, both ready.
pub fn two_nodes(nats: &Nats) -> (Server, Server) {
    two_nodes_with(nats, &[])
}

/// Two nodes of one cluster with more flags, both ready.
pub fn two_nodes_with(nats: &Nats, flags: &[&str]) -> (Server, Server) {
    let (a, b) = (
        node_with(&nats.url(), "a", flags),
        node_with(&nats.url(), "b", flags),
    );
    wait_for_nodes(&a, 2, Duration::from_secs(10));
    (a, b)
}

/// A TCP proxy in front of a nats-server, for one node: [`Proxy::cut`] drops the
/// connections through it and refuses new ones until [`Proxy::restore`], so that node
/// alone is cut off from NATS.
pub struct Proxy {
    /// Its port on 127.0.0.1.
    pub port: u16,
    open: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    /// A proxy to the nats-server on `target` (a port on 127.0.0.1).
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (accepting, kept) = (open.clone(), streams.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !accepting.load(Ordering::Acquire) {
                    continue; // dropped: refused
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let mut kept = kept.lock().unwrap();
                for stream in [&client, &server] {
                    kept.push(stream.try_clone().unwrap());
                }
                let (client_in, server_in) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || copy(client_in, server));
                std::thread::spawn(move || copy(server_in, client));
            }
        });
        Proxy {
            port,
            open,
            streams,
        }
    }

    /// The URL a node is given.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Drops every connection through the proxy, and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::Release);
        for stream in self.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.open.store(true, Ordering::Release);
    }
}

/// Copies `from` to `to` until either ends.
fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}
