//! The plain HTTP endpoints: `/health`, `/health/live`, `/health/ready`; 404 for the rest.

use bytes::Bytes;

use super::{request::Request, response};
use crate::protocol::json::Obj;

/// The live figures `/health` reports, summed over reactors by the caller.
#[derive(Debug, Clone, Copy)]
pub struct Health {
    /// Users with at least one device online.
    pub online_users: i64,
    /// Open connections of any kind.
    pub connections: i64,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// Accepting and not draining.
    pub ready: bool,
    /// Now, in Unix ms.
    pub now_ms: u64,
}

/// Answers a non-upgrade request.
pub fn respond(request: &Request, health: &Health) -> Bytes {
    let keep_alive = request.keep_alive();
    let known = matches!(
        request.path.as_str(),
        "/health" | "/health/live" | "/health/ready"
    );
    if !known {
        return response::json_error(404, "not_found", "no such path", keep_alive);
    }
    if request.method != "GET" && request.method != "HEAD" {
        return response::json_error(405, "method_not_allowed", "use GET", keep_alive);
    }
    let mut body = Vec::with_capacity(256);
    let status = match request.path.as_str() {
        "/health" => {
            Obj::new(&mut body)
                .str("status", if health.ready { "healthy" } else { "draining" })
                .str("service", "engine")
                .str("version", env!("CARGO_PKG_VERSION"))
                .u64("timestamp", health.now_ms)
                .with("metrics", |out| {
                    Obj::new(out)
                        .i64("online_users", health.online_users)
                        .i64("connections", health.connections)
                        .u64("uptime_seconds", health.uptime_seconds)
                        .end()
                })
                .end();
            200
        }
        "/health/live" => {
            Obj::new(&mut body).str("status", "alive").end();
            200
        }
        _ => {
            Obj::new(&mut body)
                .str("status", if health.ready { "ready" } else { "not_ready" })
                .end();
            if health.ready {
                200
            } else {
                503
            }
        }
    };
    if request.method == "HEAD" {
        let full = response::write(status, "application/json", &body, keep_alive, &[]);
        let head_len = full.len() - body.len();
        return full.slice(..head_len);
    }
    response::write(status, "application/json", &body, keep_alive, &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::parse;

    fn get(path: &str, health: Health) -> String {
        let raw = format!("GET {path} HTTP/1.1\r\n\r\n");
        let (req, _) = parse(raw.as_bytes()).unwrap().unwrap();
        String::from_utf8(respond(&req, &health).to_vec()).unwrap()
    }

    const HEALTH: Health = Health {
        online_users: 2,
        connections: 3,
        uptime_seconds: 4,
        ready: true,
        now_ms: 5,
    };

    #[test]
    fn health_reports_live_figures() {
        let text = get("/health", HEALTH);
        assert!(text.starts_with("HTTP/1.1 200"));
        assert!(
            text.contains(r#""metrics":{"online_users":2,"connections":3,"uptime_seconds":4}"#),
            "{text}"
        );
    }

    #[test]
    fn ready_is_503_while_draining_and_unknown_paths_404() {
        assert!(get(
            "/health/ready",
            Health {
                ready: false,
                ..HEALTH
            }
        )
        .starts_with("HTTP/1.1 503"));
        assert!(get("/health/live", HEALTH).starts_with("HTTP/1.1 200"));
        assert!(get("/nope", HEALTH).starts_with("HTTP/1.1 404"));
    }
}
