# Sourced by a bench script that starts servers of its own: a free port to give each, and
# a wait for an engine to be ready.

# A port on 127.0.0.1 that nothing listens on now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits until the engine on port $1 says it is ready, at most $2 tenths of a second
# (default 100): a cluster node is ready once it has joined and made its streams.
wait_ready() {
  for _ in $(seq 1 "${2:-100}"); do
    curl -sf "http://127.0.0.1:$1/health/ready" > /dev/null && return 0
    sleep 0.1
  done
  echo "the engine on port $1 was never ready" >&2
  return 1
}
