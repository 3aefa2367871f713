//! Reactors: one pinned thread per core, each with its own fd table, monoio runtime,
//! SO_REUSEPORT listener, connection slab and socket set ([`crate::sockets`]: io_uring
//! direct descriptors, or the fd table with epoll).
//!
//! Thread start-up, in order: pin, `unshare(CLONE_FILES)`, build the runtime (io_uring,
//! else epoll; logged), bind the listener, make the socket set (pre-growing the fd table
//! when sockets live there). Then three tasks run:
//! accept (io_uring accept op), the timer tick, and the event loop that waits on the
//! readiness set and runs one batch per wake-up (`core::Reactor::run_batch`).
//!
//! The reactor is the driver of its [`crate::shard::Shard`]: the only code that touches
//! sockets, rings, timers and mailboxes. Its files:
//! - `core`: the reactor's state, the batch, reading, writing, closing;
//! - `session`: a connection's input: HTTP requests, the upgrade, WebSocket frames;
//! - `chat`: a parsed client message: `auth` checked here, the rest to the shard;
//! - `home`: an authenticated connection moved to its user's home reactor;
//! - `routing`: events into the shard, its effects carried out, mail for connections;
//! - `inbox`: the store's answers for connections: `message_ack`, inbox pages written
//!   (the first after `auth_success`) and paced, refused acks;
//! - `api`: the HTTP API's requests that wait on other reactors;
//! - `limits`: rate limit and idle sweep;
//! - `tls`: the TLS handshake, records opened on input and sealed on output.

mod admission;
mod api;
mod chat;
mod core;
mod home;
mod inbox;
mod limits;
mod routing;
mod session;
mod tls;

use std::{
    cell::RefCell,
    io,
    net::SocketAddr,
    os::fd::{FromRawFd, IntoRawFd, RawFd},
    rc::Rc,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use monoio::{FusionDriver, FusionRuntime, RuntimeBuilder};
use tracing::{error, info, warn};

use crate::{
    config::Config,
    mailbox::{BatchConsumer, BatchProducer, Doorbell},
    router::Envelope,
    shard::groups_state::{Groups, UserGroups},
    sockets::Handoff,
    stats::ReactorStats,
    store, timer,
};

/// io_uring submission queue entries per reactor.
const URING_ENTRIES: u32 = 1024;
/// Accept backlog per listener.
const LISTEN_BACKLOG: i32 = 4096;
/// Pause after an accept error such as EMFILE before trying again.
const ACCEPT_ERROR_PAUSE_MS: u64 = 50;
/// How long a backlogged reactor waits before retrying its full mailboxes.
const BACKLOG_RETRY_US: u64 = 200;

/// What every reactor shares: configuration, doorbells, counters, the drain flag.
pub struct Shared {
    /// The validated configuration.
    pub config: Config,
    /// One doorbell per reactor, created before any reactor unshares its fd table.
    pub doorbells: Vec<Doorbell>,
    /// One socket handoff per reactor, created likewise: how authenticated connections
    /// reach their home reactor (`--connections-at-home`).
    pub handoffs: Vec<Handoff>,
    /// One set of counters per reactor.
    pub stats: Vec<ReactorStats>,
    /// Set once on SIGTERM/SIGINT: stop accepting, close every WebSocket with 1001.
    pub draining: AtomicBool,
    /// Reactors whose listener is bound (ready when all are).
    pub listening: AtomicUsize,
    /// When the engine started.
    pub started: Instant,
    /// Which groups each user is in: `--groups-per-user-max` and
    /// `--presence-visibility` (see [`UserGroups`]).
    pub user_groups: Arc<UserGroups>,
    /// What the cluster thread knows (`--cluster`; `None` alone).
    pub cluster: Option<Arc<crate::cluster::State>>,
    /// The caps per source address (`--max-pending-per-ip`, `--connects-per-ip-per-sec`).
    pub admission: admission::Admission,
    /// The events thread (`--events-webhook`), which the homes hand their events to.
    pub events: Option<crate::events::Events>,
}

impl Shared {
    /// Creates the doorbells and counters for `config.reactors` reactors, and starts the
    /// events thread if there is an events webhook.
    pub fn new(config: Config) -> io::Result<Shared> {
        let n = config.reactors;
        let cluster: Option<Arc<crate::cluster::State>> =
            config.cluster.as_ref().map(|_| Arc::default());
        let events = match config.events_webhook.clone() {
            Some(webhook) => {
                let state = cluster.clone();
                let node = move || state.as_ref().map(|s| s.node_id().to_owned());
                Some(crate::events::start(webhook, node)?)
            }
            None => None,
        };
        Ok(Shared {
            events,
            doorbells: (0..n).map(|_| Doorbell::new()).collect::<io::Result<_>>()?,
            handoffs: (0..n).map(|_| Handoff::new()).collect::<io::Result<_>>()?,
            stats: (0..n).map(|_| ReactorStats::default()).collect(),
            draining: AtomicBool::new(false),
            listening: AtomicUsize::new(0),
            started: Instant::now(),
            user_groups: Arc::new(UserGroups::new(
                config.groups_per_user_max,
                config.presence_visibility == crate::config::PresenceVisibility::Shared,
            )),
            cluster,
            admission: admission::Admission::new(
                config.max_pending_per_ip,
                config.connects_per_ip_per_sec,
            ),
            config,
        })
    }

    /// Whether every reactor accepts, none is draining, and the node is in its cluster
    /// (if it has one).
    pub fn ready(&self) -> bool {
        self.listening.load(Ordering::Acquire) == self.config.reactors
            && !self.draining.load(Ordering::Acquire)
            && self.cluster.as_ref().is_none_or(|cluster| cluster.ready())
    }

    /// The live figures for `/health` and `/api/stats`, summed over every reactor.
    pub fn health(&self) -> crate::http::health::Health {
        let all = &self.stats;
        crate::http::health::Health {
            online_users: crate::stats::total(all, |s| &s.online_users),
            connections: crate::stats::total(all, |s| &s.connections),
            uptime_seconds: self.started.elapsed().as_secs(),
            ready: self.ready(),
            now_ms: crate::protocol::now_ms(),
        }
    }

    /// Starts the graceful shutdown on every reactor.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
        for bell in &self.doorbells {
            bell.ring();
        }
    }
}

impl store::DoorbellSet for Shared {
    fn ring(&self, index: usize) {
        self.doorbells[index].ring();
    }
}

/// A reactor's two ways to the cluster thread.
pub struct ClusterLink {
    /// What its shard asks of the cluster...
    pub relays: mpsc::Sender<crate::cluster::relay::Relay>,
    /// ...and the cluster thread's doorbell, rung after: an eventfd made before any
    /// reactor unshared its fd table (the tokio runtime's own wake-up is made later, in
    /// the main table only, and a reactor cannot reach it).
    pub doorbell: Arc<Doorbell>,
    /// What the cluster hands it.
    pub inbound: mpsc::Receiver<crate::cluster::relay::Inbound>,
}

/// Everything one reactor thread is handed.
pub struct ReactorSeed {
    /// This reactor's index.
    pub id: usize,
    /// Shared state.
    pub shared: Arc<Shared>,
    /// Rings to each peer (`None` for itself).
    pub producers: Vec<Option<BatchProducer<Envelope>>>,
    /// Rings from each peer (`None` for itself).
    pub consumers: Vec<Option<BatchConsumer<Envelope>>>,
    /// Where to bind (port 0 only for the first reactor).
    pub listen: SocketAddr,
    /// The durable store.
    pub store: store::Store,
    /// The store's answers to this reactor.
    pub store_replies: std::sync::mpsc::Receiver<store::Reply>,
    /// Its link to the cluster thread (`--cluster`).
    pub cluster: Option<ClusterLink>,
    /// The groups homed at this reactor, as the store holds them.
    pub groups: Groups,
    /// The direct messages this home's users received lately, oldest first (its dedup
    /// window starts with them).
    pub recent: Vec<store::RecentPair>,
}

/// The exit code of a process whose reactor died (EX_SOFTWARE).
pub const REACTOR_DIED_EXIT_CODE: i32 = 70;

/// Starts a reactor thread; `ready` receives its bound address or its start-up error.
pub fn spawn(
    seed: ReactorSeed,
    ready: mpsc::Sender<io::Result<SocketAddr>>,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("reactor-{}", seed.id))
        .spawn(move || {
            let id = seed.id;
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(seed, &ready)));
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    error!(reactor = id, "reactor failed: {e}");
                    let _ = ready.send(Err(e));
                }
                Err(_) => {
                    // Its connections are gone and its users unreachable: no silent half
                    // capacity. The panic message is above (the panic hook printed it).
                    error!(reactor = id, "reactor died of a panic; the engine exits");
                    std::process::exit(REACTOR_DIED_EXIT_CODE);
                }
            }
        })
}

fn run(seed: ReactorSeed, ready: &mpsc::Sender<io::Result<SocketAddr>>) -> io::Result<()> {
    pin(seed.id);
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_FILES).map_err(io::Error::from)?;
    let mut runtime = RuntimeBuilder::<FusionDriver>::new()
        .with_entries(URING_ENTRIES)
        .enable_timer()
        .build()?;
    let driver = match &runtime {
        FusionRuntime::Uring(_) => "io_uring",
        FusionRuntime::Legacy(_) => "epoll (legacy)",
    };
    let listener = bind(seed.listen)?;
    let addr = listener.local_addr()?;
    let id = seed.id;
    let shared = seed.shared.clone();
    let reactor = core::Reactor::new(seed, std::os::fd::AsRawFd::as_raw_fd(&listener))?;
    let sockets = reactor.socket_placement();
    if reactor.sockets_use_fd_table() {
        pre_grow_fd_table(shared.doorbells[id].fd());
    }
    info!(reactor = id, driver, sockets, %addr, "reactor started");
    let readiness_fd = dup(reactor.readiness_fd())?;
    let reactor = Rc::new(RefCell::new(reactor));
    runtime.block_on(async move {
        let listener = monoio::net::TcpListener::from_std(listener)?;
        // SAFETY: `readiness_fd` is a fresh dup of the epoll fd that only this stream owns;
        // the stream is used for nothing but readiness waits (io_uring PollAdd / epoll).
        let readiness = monoio::net::TcpStream::from_std(unsafe {
            std::net::TcpStream::from_raw_fd(readiness_fd)
        })?;
        shared.listening.fetch_add(1, Ordering::AcqRel);
        let _ = ready.send(Ok(addr));
        monoio::spawn(accept_loop(reactor.clone(), listener));
        monoio::spawn(timer_loop(reactor.clone()));
        event_loop(reactor, readiness).await;
        io::Result::Ok(())
    })?;
    info!(reactor = id, "reactor stopped");
    Ok(())
}

/// Pins the calling thread to a core (reactors beyond the core count share cores).
fn pin(id: usize) {
    match core_affinity::get_core_ids() {
        Some(cores) if !cores.is_empty() => {
            if !core_affinity::set_for_current(cores[id % cores.len()]) {
                warn!(reactor = id, "could not pin to a core");
            }
        }
        _ => warn!(reactor = id, "no core ids; running unpinned"),
    }
}

/// Grows this thread's fd table to its full size once, so accepts never pay for it.
fn pre_grow_fd_table(any_fd: RawFd) {
    let Ok((soft, _)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    else {
        return;
    };
    let top = soft.saturating_sub(1).min(i32::MAX as u64) as i32;
    // SAFETY: F_DUPFD returns a new fd at or above `top`, which we close at once.
    let fd = unsafe { libc::fcntl(any_fd, libc::F_DUPFD_CLOEXEC, top) };
    if fd >= 0 {
        // SAFETY: we own the duplicate just made.
        unsafe { libc::close(fd) };
    }
}

fn dup(fd: RawFd) -> io::Result<RawFd> {
    // SAFETY: F_DUPFD_CLOEXEC on an fd we own; the result is checked.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(new)
}

/// This reactor's SO_REUSEPORT listener.
fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

async fn accept_loop(reactor: Rc<RefCell<core::Reactor>>, listener: monoio::net::TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let fd = stream.into_raw_fd();
                reactor.borrow_mut().adopt(fd, peer.ip());
            }
            Err(e) => {
                if reactor.borrow().is_draining() {
                    return;
                }
                warn!("accept failed: {e}; pausing {ACCEPT_ERROR_PAUSE_MS} ms");
                monoio::time::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
            }
        }
        if reactor.borrow().is_draining() {
            return;
        }
    }
}

async fn timer_loop(reactor: Rc<RefCell<core::Reactor>>) {
    loop {
        monoio::time::sleep(Duration::from_millis(timer::TICK_MS)).await;
        reactor.borrow_mut().on_tick();
    }
}

async fn event_loop(reactor: Rc<RefCell<core::Reactor>>, readiness: monoio::net::TcpStream) {
    loop {
        let (backlogged, more_input) = {
            let r = reactor.borrow();
            (r.is_backlogged(), r.has_unread_input())
        };
        if backlogged {
            monoio::time::sleep(Duration::from_micros(BACKLOG_RETRY_US)).await;
        } else if more_input {
            YieldNow(false).await;
        } else if let Err(e) = readiness.readable(false).await {
            error!("readiness wait failed: {e}");
            return;
        }
        let mut r = reactor.borrow_mut();
        r.run_batch();
        assert!(!r.failpoint_kill, "failpoint: reactor {} killed", r.id);
        if r.finished() {
            r.close_all();
            return;
        }
    }
}

/// Gives other tasks on this runtime (accept, timer) a turn.
struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}
