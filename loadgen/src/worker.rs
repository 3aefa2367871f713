//! One worker thread: pinned, its own fd table and monoio runtime, its share of the
//! connections as bare slab entries in a socket set (`uring-sockets`, as the engine's
//! reactors have: io_uring direct descriptors, or the fd table with epoll).
//!
//! Phases run in order: ramp (open, upgrade and authenticate at the worker's rate), then
//! hold (a ping sweep: every connection must answer; closes are counted).

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    io,
    net::{IpAddr, SocketAddr},
    os::fd::RawFd,
    rc::Rc,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Barrier, Mutex,
    },
    time::{Duration, Instant},
};

use monoio::{FusionDriver, RuntimeBuilder};
use slab::Slab;
use uring_sockets::{Placement, Socket, Sockets, BROKEN, PEER_CLOSED, READABLE, REARM, WRITABLE};
use ws_frame::frame::{encode_client, parse_server_frame, Kind, PONG, TEXT};

use crate::{
    config::Scenario,
    devices::Devices,
    latency::Latency,
    timeline::{Recorder, Second, Timeline},
};

/// How often the ramp opens the connections that are due.
const RAMP_TICK: Duration = Duration::from_millis(5);
/// The most bytes kept from a connection between reads (a partial frame).
const INBUF_BYTES_MAX: usize = 1 << 20;

/// What every worker is told.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The servers: user i connects to the i-th, modulo their count.
    pub targets: Vec<SocketAddr>,
    /// Source addresses to rotate over (empty: let the OS choose).
    pub sources: Vec<IpAddr>,
    /// Workers in all.
    pub workers: usize,
    /// Where each worker keeps its sockets.
    pub sockets: Placement,
    /// Connections in all.
    pub connections: usize,
    /// Connections per second, all workers together.
    pub ramp_per_sec: u64,
    /// How long to hold after the ramp.
    pub hold: Duration,
    /// Deadline for one connection to become authenticated.
    pub connect_timeout: Duration,
    /// Messages per second during the load phase, all workers together (0: no load phase).
    pub rate: u64,
    /// Length of the load phase.
    pub duration: Duration,
    /// The run's time origin: scheduled and arrival times are nanoseconds since it.
    pub epoch: Instant,
    /// Chat protocol or plain echo.
    pub scenario: Scenario,
    /// Address every message to a user no connection holds (the store's load).
    pub offline_receivers: bool,
    /// Keep the id of every message acknowledged `queued`.
    pub record_queued_ids: bool,
    /// The server's pid, for its RSS at the end of the hold.
    pub server_pid: Option<u32>,
    /// Churn: the share of the connections (percent) that drop with a reset and
    /// reconnect, resuming, each minute of the load.
    pub churn_per_min: f64,
    /// Churn: `kill -9` the server this far into the load (its script restarts it).
    pub kill_server_at: Option<Duration>,
    /// TLS to the server (`--tls`).
    pub tls: Option<crate::tls::Tls>,
}

impl Plan {
    /// This worker's share of the connections: users `id, id + workers, id + 2·workers, …`.
    pub fn users_of(&self, worker: usize) -> impl Iterator<Item = usize> + '_ {
        (worker..self.connections).step_by(self.workers)
    }

    /// The server user `user` connects to.
    pub fn target_of(&self, user: usize) -> SocketAddr {
        self.targets[user % self.targets.len()]
    }
}

/// What the workers share: live counts the main thread shows, summed over workers, the
/// moments the server is measured at, and the load's timeline.
#[derive(Debug, Default)]
pub struct Progress {
    /// Connections attempted.
    pub attempted: AtomicU64,
    /// Connections authenticated.
    pub authenticated: AtomicU64,
    /// Connections that failed.
    pub failed: AtomicU64,
    /// Messages sent in the load phase.
    pub sent: AtomicU64,
    /// Messages that reached their receiver.
    pub delivered: AtomicU64,
    /// Messages the server answered `peer_offline` (receiver not held).
    pub undeliverable: AtomicU64,
    /// Messages the server acknowledged `queued` (receiver offline, message stored).
    pub queued: AtomicU64,
    /// Messages the server rejected (`message_ack` `rejected`: a full inbox, the
    /// sender's quota, the rate limit, too large).
    pub rejected: AtomicU64,
    /// Set on Ctrl-C: every phase ends early and the partial report is written.
    pub interrupted: AtomicBool,
    /// Workers whose load schedule has ended.
    pub senders_done: AtomicUsize,
    /// Workers that have finished the hold.
    pub holds_done: AtomicUsize,
    /// The server's RSS read when every worker had finished the hold and none had begun the
    /// load: the idle figure (0 when not measured).
    pub server_rss_after_hold: AtomicU64,
    /// Workers that have drained what was in flight.
    pub drained: AtomicUsize,
    /// The server's CPU time (user + system, clock ticks) when the load began and when the
    /// last worker had drained it (0 when not measured).
    pub server_cpu_ticks: [AtomicU64; 2],
    /// The loadgen's own CPU time at the same two moments.
    pub loadgen_cpu_ticks: [AtomicU64; 2],
    /// When the load began, in ns since the plan's epoch: set by the last worker to finish
    /// the hold, before any starts the load (the timeline's second 0).
    pub load_started_ns: AtomicU64,
    /// The load second by second, over every worker.
    pub timeline: Mutex<Timeline>,
}

impl Progress {
    /// The progress of a run with `workers` workers.
    pub fn new(workers: usize) -> Progress {
        Progress {
            timeline: Mutex::new(Timeline::new(workers)),
            ..Progress::default()
        }
    }

    fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Acquire)
    }
}

/// What one worker reports at the end.
#[derive(Debug, Default)]
pub struct WorkerReport {
    /// Connections attempted.
    pub attempted: u64,
    /// Connections that answered the ping sweep and were still open at the end of the hold.
    pub held: u64,
    /// The same, per target (in `--target`'s order).
    pub held_per_target: Vec<u64>,
    /// Failures by reason.
    pub failed: BTreeMap<&'static str, u64>,
    /// Seconds from the first connect to the last authentication.
    pub ramp_secs: f64,
    /// Messages sent in the load phase.
    pub sent: u64,
    /// Those whose receiver connects to another target than its sender.
    pub sent_across: u64,
    /// Messages received by this worker's connections.
    pub delivered: u64,
    /// Acks received.
    pub acked: u64,
    /// Messages answered `peer_offline`.
    pub undeliverable: u64,
    /// Messages acknowledged `queued` (stored for an offline receiver).
    pub queued: u64,
    /// Messages the server rejected (`message_ack` `rejected`).
    pub rejected: u64,
    /// Their ids, when the plan says to keep them.
    pub queued_ids: Vec<Box<str>>,
    /// Messages sent later than scheduled by more than 1 ms (the generator fell behind).
    pub sent_late: u64,
    /// Scheduled send → arrival at the receiver.
    pub delivery: Latency,
    /// Scheduled send → `message_ack` at the sender.
    pub ack: Latency,
    /// Churn: what the devices saw.
    pub devices: Devices,
    /// Churn: connections dropped (reset) on purpose, and reconnects made.
    pub churned: (u64, u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    /// TLS (`--tls`): the handshake is under way.
    Handshaking,
    Upgrading,
    Authenticating,
    Ready,
    PingSent,
    Answered,
}

struct Client {
    socket: Socket,
    state: State,
    user: usize,
    inbuf: Vec<u8>,
    /// Its TLS (`--tls`).
    tls: Option<Box<crate::tls::ClientTls>>,
}

struct Worker {
    id: usize,
    plan: Arc<Plan>,
    progress: Arc<Progress>,
    sockets: Sockets,
    clients: Slab<Client>,
    read_buffer: Vec<u8>,
    /// TLS: scratch for sealed output.
    tls_out: Vec<u8>,
    report: WorkerReport,
    authenticated: u64,
    source_cursor: usize,
    last_auth: Option<Instant>,
    rng: u64,
    /// A timerfd in the readiness set, armed for the next scheduled send (µs precision;
    /// the runtime's sleep has millisecond ticks, which showed up as latency).
    send_timer: RawFd,
    /// Each user's connection (its slab key), while it has one.
    slot_of: HashMap<usize, usize>,
    /// Churn: drops owed so far (fractional), and users waiting to reconnect, with when.
    churn_debt: f64,
    reconnects: Vec<(Instant, usize)>,
    /// Churn: whether the load is under way (a connection that fails then reconnects).
    churning: bool,
    /// When a frame last arrived (churn's drain waits for quiet).
    last_frame: Instant,
    schedule: Option<Schedule>,
    /// The load's current second (from the start of the load to its end).
    second: Option<Recorder>,
    /// Reused buffer of readiness events.
    events: Vec<(u32, u64)>,
}

/// Runs worker `id` to the end of the hold; returns its report.
pub fn run(
    id: usize,
    plan: Arc<Plan>,
    progress: Arc<Progress>,
    load_start: Arc<Barrier>,
) -> io::Result<WorkerReport> {
    if let Some(cores) = core_affinity::get_core_ids().filter(|c| !c.is_empty()) {
        core_affinity::set_for_current(cores[id % cores.len()]);
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_FILES).map_err(io::Error::from)?;
    let mut runtime = RuntimeBuilder::<FusionDriver>::new()
        .enable_timer()
        .build()?;
    let (sockets, _) = Sockets::new(plan.sockets)?;
    let worker = Rc::new(RefCell::new(Worker {
        id,
        sockets,
        clients: Slab::new(),
        read_buffer: vec![0; 64 * 1024],
        tls_out: Vec::new(),
        report: WorkerReport::default(),
        authenticated: 0,
        source_cursor: id,
        last_auth: None,
        rng: 0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1),
        send_timer: timerfd()?,
        slot_of: HashMap::new(),
        churn_debt: 0.0,
        reconnects: Vec::new(),
        churning: false,
        last_frame: Instant::now(),
        schedule: None,
        second: None,
        events: Vec::new(),
        plan,
        progress,
    }));
    {
        let w = worker.borrow();
        w.sockets.watch(w.send_timer, SEND_TIMER_TOKEN)?;
    }
    let readiness_fd = dup(worker.borrow().sockets.fd())?;
    runtime.block_on(async move {
        use std::os::fd::FromRawFd;
        // SAFETY: a fresh dup of the epoll fd, owned by this stream and used only for readiness.
        let readiness = monoio::net::TcpStream::from_std(unsafe {
            std::net::TcpStream::from_raw_fd(readiness_fd)
        })?;
        let events = worker.clone();
        monoio::spawn(async move {
            while readiness.readable(false).await.is_ok() {
                events.borrow_mut().on_events();
            }
        });
        ramp(&worker).await;
        hold(&worker).await;
        // Every worker has held its connections before any load starts. The last to arrive
        // reads the server's RSS and CPU time while the others wait: no load traffic is in
        // them.
        {
            let w = worker.borrow();
            if w.progress.holds_done.fetch_add(1, Ordering::AcqRel) + 1 == w.plan.workers {
                let started = w.since_epoch_ns(Instant::now());
                w.progress.load_started_ns.store(started, Ordering::Release);
                let own = crate::cpu_ticks(std::process::id()).unwrap_or(0);
                w.progress.loadgen_cpu_ticks[0].store(own, Ordering::Release);
                if let Some(pid) = w.plan.server_pid {
                    let rss = crate::server_rss_bytes(pid).unwrap_or(0);
                    w.progress
                        .server_rss_after_hold
                        .store(rss, Ordering::Release);
                    let cpu = crate::cpu_ticks(pid).unwrap_or(0);
                    w.progress.server_cpu_ticks[0].store(cpu, Ordering::Release);
                }
            }
        }
        load_start.wait();
        {
            let mut w = worker.borrow_mut();
            let started = w.progress.load_started_ns.load(Ordering::Acquire);
            w.second = Some(Recorder::new(id, started));
        }
        load(&worker).await;
        let mut w = worker.borrow_mut();
        if let Some(second) = w.second.take() {
            second.finish(&w.progress.timeline);
        }
        w.finish();
        Ok(std::mem::take(&mut w.report))
    })
}

fn timerfd() -> io::Result<RawFd> {
    // SAFETY: timerfd_create with constant flags; result checked.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Arms the timer to fire `after` from now and then every `every` (both at least 1 µs),
/// so a steady schedule costs no `timerfd_settime` per wake-up; [`disarm`] stops it.
fn arm(timer: RawFd, after: Duration, every: Duration) {
    let floor = Duration::from_micros(1);
    set_timer(timer, after.max(floor), every.max(floor));
}

/// Stops the timer.
fn disarm(timer: RawFd) {
    set_timer(timer, Duration::ZERO, Duration::ZERO);
}

fn set_timer(timer: RawFd, after: Duration, every: Duration) {
    let timespec = |d: Duration| libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    };
    let spec = libc::itimerspec {
        it_interval: timespec(every),
        it_value: timespec(after),
    };
    // SAFETY: `spec` is a live itimerspec; the old value is not asked for.
    unsafe { libc::timerfd_settime(timer, 0, &spec, std::ptr::null_mut()) };
}

fn dup(fd: RawFd) -> io::Result<RawFd> {
    // SAFETY: F_DUPFD_CLOEXEC on an fd we own; result checked.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(new)
}

async fn ramp(worker: &Rc<RefCell<Worker>>) {
    let (users, rate, timeout) = {
        let w = worker.borrow();
        let users: Vec<usize> = w.plan.users_of(w.id).collect();
        let rate = (w.plan.ramp_per_sec as f64 / w.plan.workers as f64).max(1.0);
        (users, rate, w.plan.connect_timeout)
    };
    let started = Instant::now();
    // Bounded: every connection settles (authenticated or failed) by the deadline below.
    let deadline = started
        + Duration::from_secs_f64(users.len() as f64 / rate)
        + timeout
        + Duration::from_secs(1);
    let mut next = 0;
    loop {
        monoio::time::sleep(RAMP_TICK).await;
        let mut w = worker.borrow_mut();
        let due = ((started.elapsed().as_secs_f64() * rate) as usize + 1).min(users.len());
        while next < due {
            w.open(users[next]);
            next += 1;
        }
        w.on_events();
        let settled = w.authenticated + w.report.failed.values().sum::<u64>();
        if next == users.len() && settled >= users.len() as u64 {
            break;
        }
        if Instant::now() >= deadline {
            w.fail_unsettled("timeout");
            break;
        }
        if w.progress.interrupted() {
            w.fail_unsettled("interrupted");
            break;
        }
    }
    let mut w = worker.borrow_mut();
    w.report.ramp_secs = w
        .last_auth
        .map_or(0.0, |t| t.duration_since(started).as_secs_f64());
}

async fn hold(worker: &Rc<RefCell<Worker>>) {
    let (hold, progress) = (worker.borrow().plan.hold, worker.borrow().progress.clone());
    worker.borrow_mut().ping_all();
    // The sweep completes first (every connection answered, bounded by the connect
    // timeout); then the hold itself.
    let sweep_end = Instant::now() + worker.borrow().plan.connect_timeout;
    while Instant::now() < sweep_end && !progress.interrupted() && worker.borrow().awaiting_pong() {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    let end = Instant::now() + hold;
    // In short steps, so Ctrl-C ends the hold promptly.
    while Instant::now() < end && !progress.interrupted() {
        monoio::time::sleep(
            end.saturating_duration_since(Instant::now())
                .min(INTERRUPT_POLL),
        )
        .await;
    }
    worker.borrow_mut().on_events();
}

/// How often a waiting phase checks for Ctrl-C.
const INTERRUPT_POLL: Duration = Duration::from_millis(100);

impl Schedule {
    /// When message `k` is due: `started + k / rate`.
    fn at(&self, k: u64) -> Instant {
        self.started + Duration::from_secs_f64(k as f64 / self.rate_per_worker)
    }

    /// How many messages are due by `elapsed` since the start (message 0 at once).
    fn due_by(&self, elapsed: Duration) -> u64 {
        ((elapsed.as_secs_f64() * self.rate_per_worker) as u64 + 1).min(self.total)
    }
}

/// The epoll token of the send timer; connections use their slab key.
const SEND_TIMER_TOKEN: u64 = 1 << 63;

/// The load phase's open-loop schedule: message k is due at `started + k / rate`, whatever
/// happened to earlier ones.
struct Schedule {
    senders: Vec<usize>,
    started: Instant,
    rate_per_worker: f64,
    next: u64,
    total: u64,
}
/// How long after the last send the load phase waits for deliveries still in flight.
const DRAIN_WAIT: Duration = Duration::from_secs(5);
/// How long churn waits at most, after the load, for every device to be back and caught up.
const CHURN_DRAIN_WAIT: Duration = Duration::from_secs(60);
/// A churn device is caught up once nothing has arrived for this long.
const CHURN_QUIET: Duration = Duration::from_secs(1);
/// How often churn drops connections and reconnects those waiting.
const CHURN_TICK: Duration = Duration::from_millis(10);
/// How long a connection that failed during churn waits before it reconnects.
const RECONNECT_AFTER: Duration = Duration::from_millis(200);

async fn load(worker: &Rc<RefCell<Worker>>) {
    let (rate, duration, workers, progress) = {
        let w = worker.borrow();
        (
            w.plan.rate,
            w.plan.duration,
            w.plan.workers,
            w.progress.clone(),
        )
    };
    if rate == 0 || duration.is_zero() {
        return;
    }
    send_schedule(worker, rate, duration, workers, &progress).await;
    progress.senders_done.fetch_add(1, Ordering::AcqRel);
    // Bounded wait for what is still in flight, across all workers. Churn waits longer:
    // every device must be back and caught up (quiet for a second) before it is judged.
    let churn = worker.borrow().plan.scenario == Scenario::Churn;
    let drain_deadline = Instant::now() + if churn { CHURN_DRAIN_WAIT } else { DRAIN_WAIT };
    while Instant::now() < drain_deadline && !progress.interrupted() {
        if churn {
            let settled = {
                let mut w = worker.borrow_mut();
                w.reconnect_due();
                let back = w.reconnects.is_empty()
                    && w.clients.iter().all(|(_, c)| c.state == State::Answered);
                back && w.last_frame.elapsed() >= CHURN_QUIET
            };
            if settled {
                break;
            }
            monoio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let sent = progress.sent.load(Ordering::Acquire);
        let settled = progress.delivered.load(Ordering::Acquire)
            + progress.undeliverable.load(Ordering::Acquire)
            + progress.queued.load(Ordering::Acquire)
            + progress.rejected.load(Ordering::Acquire);
        let acks_in = {
            let w = worker.borrow();
            // Echo servers send no acks.
            w.plan.scenario == Scenario::Echo
                || w.report.acked + w.report.undeliverable + w.report.rejected >= w.report.sent
        };
        let all_sent = progress.senders_done.load(Ordering::Acquire) == workers;
        if all_sent && settled >= sent && acks_in {
            break;
        }
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    // Keep reading until every worker is done, so no worker closes connections that others
    // are still delivering to. Bounded like the drain.
    if progress.drained.fetch_add(1, Ordering::AcqRel) + 1 == workers {
        // The last worker to drain: the server's work for this load is done.
        let own = crate::cpu_ticks(std::process::id()).unwrap_or(0);
        progress.loadgen_cpu_ticks[1].store(own, Ordering::Release);
        if let Some(cpu) = worker.borrow().plan.server_pid.and_then(crate::cpu_ticks) {
            progress.server_cpu_ticks[1].store(cpu, Ordering::Release);
        }
    }
    let end = Instant::now() + DRAIN_WAIT;
    while progress.drained.load(Ordering::Acquire) < workers
        && Instant::now() < end
        && !progress.interrupted()
    {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs this worker's open-loop schedule to its end (or Ctrl-C).
async fn send_schedule(
    worker: &Rc<RefCell<Worker>>,
    rate: u64,
    duration: Duration,
    workers: usize,
    progress: &Progress,
) {
    // Senders are users: a user whose connection drops (churn) sends again once back.
    let senders: Vec<usize> = {
        let w = worker.borrow();
        w.clients
            .iter()
            .filter(|(_, c)| c.state == State::Answered)
            .map(|(_, c)| c.user)
            .collect()
    };
    let rate_per_worker = rate as f64 / workers as f64;
    let total = (rate_per_worker * duration.as_secs_f64()).round() as u64;
    if senders.is_empty() || total == 0 {
        return;
    }
    {
        let mut w = worker.borrow_mut();
        let schedule = Schedule {
            senders,
            started: Instant::now(),
            rate_per_worker,
            next: 0,
            total,
        };
        // Message k is due at k / rate: the timer fires at each (the first is sent now).
        let every = Duration::from_secs_f64(1.0 / rate_per_worker);
        arm(w.send_timer, every, every);
        w.schedule = Some(schedule);
        w.send_due();
    }
    // The send timer in the readiness set does the sending; this only waits for the end,
    // and, for churn, drops and reconnects connections as it goes.
    let started = Instant::now();
    let end = started + duration + Duration::from_secs(1);
    let mut killed = false;
    let churn = worker.borrow().plan.scenario == Scenario::Churn;
    worker.borrow_mut().churning = churn;
    while worker
        .borrow()
        .schedule
        .as_ref()
        .is_some_and(|s| s.next < s.total)
        && Instant::now() < end
        && !progress.interrupted()
    {
        monoio::time::sleep(CHURN_TICK).await;
        let mut w = worker.borrow_mut();
        if w.churning {
            w.churn(CHURN_TICK);
            let kill_at = w.plan.kill_server_at;
            if w.id == 0 && !killed && kill_at.is_some_and(|at| started.elapsed() >= at) {
                killed = true;
                if let Some(pid) = w.plan.server_pid {
                    eprintln!("\nloadgen: kill -9 {pid} (--kill-server-at)");
                    // SAFETY: kill(2) with a pid the user gave; no memory is passed.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                }
            }
        }
    }
    let mut w = worker.borrow_mut();
    w.schedule = None;
    disarm(w.send_timer); // stopped early (Ctrl-C, the deadline) it would still fire
}

impl Worker {
    fn random(&mut self) -> u64 {
        // xorshift64*: plenty for picking users.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn since_epoch_ns(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.plan.epoch).as_nanos() as u64
    }

    /// The load's second `now_ns` falls in (`None` outside the load).
    fn second_at(&mut self, now_ns: u64) -> Option<&mut Second> {
        let timeline = &self.progress.timeline;
        self.second
            .as_mut()
            .map(|second| second.at(now_ns, timeline))
    }

    /// Sends every message now due; stops the send timer after the last.
    fn send_due(&mut self) {
        let Some(mut schedule) = self.schedule.take() else {
            return;
        };
        let mut count: u64 = 0;
        // SAFETY: reads the expiry count (8 bytes) from our non-blocking timerfd.
        unsafe { libc::read(self.send_timer, (&mut count as *mut u64).cast(), 8) };
        let due = schedule.due_by(schedule.started.elapsed());
        while schedule.next < due {
            let at = schedule.at(schedule.next);
            self.send_message(&schedule.senders, schedule.next, at);
            schedule.next += 1;
        }
        if schedule.next >= schedule.total {
            disarm(self.send_timer);
        }
        self.schedule = Some(schedule);
    }

    /// Sends message `seq` from a random sender of this worker to a random user.
    fn send_message(&mut self, senders: &[usize], seq: u64, scheduled: Instant) {
        let sender_user = senders[(self.random() % senders.len() as u64) as usize];
        let ready = |c: &Client| matches!(c.state, State::Ready | State::Answered);
        let Some(&sender) = self
            .slot_of
            .get(&sender_user)
            .filter(|&&slot| self.clients.get(slot).is_some_and(ready))
        else {
            return; // the sender's connection failed (counted) or is reconnecting
        };
        let sender_user = sender_user as u64;
        // Any user but the sender itself (whose only device is the sending one).
        let others = (self.plan.connections as u64 - 1).max(1);
        let receiver = (sender_user + 1 + self.random() % others) % self.plan.connections as u64;
        // `lgoff…` users are never connected: every message goes to the store.
        let prefix = if self.plan.offline_receivers {
            "lgoff"
        } else {
            "lg"
        };
        let stamp = self.since_epoch_ns(scheduled);
        let text = match self.plan.scenario {
            Scenario::Chat | Scenario::Churn => format!(
                r#"{{"type":"send_message","messageId":"{stamp}-{}-{seq}","receiverId":"{prefix}{receiver}","content":"{stamp}"}}"#,
                self.id
            ),
            // The echo comes back on the sending connection carrying the same stamp.
            Scenario::Echo => stamp.to_string(),
        };
        let now = Instant::now();
        if now.saturating_duration_since(scheduled) > Duration::from_millis(1) {
            self.report.sent_late += 1;
        }
        if self.send_text(sender, &text) {
            self.report.sent += 1;
            let now_ns = self.since_epoch_ns(now);
            if let Some(second) = self.second_at(now_ns) {
                second.sent();
            }
            // Offline receivers and echoes have no receiving connection.
            let targets = self.plan.targets.len() as u64;
            let received = self.plan.scenario != Scenario::Echo && !self.plan.offline_receivers;
            if received && sender_user % targets != receiver % targets {
                self.report.sent_across += 1;
            }
            self.progress.sent.fetch_add(1, Ordering::Release);
        }
    }

    fn open(&mut self, user: usize) {
        self.report.attempted += 1;
        self.progress.attempted.fetch_add(1, Ordering::Relaxed);
        let source = if self.plan.sources.is_empty() {
            None
        } else {
            self.source_cursor = (self.source_cursor + 1) % self.plan.sources.len();
            Some(self.plan.sources[self.source_cursor])
        };
        let reset = self.plan.scenario == Scenario::Churn;
        let connected = connect(self.plan.target_of(user), source, reset).and_then(|fd| {
            let slot = self.clients.vacant_key();
            self.sockets.adopt(fd, slot as u64)
        });
        match connected {
            Ok(socket) => {
                let slot = self.clients.insert(Client {
                    socket,
                    state: State::Connecting,
                    user,
                    inbuf: Vec::new(),
                    tls: None,
                });
                self.slot_of.insert(user, slot);
            }
            Err(e) => {
                self.count_failure(connect_failure(&e));
                self.reconnect_later(user);
            }
        }
    }

    /// Handles the ready events. Reuses one event buffer: no allocation per wake-up.
    fn on_events(&mut self) {
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        self.sockets.poll_now(&mut events);
        for &(bits, token) in &events {
            if token == SEND_TIMER_TOKEN {
                self.send_due();
                continue;
            }
            let slot = token as usize;
            let Some(client) = self.clients.get(slot) else {
                continue;
            };
            if bits & REARM != 0 {
                self.sockets.rearm(client.socket, token);
            }
            if bits & WRITABLE != 0 && self.clients[slot].state == State::Connecting {
                self.on_connected(slot);
            }
            // on_connected may have failed (and removed) the connection.
            if bits & (READABLE | BROKEN) != 0 && self.clients.contains(slot) {
                self.on_readable(slot, bits & (BROKEN | PEER_CLOSED) == 0);
            }
        }
        self.events = events;
    }

    /// The socket became writable: connected, or failed (the first send then says why).
    /// With TLS the handshake starts; the upgrade follows it.
    fn on_connected(&mut self, slot: usize) {
        if let Some(tls) = &self.plan.tls {
            let mut out = std::mem::take(&mut self.tls_out);
            out.clear();
            let started = tls.connect(&mut out);
            let sent = match started {
                Ok(client_tls) => {
                    self.clients[slot].tls = Some(Box::new(client_tls));
                    self.send_raw(slot, &out)
                }
                Err(_) => {
                    self.fail(slot, "tls_failed");
                    false
                }
            };
            self.tls_out = out;
            if sent {
                self.clients[slot].state = State::Handshaking;
            }
            return;
        }
        self.send_upgrade(slot);
    }

    /// Sends the WebSocket upgrade; false when the connection failed.
    fn send_upgrade(&mut self, slot: usize) -> bool {
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            self.plan.target_of(self.clients[slot].user)
        );
        if !self.send_all(slot, request.as_bytes()) {
            return false;
        }
        self.clients[slot].state = State::Upgrading;
        true
    }

    /// Writes a small message whole (it fits the socket buffer), sealed with TLS, or fails
    /// the connection (with the connect's error when it never connected).
    fn send_all(&mut self, slot: usize, bytes: &[u8]) -> bool {
        let Some(tls) = self.clients[slot].tls.as_mut() else {
            return self.send_raw(slot, bytes);
        };
        let mut out = std::mem::take(&mut self.tls_out);
        out.clear();
        let sent = match tls.seal(bytes, &mut out) {
            true => self.send_raw(slot, &out),
            false => {
                self.fail(slot, "tls_failed");
                false
            }
        };
        self.tls_out = out;
        sent
    }

    /// Writes bytes as they are (sealed already, or in the clear) whole, or fails the
    /// connection.
    fn send_raw(&mut self, slot: usize, bytes: &[u8]) -> bool {
        let client = &self.clients[slot];
        let reason = match self.sockets.write(client.socket, bytes) {
            Ok(n) if n == bytes.len() => return true,
            Err(e) if client.state == State::Connecting => connect_failure(&e),
            _ => "write_failed",
        };
        self.fail(slot, reason);
        false
    }

    fn send_text(&mut self, slot: usize, text: &str) -> bool {
        let mut frame = Vec::with_capacity(text.len() + 14);
        encode_client(
            TEXT,
            text.as_bytes(),
            (slot as u32).to_ne_bytes(),
            &mut frame,
        );
        self.send_all(slot, &frame)
    }

    /// Reads what the connection has. `short_read_drains`: a read that did not fill the
    /// buffer emptied the socket, so the next arrival raises a new (edge-triggered) event
    /// and no read is spent on learning `WouldBlock` (as the engine does); not when the peer
    /// closed or failed, which is read to the end.
    fn on_readable(&mut self, slot: usize, short_read_drains: bool) {
        loop {
            let client = &self.clients[slot];
            match self.sockets.read(client.socket, &mut self.read_buffer) {
                Ok(0) => return self.fail(slot, "closed_by_server"),
                Ok(n) => {
                    let client = &mut self.clients[slot];
                    if client.inbuf.len() + n > INBUF_BYTES_MAX {
                        return self.fail(slot, "oversize_input");
                    }
                    if client.tls.is_some() {
                        if !self.tls_input(slot, n) {
                            return;
                        }
                    } else {
                        client.inbuf.extend_from_slice(&self.read_buffer[..n]);
                    }
                    let drained = short_read_drains && n < self.read_buffer.len();
                    if !self.process_input(slot) || drained {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // A connect that failed reports its error to the first read.
                Err(e) if self.clients[slot].state == State::Connecting => {
                    return self.fail(slot, connect_failure(&e))
                }
                Err(_) => return self.fail(slot, "reset"),
            }
        }
    }

    /// Takes `read_buffer[..n]` through the connection's TLS into its input; sends the
    /// upgrade when the handshake ends. False when the connection was closed.
    fn tls_input(&mut self, slot: usize, n: usize) -> bool {
        let mut out = std::mem::take(&mut self.tls_out);
        out.clear();
        let client = &mut self.clients[slot];
        let tls = client.tls.as_mut().expect("a TLS connection");
        let input = tls.input(&self.read_buffer[..n], &mut client.inbuf, &mut out);
        let open = match input {
            Err(_) => {
                self.fail(slot, "tls_failed");
                false
            }
            Ok(input) if input.closed => {
                self.fail(slot, "closed_by_server");
                false
            }
            Ok(input) => {
                let mut open = out.is_empty() || self.send_raw(slot, &out);
                if open && input.established {
                    open = self.send_upgrade(slot);
                }
                open
            }
        };
        self.tls_out = out;
        open
    }

    /// Consumes what the connection has read; false when it was closed.
    fn process_input(&mut self, slot: usize) -> bool {
        if self.clients[slot].state == State::Upgrading {
            let inbuf = &self.clients[slot].inbuf;
            let Some(end) = inbuf.windows(4).position(|w| w == b"\r\n\r\n") else {
                return true;
            };
            if !inbuf.starts_with(b"HTTP/1.1 101") {
                self.fail(slot, "upgrade_refused");
                return false;
            }
            self.clients[slot].inbuf.drain(..end + 4);
            if self.plan.scenario == Scenario::Echo {
                self.clients[slot].state = State::Authenticating;
                self.mark_ready(slot);
                return self.process_frames(slot);
            }
            let user = self.clients[slot].user;
            let auth = match self.plan.scenario {
                Scenario::Churn => self.report.devices.auth(user),
                _ => format!(r#"{{"type":"auth","userId":"lg{user}","deviceId":"lg"}}"#),
            };
            if !self.send_text(slot, &auth) {
                return false;
            }
            self.clients[slot].state = State::Authenticating;
        }
        self.process_frames(slot)
    }

    /// Handles every whole frame the connection has read; false when it was closed.
    fn process_frames(&mut self, slot: usize) -> bool {
        self.last_frame = Instant::now();
        let mut used = 0;
        loop {
            let parsed = parse_server_frame(&self.clients[slot].inbuf[used..]);
            let (frame, len) = match parsed {
                Ok(Some(found)) => found,
                Ok(None) => break,
                Err(_) => {
                    self.fail(slot, "bad_frame");
                    return false;
                }
            };
            let start = used;
            used += len;
            match frame.kind {
                Kind::Text => {
                    let payload = &self.clients[slot].inbuf
                        [start + frame.payload.start..start + frame.payload.end];
                    let (kind, stamp) = match self.plan.scenario {
                        Scenario::Chat | Scenario::Churn => {
                            let kind = message_type(payload);
                            if kind == MessageType::Queued && self.plan.record_queued_ids {
                                if let Some(id) = message_id_of(payload) {
                                    self.report.queued_ids.push(id.into());
                                }
                            }
                            (kind, stamp_of(payload, kind))
                        }
                        Scenario::Echo => echo_type(payload),
                    };
                    if self.plan.scenario == Scenario::Churn
                        && !self.on_device_frame(
                            slot,
                            kind,
                            start + frame.payload.start..start + frame.payload.end,
                        )
                    {
                        return false;
                    }
                    if !self.on_message(slot, kind, stamp) {
                        return false;
                    }
                }
                Kind::Close => {
                    self.fail(slot, "closed_by_server");
                    return false;
                }
                Kind::Ping => {
                    // A server checking on an idle connection: answer as RFC 6455 says.
                    let range = start + frame.payload.start..start + frame.payload.end;
                    let payload = self.clients[slot].inbuf[range].to_vec();
                    let mut pong = Vec::with_capacity(payload.len() + 14);
                    encode_client(PONG, &payload, (slot as u32).to_ne_bytes(), &mut pong);
                    if !self.send_all(slot, &pong) {
                        return false;
                    }
                }
                _ => {}
            }
        }
        self.clients[slot].inbuf.drain(..used);
        true
    }

    /// Counts an ack (`sent` or `queued`) that came at `now_ns`, `latency_us` after its
    /// message was due.
    fn record_ack(&mut self, latency_us: u64, now_ns: u64) {
        self.report.ack.record_us(latency_us);
        self.report.acked += 1;
        if let Some(second) = self.second_at(now_ns) {
            second.acked(latency_us);
        }
    }

    /// Acts on a server message by type; false when the connection was failed.
    fn on_message(&mut self, slot: usize, kind: MessageType, stamp: Option<u64>) -> bool {
        let now_ns = self.since_epoch_ns(Instant::now());
        match (kind, stamp) {
            (MessageType::NewMessage, Some(scheduled)) => {
                let latency_us = now_ns.saturating_sub(scheduled) / 1000;
                self.report.delivery.record_us(latency_us);
                if let Some(second) = self.second_at(now_ns) {
                    second.delivered(latency_us);
                }
                self.report.delivered += 1;
                self.progress.delivered.fetch_add(1, Ordering::Release);
                return true;
            }
            (MessageType::Ack, Some(scheduled)) => {
                self.record_ack(now_ns.saturating_sub(scheduled) / 1000, now_ns);
                return true;
            }
            (MessageType::Queued, Some(scheduled)) => {
                self.record_ack(now_ns.saturating_sub(scheduled) / 1000, now_ns);
                self.report.queued += 1;
                self.progress.queued.fetch_add(1, Ordering::Release);
                return true;
            }
            // An answer, but not an ack: no ack latency, and never delivered.
            (MessageType::Rejected, Some(_)) => {
                self.report.rejected += 1;
                self.progress.rejected.fetch_add(1, Ordering::Release);
                return true;
            }
            (MessageType::PeerOffline, _) => {
                self.report.undeliverable += 1;
                self.progress.undeliverable.fetch_add(1, Ordering::Release);
                return true;
            }
            _ => {}
        }
        let client = &mut self.clients[slot];
        match (client.state, kind) {
            (State::Authenticating, MessageType::AuthSuccess) => {
                self.mark_ready(slot);
                if self.churning {
                    self.clients[slot].state = State::Answered; // back in the load
                }
                true
            }
            // Counted by its code: `auth_failed`, or what the server could not do
            // (`cluster_unavailable`, say).
            (State::Authenticating, MessageType::Error(code)) => {
                self.fail(slot, code);
                false
            }
            (State::PingSent, MessageType::Pong) => {
                client.state = State::Answered;
                true
            }
            _ => true,
        }
    }

    /// Whether some connection has not answered the ping sweep yet.
    fn awaiting_pong(&self) -> bool {
        self.clients.iter().any(|(_, c)| c.state == State::PingSent)
    }

    /// The connection is open (and authenticated, for chat): it counts as established.
    fn mark_ready(&mut self, slot: usize) {
        self.clients[slot].state = State::Ready;
        self.authenticated += 1;
        self.last_auth = Some(Instant::now());
        self.progress.authenticated.fetch_add(1, Ordering::Relaxed);
    }

    fn ping_all(&mut self) {
        let ping = match self.plan.scenario {
            Scenario::Chat | Scenario::Churn => r#"{"type":"ping","ts":0}"#,
            Scenario::Echo => "ping",
        };
        let ready: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| c.state == State::Ready)
            .map(|(slot, _)| slot)
            .collect();
        for slot in ready {
            if self.send_text(slot, ping) {
                self.clients[slot].state = State::PingSent;
            }
        }
    }

    fn fail_unsettled(&mut self, reason: &'static str) {
        let unsettled: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| {
                matches!(
                    c.state,
                    State::Connecting
                        | State::Handshaking
                        | State::Upgrading
                        | State::Authenticating
                )
            })
            .map(|(slot, _)| slot)
            .collect();
        for slot in unsettled {
            self.fail(slot, reason);
        }
    }

    /// End of the hold: connections that never answered the sweep count as failed.
    fn finish(&mut self) {
        let silent: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| c.state != State::Answered)
            .map(|(slot, _)| slot)
            .collect();
        for slot in silent {
            self.fail(slot, "no_pong");
        }
        self.report.held = self.clients.len() as u64;
        let targets = self.plan.targets.len();
        let mut per_target = vec![0; targets];
        for (_, client) in &self.clients {
            per_target[client.user % targets] += 1;
        }
        self.report.held_per_target = per_target;
        for (slot, client) in std::mem::take(&mut self.clients) {
            self.sockets.close(client.socket, slot as u64);
        }
        // SAFETY: the worker owns its timerfd and forgets it here.
        unsafe { libc::close(self.send_timer) };
    }

    /// Churn: what a device does with a frame: its inbox events counted (and acked now
    /// and then), its epoch kept, its sent messages' acks noted. False when it failed.
    fn on_device_frame(
        &mut self,
        slot: usize,
        kind: MessageType,
        range: std::ops::Range<usize>,
    ) -> bool {
        let user = self.clients[slot].user;
        let payload = &self.clients[slot].inbuf[range];
        let devices = &mut self.report.devices;
        let ack = match kind {
            MessageType::AuthSuccess => {
                devices.greeted(user, payload);
                None
            }
            MessageType::Ack | MessageType::Queued | MessageType::Rejected => {
                devices.sender_acked(payload);
                None
            }
            _ => devices.event(user, payload),
        };
        match ack {
            Some(seq) => self.send_text(slot, &format!(r#"{{"type":"ack","seq":{seq}}}"#)),
            None => true,
        }
    }

    /// Churn, every tick of the load: drops the connections owed (a reset, then a
    /// reconnect that resumes) and reconnects those whose wait is over.
    fn churn(&mut self, tick: Duration) {
        let users = self.plan.users_of(self.id).count() as f64;
        self.churn_debt += users * self.plan.churn_per_min / 100.0 * tick.as_secs_f64() / 60.0;
        while self.churn_debt >= 1.0 {
            self.churn_debt -= 1.0;
            let live: Vec<usize> = self
                .clients
                .iter()
                .filter(|(_, c)| c.state == State::Answered || c.state == State::Ready)
                .map(|(slot, _)| slot)
                .collect();
            if live.is_empty() {
                break;
            }
            let slot = live[(self.random() % live.len() as u64) as usize];
            let client = self.clients.remove(slot);
            self.sockets.close(client.socket, slot as u64);
            self.slot_of.remove(&client.user);
            self.authenticated -= 1;
            self.progress.authenticated.fetch_sub(1, Ordering::Relaxed);
            self.report.churned.0 += 1;
            self.open(client.user);
            self.report.churned.1 += 1;
        }
        self.reconnect_due();
    }

    /// Churn: reconnects the users whose wait is over (during the load and its drain).
    fn reconnect_due(&mut self) {
        let now = Instant::now();
        let due: Vec<usize> = self
            .reconnects
            .iter()
            .filter(|(at, _)| *at <= now)
            .map(|&(_, user)| user)
            .collect();
        self.reconnects.retain(|(at, _)| *at > now);
        for user in due {
            self.report.churned.1 += 1;
            self.open(user);
        }
    }

    /// Churn: a user whose connection failed during the load reconnects after a while.
    fn reconnect_later(&mut self, user: usize) {
        if self.churning {
            self.reconnects
                .push((Instant::now() + RECONNECT_AFTER, user));
        }
    }

    fn fail(&mut self, slot: usize, reason: &'static str) {
        let client = self.clients.remove(slot);
        self.sockets.close(client.socket, slot as u64);
        if self.slot_of.get(&client.user) == Some(&slot) {
            self.slot_of.remove(&client.user);
        }
        self.reconnect_later(client.user);
        if matches!(
            client.state,
            State::Ready | State::PingSent | State::Answered
        ) {
            self.authenticated -= 1;
            self.progress.authenticated.fetch_sub(1, Ordering::Relaxed);
        }
        self.count_failure(reason);
    }

    fn count_failure(&mut self, reason: &'static str) {
        *self.report.failed.entry(reason).or_default() += 1;
        self.progress.failed.fetch_add(1, Ordering::Relaxed);
    }
}

/// The server message types the loadgen acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MessageType {
    AuthSuccess,
    Pong,
    NewMessage,
    Ack,
    /// A `message_ack` with `status: queued`: stored for an offline receiver.
    Queued,
    /// A `message_ack` with `status: rejected`: not kept (its `reason` says why).
    Rejected,
    PeerOffline,
    /// Another `error`, by its code ([`error_code`]).
    Error(&'static str),
    Other,
}

/// The codes an error frame may carry (the engine's `ErrorCode`), as the report counts a
/// login that one refused; `error` for any other.
const ERROR_CODES: [&str; 15] = [
    "auth_failed",
    "bad_json",
    "bad_request",
    "unknown_type",
    "not_authenticated",
    "persistence_failed",
    "not_member",
    "not_found",
    "rate_limited",
    "store_error",
    "store_unavailable",
    "too_many_groups",
    "cluster_unavailable",
    "forbidden",
    "conflict",
];

/// The code of error frame `payload`, without allocating.
fn error_code(payload: &[u8]) -> &'static str {
    const KEY: &[u8] = br#""code":""#;
    let Some(at) = payload.windows(KEY.len()).position(|w| w == KEY) else {
        return "error";
    };
    let rest = &payload[at + KEY.len()..];
    let value = rest.split(|&b| b == b'"').next().unwrap_or_default();
    (ERROR_CODES.iter())
        .find(|code| code.as_bytes() == value)
        .copied()
        .unwrap_or("error")
}

/// Reads an echoed frame: `ping` answers the sweep, digits are a load message's stamp.
fn echo_type(payload: &[u8]) -> (MessageType, Option<u64>) {
    if payload == b"ping" {
        return (MessageType::Pong, None);
    }
    match std::str::from_utf8(payload)
        .ok()
        .and_then(|t| t.parse().ok())
    {
        Some(stamp) => (MessageType::NewMessage, Some(stamp)),
        None => (MessageType::Other, None),
    }
}

/// The scheduled send time a load message carries: in `content` of a `new_message`, at the
/// front of `messageId` of a `message_ack`.
fn stamp_of(payload: &[u8], kind: MessageType) -> Option<u64> {
    let key: &[u8] = match kind {
        MessageType::NewMessage => br#""content":""#,
        MessageType::Ack | MessageType::Queued | MessageType::Rejected => br#""messageId":""#,
        _ => return None,
    };
    crate::devices::number_after(payload, key)
}

/// The `messageId` of a `message_ack` (the loadgen's ids need no JSON unescaping).
fn message_id_of(payload: &[u8]) -> Option<&str> {
    crate::devices::text_field(payload, "messageId")
}

/// Reads the `type` of a message the engine wrote (it always writes `type` first).
fn message_type(payload: &[u8]) -> MessageType {
    let rest = payload.strip_prefix(br#"{"type":""#).unwrap_or(b"");
    if rest.starts_with(b"auth_success\"") {
        MessageType::AuthSuccess
    } else if rest.starts_with(b"pong\"") {
        MessageType::Pong
    } else if rest.starts_with(b"new_message\"") {
        MessageType::NewMessage
    } else if rest.starts_with(b"message_ack\"") {
        if payload.windows(17).any(|w| w == br#""status":"queued""#) {
            MessageType::Queued
        } else if payload.windows(19).any(|w| w == br#""status":"rejected""#) {
            MessageType::Rejected
        } else {
            MessageType::Ack
        }
    } else if rest.starts_with(b"error\"") {
        if payload.windows(14).any(|w| w == br#""peer_offline""#) {
            MessageType::PeerOffline
        } else {
            MessageType::Error(error_code(payload))
        }
    } else {
        MessageType::Other
    }
}

/// Starts a non-blocking connect from `source` (port chosen at connect time).
/// `reset`: closing it later sends a reset (SO_LINGER 0), as a device losing its network.
fn connect(target: SocketAddr, source: Option<IpAddr>, reset: bool) -> io::Result<RawFd> {
    let domain = if target.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let result = (|| {
        if reset {
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: setsockopt with a live linger struct of the size given.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
        }
        if let Some(source) = source {
            let one: libc::c_int = 1;
            // SAFETY: setsockopt with a live c_int; IP_BIND_ADDRESS_NO_PORT defers the port
            // choice to connect(), so ports are shared across destinations.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            let (addr, len) = sockaddr(SocketAddr::new(source, 0));
            // SAFETY: `addr` is a valid sockaddr of `len` bytes.
            if unsafe { libc::bind(fd, (&addr as *const libc::sockaddr_storage).cast(), len) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let (addr, len) = sockaddr(target);
        // SAFETY: as above.
        if unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_storage).cast(), len) } < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(err);
            }
        }
        Ok(fd)
    })();
    if result.is_err() {
        // SAFETY: the fd was made above and is not handed out on error.
        unsafe { libc::close(fd) };
    }
    result
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid; we fill the variant for the family.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6 = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn connect_failure(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused",
        Some(libc::EADDRNOTAVAIL) | Some(libc::EADDRINUSE) => "no_source_port",
        Some(libc::EMFILE) | Some(libc::ENFILE) => "fd_limit",
        Some(libc::ETIMEDOUT) => "timeout",
        Some(libc::ECONNRESET) => "reset",
        _ => "connect_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_split_evenly_and_disjointly() {
        let plan = Plan {
            targets: vec!["127.0.0.1:1".parse().unwrap()],
            sources: Vec::new(),
            workers: 3,
            sockets: Placement::Auto,
            connections: 10,
            ramp_per_sec: 1,
            hold: Duration::ZERO,
            connect_timeout: Duration::ZERO,
            rate: 0,
            duration: Duration::ZERO,
            epoch: Instant::now(),
            scenario: Scenario::Chat,
            offline_receivers: false,
            record_queued_ids: false,
            server_pid: None,
            churn_per_min: 0.0,
            kill_server_at: None,
            tls: None,
        };
        let mut all: Vec<usize> = (0..3)
            .flat_map(|w| plan.users_of(w).collect::<Vec<_>>())
            .collect();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn the_schedule_is_open_loop_and_bounded() {
        let started = Instant::now();
        let schedule = Schedule {
            senders: vec![0],
            started,
            rate_per_worker: 1000.0,
            next: 0,
            total: 5000,
        };
        assert_eq!(schedule.at(0), started);
        assert_eq!(schedule.at(1500) - started, Duration::from_millis(1500));
        assert_eq!(schedule.due_by(Duration::ZERO), 1);
        assert_eq!(schedule.due_by(Duration::from_micros(2_500)), 3);
        // Falling behind does not thin the schedule: everything due is sent at once.
        assert_eq!(schedule.due_by(Duration::from_secs(2)), 2001);
        assert_eq!(schedule.due_by(Duration::from_secs(60)), 5000);
    }

    #[test]
    fn echo_frames_are_classified() {
        assert_eq!(echo_type(b"ping"), (MessageType::Pong, None));
        assert_eq!(echo_type(b"123"), (MessageType::NewMessage, Some(123)));
        assert_eq!(echo_type(b"hello"), (MessageType::Other, None));
    }

    #[test]
    fn message_types_are_read_from_the_engines_own_output() {
        assert_eq!(
            message_type(br#"{"type":"auth_success","userId":"a"}"#),
            MessageType::AuthSuccess
        );
        assert_eq!(
            message_type(br#"{"type":"pong","ts":0}"#),
            MessageType::Pong
        );
        assert_eq!(
            message_type(br#"{"type":"error","code":"x"}"#),
            MessageType::Error("error")
        );
        assert_eq!(
            message_type(br#"{"type":"error","code":"cluster_unavailable","message":"x"}"#),
            MessageType::Error("cluster_unavailable")
        );
        assert_eq!(message_type(b"garbage"), MessageType::Other);
        let delivered = br#"{"type":"new_message","messageId":"5-0-1","senderId":"lg1","content":"12345","x":1}"#;
        assert_eq!(stamp_of(delivered, message_type(delivered)), Some(12345));
        let ack = br#"{"type":"message_ack","messageId":"777-1-2","status":"sent"}"#;
        assert_eq!(stamp_of(ack, message_type(ack)), Some(777));
        let offline = br#"{"type":"error","code":"peer_offline","message":"x","ref":"1-2-3"}"#;
        assert_eq!(message_type(offline), MessageType::PeerOffline);
        let queued =
            br#"{"type":"message_ack","messageId":"9-1-2","status":"queued","timestamp":1}"#;
        assert_eq!(message_type(queued), MessageType::Queued);
        assert_eq!(message_id_of(queued), Some("9-1-2"));
        assert_eq!(stamp_of(queued, MessageType::Queued), Some(9));
        let rejected = br#"{"type":"message_ack","messageId":"9-1-3","status":"rejected","reason":"sender_quota"}"#;
        assert_eq!(message_type(rejected), MessageType::Rejected);
        assert_eq!(stamp_of(rejected, MessageType::Rejected), Some(9));
    }
}
