//! Fan-out to a large group: the time from sending one `group_message` until the last
//! member's connection has the `new_message`.
//!
//! Runs the engine in this process (its reactors have their own fd tables), makes
//! `members` users join one group (each connects, joins, waits for its own `group_member`
//! and leaves, so nobody is flooded with join events), connects every member, then has
//! member 0 post `posts` times. After each post it sweeps the members' sockets without
//! blocking until each has the frame; the figure is the time to the last one, and the
//! sweep's own length bounds its error.
//!
//! `cargo bench -p engine --bench group_fanout -- [members] [reactors] [posts]`

mod support;

use std::{
    io::{ErrorKind, Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use engine::{config::Config, Engine};

const GROUP: &str = "big";

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let members: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let reactors: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let posts: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    raise_fd_limit();
    let data_dir = std::env::temp_dir().join(format!("engine-fanout-{}", std::process::id()));
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        reactors,
        data_dir: data_dir.clone(),
        ..Config::default()
    };
    let engine = Engine::start(config).expect("engine starts");
    let addr = engine.local_addr();
    let user = |i: usize| format!("member{i}");

    let started = Instant::now();
    for i in 0..members {
        let mut client = support::connect_authenticated(addr, &user(i));
        let join = format!(r#"{{"type":"group_join","groupId":"{GROUP}"}}"#);
        client.write_all(&support::text_frame(&join)).unwrap();
        support::read_until(&mut client, b"group_member");
    }
    println!(
        "{members} members joined in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut clients: Vec<TcpStream> = (0..members)
        .map(|i| support::connect_authenticated(addr, &user(i)))
        .collect();
    for client in &clients[1..] {
        client.set_nonblocking(true).unwrap();
    }
    println!("{members} members connected, {reactors} reactors; posting {posts} times");
    let mut times_ms = Vec::with_capacity(posts);
    let mut chunk = vec![0u8; 64 * 1024];
    for post in 0..posts {
        let id = format!("post-{post}");
        let message = format!(
            r#"{{"type":"group_message","messageId":"{id}","groupId":"{GROUP}","content":"to everyone"}}"#
        );
        let mut pending: Vec<usize> = (1..members).collect();
        let sent = Instant::now();
        clients[0]
            .write_all(&support::text_frame(&message))
            .unwrap();
        let mut sweeps = 0;
        let mut longest_sweep = Duration::ZERO;
        while !pending.is_empty() {
            let sweep = Instant::now();
            pending.retain(|&i| match clients[i].read(&mut chunk) {
                Ok(n) => !chunk[..n].windows(id.len()).any(|w| w == id.as_bytes()),
                Err(e) if e.kind() == ErrorKind::WouldBlock => true,
                Err(e) => panic!("member {i}: {e}"),
            });
            sweeps += 1;
            longest_sweep = longest_sweep.max(sweep.elapsed());
            assert!(
                sent.elapsed() < Duration::from_secs(60),
                "{} members never got it",
                pending.len()
            );
        }
        let took = sent.elapsed();
        support::read_until(&mut clients[0], b"message_ack");
        times_ms.push(took.as_secs_f64() * 1000.0);
        println!(
            "post {post}: last of {} members had it after {:.1} ms ({sweeps} sweeps, longest {:.1} ms)",
            members - 1,
            took.as_secs_f64() * 1000.0,
            longest_sweep.as_secs_f64() * 1000.0
        );
    }
    times_ms.sort_by(f64::total_cmp);
    println!(
        "time to the last member: median {:.1} ms, min {:.1} ms, max {:.1} ms",
        times_ms[times_ms.len() / 2],
        times_ms[0],
        times_ms[times_ms.len() - 1]
    );
    drop(clients);
    engine.shutdown();
    let _ = std::fs::remove_dir_all(data_dir);
}

/// Raises the soft open-files limit to the hard one: the members' sockets are in this
/// thread's table.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
