//! The load generator (issue 3): holds many sockets, drives open-loop load, reports latency.
fn main() {
    eprintln!("loadgen: not built yet; the load generator is issue 3");
    std::process::exit(2);
}
