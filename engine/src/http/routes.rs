//! Which plain-HTTP request gets what: health, metrics, stats and the `/api/*` routes.
//! Answers what it can from a snapshot of the counters; the rest (sending a message,
//! broadcasting) it hands back to the reactor as a [`Route`] to carry out.

use bytes::Bytes;

use super::{
    admin::{self, AdminRequest},
    api::{self, ApiError, BroadcastRequest, SendRequest},
    health::Health,
    metrics,
    origin::{self, AllowedOrigins},
    request::{percent_decode, Request},
    response,
};
use crate::{protocol::json::Obj, stats::ReactorStats, store::StoreStats};

/// The browser test client served at `GET /`: one self-contained page, no external assets.
pub const TEST_CLIENT_PAGE: &str = include_str!("../../assets/index.html");
/// The live dashboard served at `GET /admin`: one self-contained page that draws
/// `/api/stats` every second. It holds no data itself, so it is served without the API
/// token; the figures it reads need it.
pub const ADMIN_PAGE: &str = include_str!("../../assets/admin.html");
/// The JavaScript SDK (`clients/js`), served at `GET /sdk.js` for the test client (an ES
/// module; apps may load it from here too, or from the package).
pub const SDK_MODULE: &str = include_str!("../../../clients/js/src/index.js");

/// What the gateway knows when it answers: live figures, every reactor's counters, and
/// the API token (if any).
pub struct Context<'a> {
    /// Summed live figures.
    pub health: Health,
    /// Every reactor's counters.
    pub reactors: &'a [ReactorStats],
    /// The bearer token `/api/*` requires.
    pub api_token: Option<&'a str>,
    /// The web pages whose API calls are taken (`None`: every page).
    pub allowed_origins: Option<&'a AllowedOrigins>,
    /// `--allow-open`: an open API answers requests by any host name.
    pub allow_open: bool,
    /// The store's counters.
    pub store: &'a StoreStats,
    /// The cluster, if the node is in one.
    pub cluster: Option<&'a crate::cluster::State>,
    /// The events hook's counters, if there is one.
    pub events: Option<&'a crate::push::HookStats>,
}

/// What to do with a request.
#[derive(Debug)]
pub enum Route {
    /// Write this response.
    Answer(Bytes),
    /// Route a message; answer when its receiver's home replies.
    Send(SendRequest),
    /// Fan a message out; answer when every home replied.
    Broadcast(BroadcastRequest),
    /// `/api/stats?scope=cluster`: every node's figures; answer when they have come.
    ClusterStats,
    /// An operator's call (`/api/admin/*`); answer when the homes concerned have.
    Admin(AdminRequest),
    /// Read (and with `drain`, empty) a user's offline queue; answer when the store has.
    Queue {
        /// The user.
        user: String,
        /// `?drain=true`.
        drain: bool,
    },
}

/// Decides what answers `request` (with its `body`).
pub fn route(request: &Request, body: &[u8], context: &Context<'_>) -> Route {
    let keep_alive = request.keep_alive();
    let path = request.path.as_str();
    let allowed: &[&str] = match path {
        "/" | "/admin" | "/sdk.js" | "/health" | "/health/live" | "/health/ready" | "/metrics"
        | "/api/stats" => &["GET", "HEAD"],
        "/api/messages/send" | "/api/messages/broadcast" => &["POST"],
        p if p.starts_with("/api/messages/queue/") => &["GET"],
        p if admin::methods(p).is_some() => admin::methods(p).unwrap_or_default(),
        _ => {
            let answer = response::json_error(404, "not_found", "no such path", keep_alive);
            return Route::Answer(answer);
        }
    };
    if let Some(refused) = refuse(request, allowed, context) {
        return Route::Answer(refused);
    }
    match path {
        "/api/messages/send" => match api::parse_send(body) {
            Ok(send) => Route::Send(send),
            Err(e) => api_error(&e, keep_alive),
        },
        "/api/messages/broadcast" => match api::parse_broadcast(body) {
            Ok(broadcast) => Route::Broadcast(broadcast),
            Err(e) => api_error(&e, keep_alive),
        },
        p if p.starts_with("/api/messages/queue/") => queue_route(request),
        p if p.starts_with(admin::PREFIX) => match admin::parse(&request.method, p, body) {
            Ok(call) => Route::Admin(call),
            Err(e) => api_error(&e, keep_alive),
        },
        "/api/stats" => match (stats_scope(request), context.cluster) {
            (Ok(false), _) => read_only(request, context),
            (Ok(true), Some(_)) if request.method == "GET" => Route::ClusterStats,
            (Ok(true), Some(_)) => read_only(request, context),
            (Ok(true), None) => {
                let text = "scope=cluster needs a node in a cluster (--cluster)";
                Route::Answer(response::json_error(400, "bad_request", text, keep_alive))
            }
            (Err(text), _) => {
                Route::Answer(response::json_error(400, "bad_request", text, keep_alive))
            }
        },
        _ => read_only(request, context),
    }
}

/// `/api/stats`' `scope`: `node` (or none) for this node, `cluster` for every node.
fn stats_scope(request: &Request) -> Result<bool, &'static str> {
    let query = request.query.as_deref().unwrap_or("");
    let scope = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("scope="));
    match scope {
        None | Some("node") => Ok(false),
        Some("cluster") => Ok(true),
        Some(_) => Err("scope must be node or cluster"),
    }
}

/// 403 for an API call from a web page `--allowed-origins` does not list, 401 for one
/// without the token, 405 for a method the path does not take, and 415 for an API body
/// that is not `application/json`.
fn refuse(request: &Request, allowed: &[&str], context: &Context<'_>) -> Option<Bytes> {
    let keep_alive = request.keep_alive();
    let api = request.path.starts_with("/api/");
    if api && !origin_permitted(request, context.allowed_origins) {
        let text = "this origin is not in --allowed-origins";
        return Some(response::json_error(
            403,
            "forbidden_origin",
            text,
            keep_alive,
        ));
    }
    let open = api && context.api_token.is_none() && !context.allow_open;
    if open && !origin::names_this_host(request.header("host")) {
        let text = "an open API (no --api-token) answers only requests to this host's \
                    address or localhost (or any, with --allow-open)";
        return Some(response::json_error(
            403,
            "forbidden_host",
            text,
            keep_alive,
        ));
    }
    if let Some(token) = context.api_token.filter(|_| api) {
        if !api::bearer_matches(request.header("authorization"), token) {
            let body = br#"{"error":"unauthorized","message":"this API needs 'Authorization: Bearer <api token>'"}"#;
            let header = ["WWW-Authenticate: Bearer"];
            return Some(response::write(
                401,
                "application/json",
                body,
                keep_alive,
                &header,
            ));
        }
    }
    if !allowed.contains(&request.method.as_str()) {
        let allow = format!("Allow: {}", allowed.join(", "));
        let body = error_body(
            "method_not_allowed",
            &format!("use {}", allowed.join(" or ")),
        );
        return Some(response::write(
            405,
            "application/json",
            &body,
            keep_alive,
            &[&allow],
        ));
    }
    // A page may POST text/plain to any site without asking first (no CORS preflight);
    // JSON alone makes a foreign page's browser ask, and this server never says yes.
    if api && request.method == "POST" && !is_json(request.header("content-type")) {
        let text = "the body must be sent as Content-Type: application/json";
        return Some(response::json_error(
            415,
            "unsupported_media_type",
            text,
            keep_alive,
        ));
    }
    None
}

/// Whether a request's `Origin` may go on (every one without `--allowed-origins`).
pub fn origin_permitted(request: &Request, allowed: Option<&AllowedOrigins>) -> bool {
    allowed.is_none_or(|allowed| allowed.permits(request.header("origin")))
}

/// Whether a `Content-Type` is `application/json`, parameters (`charset`) aside.
fn is_json(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// The read-only endpoints: the test page, health, metrics, stats (HEAD answers the head).
fn read_only(request: &Request, context: &Context<'_>) -> Route {
    let health = &context.health;
    let mut body = Vec::with_capacity(512);
    let (status, content_type) = match request.path.as_str() {
        "/" | "/admin" => (200, "text/html; charset=utf-8"),
        "/sdk.js" => (200, "text/javascript; charset=utf-8"),
        "/health" => {
            health_json(&mut body, health, context.cluster);
            (200, "application/json")
        }
        "/health/live" => {
            Obj::new(&mut body).str("status", "alive").end();
            (200, "application/json")
        }
        "/health/ready" => {
            let status = if health.ready { "ready" } else { "not_ready" };
            Obj::new(&mut body).str("status", status).end();
            (if health.ready { 200 } else { 503 }, "application/json")
        }
        "/metrics" => {
            metrics::render(
                &mut body,
                health,
                context.reactors,
                context.store,
                (context.cluster, context.events),
            );
            (200, metrics::CONTENT_TYPE)
        }
        _ => {
            metrics::stats_json(&mut body, health, context.reactors, context.store);
            (200, "application/json")
        }
    };
    let body = match request.path.as_str() {
        "/" => TEST_CLIENT_PAGE.as_bytes(),
        "/admin" => ADMIN_PAGE.as_bytes(),
        "/sdk.js" => SDK_MODULE.as_bytes(),
        _ => &body[..],
    };
    let full = response::write(status, content_type, body, request.keep_alive(), &[]);
    if request.method == "HEAD" {
        let head_len = full.len() - body.len();
        return Route::Answer(full.slice(..head_len));
    }
    Route::Answer(full)
}

/// `/health`'s body (with the node's cluster, if it has one).
fn health_json(out: &mut Vec<u8>, health: &Health, cluster: Option<&crate::cluster::State>) {
    let mut body = Obj::new(out);
    if let Some(cluster) = cluster {
        body = body.with("cluster", |out| {
            Obj::new(out)
                .str("node_id", cluster.node_id())
                .u64("nodes", u64::from(cluster.nodes()))
                .bool("connected", cluster.connected())
                .end()
        });
    }
    body.str("status", if health.ready { "healthy" } else { "draining" })
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
}

/// `GET /api/messages/queue/{user}?drain=…`.
fn queue_route(request: &Request) -> Route {
    let keep_alive = request.keep_alive();
    let segment = &request.path["/api/messages/queue/".len()..];
    let Some(user) = percent_decode(segment).filter(|user| !user.contains('/')) else {
        let text = "the path must end in one user id (percent-encoded UTF-8)";
        return api_error(&ApiError::bad_request(text), keep_alive);
    };
    if let Err(e) = api::check_id(&user, "user_id") {
        return api_error(&e, keep_alive);
    }
    let drain = match request.query_param("drain") {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            let e = ApiError::bad_request("'drain' must be true or false");
            return api_error(&e, keep_alive);
        }
    };
    Route::Queue { user, drain }
}

fn error_body(code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(64 + message.len());
    Obj::new(&mut body)
        .str("error", code)
        .str("message", message)
        .end();
    body
}

fn api_error(e: &ApiError, keep_alive: bool) -> Route {
    Route::Answer(response::json_error(
        e.status, e.code, &e.message, keep_alive,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::parse;

    const HEALTH: Health = Health {
        online_users: 2,
        connections: 3,
        uptime_seconds: 4,
        ready: true,
        now_ms: 5,
    };

    fn answer(raw: &str, health: Health, token: Option<&str>) -> String {
        answer_from(raw, health, token, None)
    }

    fn answer_from(
        raw: &str,
        health: Health,
        token: Option<&str>,
        allowed_origins: Option<&AllowedOrigins>,
    ) -> String {
        let (req, head_len) = parse(raw.as_bytes(), 8192).unwrap().unwrap();
        let reactors = [ReactorStats::default(), ReactorStats::default()];
        let store = StoreStats::default();
        let context = Context {
            health,
            reactors: &reactors,
            api_token: token,
            allowed_origins,
            allow_open: false,
            store: &store,
            cluster: None,
            events: None,
        };
        match route(&req, &raw.as_bytes()[head_len..], &context) {
            Route::Answer(bytes) => String::from_utf8(bytes.to_vec()).unwrap(),
            other => format!("{other:?}"),
        }
    }

    fn get(path: &str) -> String {
        answer(&format!("GET {path} HTTP/1.1\r\n\r\n"), HEALTH, None)
    }

    #[test]
    fn health_reports_live_figures() {
        let text = get("/health");
        assert!(text.starts_with("HTTP/1.1 200"));
        assert!(
            text.contains(r#""metrics":{"online_users":2,"connections":3,"uptime_seconds":4}"#),
            "{text}"
        );
    }

    #[test]
    fn ready_is_503_while_draining_and_unknown_paths_404() {
        let draining = Health {
            ready: false,
            ..HEALTH
        };
        assert!(answer("GET /health/ready HTTP/1.1\r\n\r\n", draining, None)
            .starts_with("HTTP/1.1 503"));
        assert!(get("/health/live").starts_with("HTTP/1.1 200"));
        assert!(get("/nope").starts_with("HTTP/1.1 404"));
    }

    #[test]
    fn wrong_methods_get_405_with_allow() {
        let text = answer("DELETE /api/stats HTTP/1.1\r\n\r\n", HEALTH, None);
        assert!(text.starts_with("HTTP/1.1 405"), "{text}");
        assert!(text.contains("Allow: GET, HEAD\r\n"), "{text}");
        let text = get("/api/messages/send");
        assert!(text.contains("Allow: POST\r\n"), "{text}");
    }

    #[test]
    fn the_api_needs_the_token_when_one_is_set() {
        let raw = "GET /api/stats HTTP/1.1\r\n\r\n";
        let text = answer(raw, HEALTH, Some("t0k"));
        assert!(text.starts_with("HTTP/1.1 401"), "{text}");
        assert!(text.contains("WWW-Authenticate: Bearer"));
        let raw = "GET /api/stats HTTP/1.1\r\nAuthorization: Bearer t0k\r\n\r\n";
        assert!(answer(raw, HEALTH, Some("t0k")).starts_with("HTTP/1.1 200"));
        // Health and metrics stay open for probes and scrapers.
        assert!(answer("GET /metrics HTTP/1.1\r\n\r\n", HEALTH, Some("t0k"))
            .starts_with("HTTP/1.1 200"));
    }

    #[test]
    fn api_calls_from_unlisted_pages_get_403() {
        let allowed = AllowedOrigins::parse("https://chat.example").unwrap();
        let from = |origin: &str| {
            let raw = format!("GET /api/stats HTTP/1.1\r\n{origin}\r\n");
            answer_from(&raw, HEALTH, Some("t"), Some(&allowed))
        };
        let text = from("Origin: https://evil.example\r\nAuthorization: Bearer t\r\n");
        assert!(text.starts_with("HTTP/1.1 403"), "{text}");
        assert!(text.contains(r#""error":"forbidden_origin""#), "{text}");
        let text = from("Origin: https://chat.example\r\nAuthorization: Bearer t\r\n");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let text = from("Authorization: Bearer t\r\n");
        assert!(text.starts_with("HTTP/1.1 200"), "no Origin: {text}");
        let raw = "GET /health HTTP/1.1\r\nOrigin: https://evil.example\r\n\r\n";
        let text = answer_from(raw, HEALTH, None, Some(&allowed));
        assert!(
            text.starts_with("HTTP/1.1 200"),
            "probes are not API calls: {text}"
        );
    }

    #[test]
    fn api_bodies_must_be_json() {
        let body = r#"{"sender_id":"a","receiver_id":"b","text":"hi"}"#;
        for content_type in ["text/plain", "application/x-www-form-urlencoded", ""] {
            let raw = format!(
                "POST /api/messages/send HTTP/1.1\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let text = answer(&raw, HEALTH, None);
            assert!(text.starts_with("HTTP/1.1 415"), "{content_type}: {text}");
        }
        let raw = format!(
            "POST /api/messages/send HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        assert!(answer(&raw, HEALTH, None).starts_with("HTTP/1.1 415"));
        let raw = format!(
            "POST /api/messages/send HTTP/1.1\r\nContent-Type: Application/JSON; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        assert!(answer(&raw, HEALTH, None).starts_with("Send("));
    }

    #[test]
    fn send_bodies_are_parsed_or_refused_with_400() {
        let body = r#"{"sender_id":"a","receiver_id":"b","text":"hi"}"#;
        let raw = format!(
            "POST /api/messages/send HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        assert!(answer(&raw, HEALTH, None).starts_with("Send("));
        let raw = "POST /api/messages/send HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n{oops";
        let text = answer(raw, HEALTH, None);
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
        assert!(text.contains(r#""error":"bad_json""#), "{text}");
    }

    #[test]
    fn the_queue_route_takes_a_user_and_drain() {
        assert!(get("/api/messages/queue/u1?drain=true")
            .starts_with("Queue { user: \"u1\", drain: true"));
        assert!(get("/api/messages/queue/u1?drain=maybe").starts_with("HTTP/1.1 400"));
        assert!(get("/api/messages/queue/").starts_with("HTTP/1.1 400"));
        assert!(get("/api/messages/queue/caf%C3%A9").starts_with("Queue { user: \"café\""));
        for bad in ["a%2Fb", "%E2%80%AEnimda", "a%0Ab", "a%zz", "%FF"] {
            let text = get(&format!("/api/messages/queue/{bad}"));
            assert!(text.starts_with("HTTP/1.1 400"), "{bad}: {text}");
        }
    }

    #[test]
    fn the_pages_and_the_sdk_are_self_contained() {
        let text = get("/");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("Content-Type: text/html"));
        // The test client is built on the SDK this gateway serves.
        assert!(text.contains(r#"from "/sdk.js""#) && text.contains("new ChatClient("));
        let sdk = get("/sdk.js");
        assert!(sdk.contains("Content-Type: text/javascript"), "{sdk}");
        assert!(sdk.contains("new this.WebSocket(this.url)"));
        let admin = get("/admin");
        assert!(admin.contains("Content-Type: text/html") && admin.contains("/api/stats"));
        // No external assets: nothing is fetched from another origin.
        for page in [&text, &sdk, &admin] {
            assert!(!page.contains("src=\"http") && !page.contains("href=\"http"));
            assert!(!page.contains("from \"http") && !page.contains("import(\"http"));
        }
    }

    #[test]
    fn head_gets_headers_only() {
        let text = answer("HEAD /health HTTP/1.1\r\n\r\n", HEALTH, None);
        assert!(
            text.starts_with("HTTP/1.1 200") && text.ends_with("\r\n\r\n"),
            "{text}"
        );
    }
}
