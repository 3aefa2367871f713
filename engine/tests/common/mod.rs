//! Test harness: runs the real `engine` binary on an ephemeral port and talks to it with a
//! real WebSocket client (tungstenite) or raw bytes.
#![allow(dead_code)]

pub mod browser;
pub mod certs;
pub mod nats;
pub mod webhook;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use tungstenite::{protocol::frame::coding::CloseCode, stream::MaybeTlsStream, Message, WebSocket};

/// How long any single wait in a test may take before the test fails. A bound on "it
/// arrives", not a latency check: 5 s once ran out in CI on a join that commits in
/// milliseconds here (not reproduced in 180 local runs under load), most likely a durable
/// commit's `fdatasync` stalled on a fresh box writing back its build. The engine now logs
/// any commit over a second, so a CI log says if that was it.
pub const WAIT: Duration = Duration::from_secs(15);

/// The two I/O set-ups every behaviour is checked on.
pub const DRIVERS: [Driver; 2] = [Driver::IoUring, Driver::Legacy];

/// Which I/O the engine runs on: what a host with io_uring gets, and what one without it
/// falls back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// monoio on io_uring, sockets as io_uring direct descriptors (the default).
    IoUring,
    /// monoio on epoll (`MONOIO_FORCE_LEGACY_DRIVER=1`), sockets in the fd table with
    /// epoll (`--sockets fd-table`).
    Legacy,
}

/// A running engine process; killed on drop (and its data directory removed, unless the
/// test chose the directory itself).
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    own_data_dir: Option<DataDir>,
    /// Set by [`Server::speaking_tls`]: every helper then talks TLS, trusting this.
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// A data directory no other test uses, empty: what an earlier test process with the same
/// pid left there (one killed before it cleaned up) is removed, or the engine would open
/// another run's store (seen: a store of an older layout). Removed when dropped, so that
/// test runs leave nothing behind on a disk CI shares.
pub fn fresh_data_dir() -> DataDir {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("engine-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    DataDir(dir)
}

/// A test's data directory, removed with what it holds when dropped (declare it before the
/// servers that use it, so that they stop first).
pub struct DataDir(std::path::PathBuf);

impl std::ops::Deref for DataDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for DataDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Server {
    /// Starts the engine on 127.0.0.1:0 with `args` (2 reactors unless `args` say otherwise).
    pub fn start(driver: Driver, args: &[&str]) -> Server {
        Self::launch(driver, args, None, &[])
    }

    /// Like [`Server::start`], with these environment variables set (failpoints).
    pub fn start_with_env(driver: Driver, args: &[&str], env: &[(&str, &str)]) -> Server {
        Self::launch(driver, args, None, env)
    }

    /// Like [`Server::start`], with the engine unable to grow any file past `bytes`
    /// (RLIMIT_FSIZE's soft limit, SIGXFSZ ignored): writes past it fail with EFBIG, as on
    /// a full disk, until [`Server::make_room`].
    pub fn start_with_file_size_limit(driver: Driver, args: &[&str], bytes: u64) -> Server {
        Self::launch(driver, args, Some((libc::RLIMIT_FSIZE, bytes)), &[])
    }

    /// The full disk of [`Server::start_with_file_size_limit`] gets room again, as when an
    /// operator frees space: the engine's file-size limit is lifted (up to its hard limit).
    pub fn make_room(&self) {
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        let pid = self.child.id() as libc::pid_t;
        let mut old = unlimited;
        // SAFETY: prlimit reads and writes two live rlimit structs; the pid is our child's.
        assert_eq!(
            unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, std::ptr::null(), &mut old) },
            0
        );
        let raised = libc::rlimit {
            rlim_cur: old.rlim_max,
            rlim_max: old.rlim_max,
        };
        // SAFETY: as above.
        let done = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &raised, std::ptr::null_mut()) };
        assert_eq!(done, 0, "{}", std::io::Error::last_os_error());
    }

    /// Like [`Server::start`], with RLIMIT_NOFILE (soft and hard) at `fds`: each of the
    /// engine's fd tables, and io_uring file tables, holds that many.
    pub fn start_with_open_files_limit(driver: Driver, args: &[&str], fds: u64) -> Server {
        Self::launch(driver, args, Some((libc::RLIMIT_NOFILE, fds)), &[])
    }

    fn launch(
        driver: Driver,
        args: &[&str],
        rlimit: Option<(libc::__rlimit_resource_t, u64)>,
        env: &[(&str, &str)],
    ) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_engine"));
        command
            .env_remove("ENGINE_FAILPOINT")
            .envs(env.iter().copied());
        if let Some((resource, value)) = rlimit {
            use std::os::unix::process::CommandExt;
            // SAFETY: between fork and exec only async-signal-safe calls (setrlimit, signal).
            unsafe {
                command.pre_exec(move || {
                    // The soft limit only for the file size, so that `make_room` can lift
                    // it; both for open files, which the engine raises to its hard limit.
                    let mut limit = libc::rlimit {
                        rlim_cur: value,
                        rlim_max: value,
                    };
                    if resource == libc::RLIMIT_FSIZE {
                        let mut current = limit;
                        if libc::getrlimit(resource, &mut current) == 0 {
                            limit.rlim_max = current.rlim_max;
                        }
                    }
                    if libc::setrlimit(resource, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    Ok(())
                });
            }
        }
        if !args.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        // Presence shows a dropped user offline at once, unless a test asks for a grace:
        // `wait_offline` watches presence to know the server saw a device go.
        if !args.contains(&"--presence-grace-ms") {
            command.args(["--presence-grace-ms", "0"]);
        }
        // A cluster node splits its streams into shards, unless a test names how many.
        let shards = nats::TEST_SHARDS.to_string();
        if args.contains(&"--cluster") && !args.contains(&"--cluster-shards") {
            command.args(["--cluster-shards", &shards]);
        }
        // Every user may see every user's presence, unless a test asks otherwise:
        // `wait_offline`'s watcher shares no group with the user it watches.
        if !args.contains(&"--presence-visibility") {
            command.args(["--presence-visibility", "all"]);
        }
        command
            .args(["--log-level", "warn"])
            .args(if args.contains(&"--reactors") {
                &[][..]
            } else {
                &["--reactors", "2"][..]
            })
            .args(args)
            .env_remove("ENGINE_JWT_SECRET")
            .env_remove("ENGINE_DATA_DIR")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        match driver {
            Driver::IoUring => command.env("ENGINE_SOCKETS", "direct"),
            Driver::Legacy => command
                .env("MONOIO_FORCE_LEGACY_DRIVER", "1")
                .env("ENGINE_SOCKETS", "fd-table"),
        };
        let own_data_dir = (!args.contains(&"--data-dir")).then(fresh_data_dir);
        if let Some(dir) = &own_data_dir {
            command.arg("--data-dir").arg(&**dir);
        }
        let mut child = command.spawn().expect("engine starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("engine prints its address");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected line {line:?}"));
        Server {
            addr: addr.parse().expect("an address"),
            child,
            own_data_dir,
            tls: None,
        }
    }

    /// Talks TLS to this server from now on (it runs with `--tls-cert`), trusting the
    /// authority in `ca` (a PEM file) for `localhost`.
    pub fn speaking_tls(mut self, ca: &str) -> Server {
        self.tls = Some(tls_client(ca));
        self
    }

    /// A TCP connection to the server, in TLS if it speaks it.
    pub fn stream(&self) -> Box<dyn ReadWrite> {
        let tcp = TcpStream::connect(self.addr).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        match &self.tls {
            None => Box::new(tcp),
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
                Box::new(rustls::StreamOwned::new(conn, tcp))
            }
        }
    }

    /// The HTTP URL of `path` on this server.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The WebSocket URL, with an optional query string.
    pub fn url(&self, query: &str) -> String {
        match self.tls {
            None => format!("ws://{}/ws{query}", self.addr),
            Some(_) => format!("wss://localhost:{}/ws{query}", self.addr.port()),
        }
    }

    /// Opens a WebSocket (not yet authenticated).
    pub fn connect(&self) -> Client {
        self.connect_with_query("")
    }

    /// Opens a WebSocket with a query string such as `?token=...`.
    pub fn connect_with_query(&self, query: &str) -> Client {
        let tcp = TcpStream::connect(self.addr).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        let connector = self.tls.clone().map(tungstenite::Connector::Rustls);
        let (ws, _) = tungstenite::client_tls_with_config(self.url(query), tcp, None, connector)
            .expect("upgrade succeeds");
        Client { ws }
    }

    /// Connects and authenticates in open mode; returns after `auth_success`.
    pub fn login(&self, user: &str, device: &str) -> Client {
        let mut client = self.connect();
        client.send(&serde_json::json!({"type":"auth","userId":user,"deviceId":device}));
        let reply = client.recv();
        assert_eq!(reply["type"], "auth_success", "{reply}");
        client
    }

    /// Logs in a v2 device: `resume` from `(epoch, seq)`; returns the client and its
    /// `auth_success`.
    pub fn login_resuming(&self, user: &str, device: &str, from: (&str, u64)) -> (Client, Value) {
        let mut client = self.connect();
        client.send(
            &serde_json::json!({"type": "auth", "userId": user, "deviceId": device,
                                        "resume": {"epoch": from.0, "seq": from.1}}),
        );
        let greeting = client.recv();
        assert_eq!(greeting["type"], "auth_success", "{greeting}");
        (client, greeting)
    }

    /// Returns once `user`'s home has seen its last device go: a watcher subscribes to the
    /// user's presence and waits for `offline`. (What a test does next, a message to the
    /// user say, then meets the user offline, not a connection that is closing.)
    pub fn wait_offline(&self, user: &str) {
        let mut watcher = self.login(&format!("watcher-of-{user}"), "watcher");
        watcher.send(&serde_json::json!({"type": "presence_subscribe", "userIds": [user]}));
        let state = watcher.recv_type("presence_state");
        if state["users"][0]["status"] == "offline" {
            return;
        }
        loop {
            let update = watcher.recv_type("presence_update");
            if update["userId"] == user && update["status"] == "offline" {
                return;
            }
        }
    }

    /// Sends one raw HTTP request and returns the whole response text.
    pub fn http(&self, request: &str) -> String {
        let mut stream = self.stream();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        String::from_utf8_lossy(&response).into_owned()
    }

    /// The value of the unlabelled counter `name` in `/metrics` now.
    pub fn counter(&self, name: &str) -> u64 {
        let (_, metrics) = self.get("/metrics");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
    }

    /// The sum over reactors of the per-reactor counter `name` in `/metrics` now.
    pub fn counter_sum(&self, name: &str) -> u64 {
        let (_, metrics) = self.get("/metrics");
        let labelled = format!("{name}{{");
        metrics
            .lines()
            .filter(|l| l.starts_with(&labelled))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// `engine_errors_total` for one error code.
    pub fn errors_counted(&self, code: &str) -> u64 {
        self.counted_by_code("engine_errors_total", code)
    }

    /// The per-reactor counter `name`, labelled by `code`, for one code, over reactors.
    pub fn counted_by_code(&self, name: &str, code: &str) -> u64 {
        let (_, metrics) = self.get("/metrics");
        let (name, label) = (format!("{name}{{"), format!(r#"code="{code}""#));
        metrics
            .lines()
            .filter(|l| l.starts_with(&name) && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// GETs `path` with `Connection: close` and returns `(status, body)`.
    pub fn get(&self, path: &str) -> (u16, String) {
        self.request("GET", path, &[], "")
    }

    /// Sends one request with `Connection: close` and returns `(status, body)`. A POST
    /// says `Content-Type: application/json` unless `headers` name another.
    pub fn request(&self, method: &str, path: &str, headers: &[&str], body: &str) -> (u16, String) {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        let typed = headers
            .iter()
            .any(|h| h.to_ascii_lowercase().starts_with("content-type:"));
        if method == "POST" && !typed {
            head.push_str("Content-Type: application/json\r\n");
        }
        for header in headers {
            head.push_str(header);
            head.push_str("\r\n");
        }
        split_response(&self.http(&format!("{head}\r\n{body}")))
    }

    /// Sends SIGTERM and waits (bounded) for the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc_kill(self.child.id() as i32, 15) };
        self.exit_code_within(Duration::from_secs(10))
    }

    /// Waits up to `bound` for the engine to exit on its own; its exit code.
    pub fn exit_code_within(&mut self, bound: Duration) -> Option<i32> {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Then `own_data_dir` drops, and with it the store.
    }
}

/// A byte stream to the server: TCP, or TLS over it.
pub trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A TLS client trusting only the authority in the PEM file `ca`.
pub fn tls_client(ca: &str) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("the authority's file") {
        roots
            .add(cert.expect("a certificate"))
            .expect("an authority");
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    std::sync::Arc::new(config)
}

/// A WebSocket client with bounded waits.
pub struct Client {
    pub ws: WebSocket<MaybeTlsStream<TcpStream>>,
}

impl Client {
    /// Sends a `send_message` and returns its `message_ack`.
    pub fn send_chat(&mut self, id: &str, to: &str, content: &str) -> Value {
        self.send(&serde_json::json!({"type": "send_message", "messageId": id,
                                      "receiverId": to, "content": content}));
        self.recv_type("message_ack")
    }

    /// Sends a group request (`group_create`, `group_add`, …) and returns its answer:
    /// the first `group_member` or `error` that comes.
    pub fn group_request(&mut self, request: Value) -> Value {
        self.send(&request);
        loop {
            let answer = self.recv();
            if answer["type"] == "group_member" || answer["type"] == "error" {
                return answer;
            }
        }
    }

    /// Joins `group` and waits for the joiner's own `group_member` event: the join is
    /// made.
    pub fn join_group(&mut self, group: &str) {
        self.send(&serde_json::json!({"type": "group_join", "groupId": group}));
        let event = self.recv_type("group_member");
        assert_eq!(event["action"], "joined", "{event}");
    }

    /// The next `new_message`'s content and `seq`.
    pub fn next_message(&mut self) -> (String, u64) {
        let message = self.recv_type("new_message");
        let seq = message["seq"].as_u64().expect("an inbox event has a seq");
        (message["content"].as_str().unwrap().to_owned(), seq)
    }

    /// Sends a JSON text message.
    pub fn send(&mut self, value: &Value) {
        self.ws
            .send(Message::text(value.to_string()))
            .expect("send");
    }

    /// Sends raw text (which may be bad JSON).
    pub fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send");
    }

    /// The next JSON text message (skipping pings/pongs); panics on timeout or close.
    pub fn recv(&mut self) -> Value {
        loop {
            match self.ws.read().expect("a message arrives in time") {
                Message::Text(text) => return serde_json::from_str(&text).expect("valid JSON"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// The next text message, or `None` once the connection has failed or closed (for
    /// tests that kill the server under the client).
    pub fn try_recv(&mut self) -> Option<Value> {
        loop {
            match self.ws.read().ok()? {
                Message::Text(text) => return serde_json::from_str(&text).ok(),
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// The next text message if one arrives within `quiet`, else `None`.
    pub fn recv_within(&mut self, quiet: Duration) -> Option<Value> {
        self.set_timeout(quiet);
        let message = self.try_recv();
        self.set_timeout(WAIT);
        message
    }

    /// The next message of type `kind`, skipping others.
    pub fn recv_type(&mut self, kind: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let value = self.recv();
            if value["type"] == kind {
                return value;
            }
        }
        panic!("no {kind} in time");
    }

    /// Begins the closing handshake with `code` (a client's logout).
    pub fn close_with(&mut self, code: u16) {
        let frame = tungstenite::protocol::CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        };
        self.ws.close(Some(frame)).expect("close");
        let _ = self.ws.flush();
    }

    /// Asserts that no text message arrives within `quiet`.
    pub fn expect_silence(&mut self, quiet: Duration) {
        self.set_timeout(quiet);
        match self.ws.read() {
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            other => panic!("expected silence, got {other:?}"),
        }
        self.set_timeout(WAIT);
    }

    /// The next JSON message, or the code of the server's close frame.
    pub fn next_or_close(&mut self) -> Result<Value, u16> {
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => return Ok(serde_json::from_str(&text).unwrap()),
                Ok(Message::Close(Some(frame))) => return Err(u16::from(frame.code)),
                Ok(Message::Close(None)) => return Err(1005),
                Ok(_) => continue,
                Err(e) => panic!("neither a message nor a close frame: {e}"),
            }
        }
    }

    /// Reads everything until the stream ends: `Some(code)` when it ends with the
    /// server's close frame, `None` when it ends without one (the server dropped the
    /// socket, say with a frame half written). Panics if it does not end in time.
    pub fn read_to_end(&mut self) -> Option<u16> {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match self.ws.read() {
                Ok(Message::Close(frame)) => return Some(frame.map_or(1005, |f| f.code.into())),
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!("the stream is still open")
                }
                Err(_) => return None,
            }
        }
        panic!("the stream did not end in time");
    }

    /// Reads until the server's close frame and returns its code.
    pub fn expect_close(&mut self) -> u16 {
        loop {
            match self.ws.read() {
                Ok(Message::Close(Some(frame))) => return u16::from(frame.code),
                Ok(Message::Close(None)) => return 1005,
                Ok(_) => continue,
                Err(e) => panic!("no close frame: {e}"),
            }
        }
    }

    fn set_timeout(&mut self, timeout: Duration) {
        let tcp = match self.ws.get_ref() {
            MaybeTlsStream::Plain(stream) => stream,
            MaybeTlsStream::Rustls(stream) => &stream.sock,
            _ => return,
        };
        tcp.set_read_timeout(Some(timeout)).unwrap();
    }

    /// Writes raw bytes on the socket, bypassing the client's framing.
    pub fn write_raw(&mut self, bytes: &[u8]) {
        if let MaybeTlsStream::Plain(stream) = self.ws.get_mut() {
            stream.write_all(bytes).unwrap();
        }
    }
}

/// A raw socket that upgrades and sends `auth` for `user` without waiting for answers; the
/// caller decides whether it ever reads (10 s read timeout).
pub fn raw_login(server: &Server, user: &str) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let auth = format!(r#"{{"type":"auth","userId":"{user}","deviceId":"d"}}"#);
    let mut request =
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            .to_vec();
    request.extend_from_slice(&raw_frame(0x81, auth.as_bytes()));
    stream.write_all(&request).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// A masked client frame, built by hand (for frames a client library will not send).
pub fn raw_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![first_byte];
    if payload.len() < 126 {
        out.push(0x80 | payload.len() as u8);
    } else if payload.len() <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Polls `done` every 20 ms until it holds; panics if it does not within [`WAIT`]. For
/// waiting on what the server shows (a metric, a queue, a count), never on time alone.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `test` once per driver, naming the driver on failure.
pub fn on_both_drivers(test: impl Fn(Driver)) {
    for driver in DRIVERS {
        eprintln!("driver: {driver:?}");
        test(driver);
    }
}

/// Close code as a number.
pub fn code(code: CloseCode) -> u16 {
    u16::from(code)
}

/// `(status, body)` of one HTTP response's text.
pub fn split_response(response: &str) -> (u16, String) {
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
