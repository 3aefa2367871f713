//! The live dashboard at `GET /admin` in a real browser: without the API token it shows no
//! figures and asks for it; with it, it reads `/api/stats` every second, draws every chart,
//! and its numbers move when load runs.
//!
//! Drives Debian's `chromium` through `chromedriver` (`common::browser`). Where Chromium
//! cannot start at all the test says why and passes; under CI (`CI` set) that is a failure.

mod common;

use std::time::Duration;

use common::{
    browser::{self, Page},
    Driver, Server,
};
use serde_json::json;

const TOKEN: &str = "dashboard-secret";
const CHARTS: [&str; 6] = [
    "chart-connections",
    "chart-messages",
    "chart-routing",
    "chart-mailboxes",
    "chart-commit",
    "chart-errors",
];

/// The number a figure shows (0 for "–").
fn figure(page: &Page, id: &str) -> f64 {
    let text = page.script(
        "return document.getElementById(arguments[0]).textContent;",
        json!([id]),
    );
    text.as_str().and_then(|t| t.parse().ok()).unwrap_or(0.0)
}

#[test]
fn the_dashboard_needs_the_token_draws_every_chart_and_moves_under_load() {
    let test = "the_dashboard_needs_the_token";
    let Some(driver) = browser::driver(test) else {
        return;
    };
    let server = Server::start(Driver::IoUring, &["--api-token", TOKEN]);
    let page = match Page::open(&driver, &server.http_url("/admin")) {
        Ok(page) => page,
        Err(e) => return browser::skip(test, &format!("Chromium cannot start: {e}")),
    };
    // No token: the page says what it needs, and shows no figures.
    page.wait_for(
        "the page to ask for the token",
        "document.getElementById('status').textContent.includes('API token is needed')",
    );
    assert_eq!(
        page.script("return document.body.dataset.samples;", json!([])),
        "0"
    );
    // A wrong token is refused just the same.
    page.type_into("token", "wrong");
    page.click("use-token");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        page.script("return document.body.dataset.samples;", json!([])),
        "0"
    );
    page.set("token", TOKEN);
    page.click("use-token");
    page.wait_for(
        "three readings",
        "Number(document.body.dataset.samples) >= 3",
    );
    // Every chart is drawn, with a line per series it has.
    for chart in CHARTS {
        let lines = page.script(
            "return document.getElementById(arguments[0]).dataset.lines;",
            json!([chart]),
        );
        let expected_some = chart != "chart-errors"; // no errors yet: no code to draw
        assert_eq!(
            lines.as_str().map(|n| n != "0"),
            Some(expected_some),
            "{chart}: {lines}"
        );
    }
    assert_eq!(figure(&page, "fig-in"), 0.0, "no messages yet");
    // Load: two users chat for a few seconds, and one sends bad JSON (an error by code).
    let mut alice = server.login("alice", "phone");
    let mut bob = server.login("bob", "phone");
    page.wait_for(
        "the two connections",
        "Number(document.getElementById('fig-connections').textContent) >= 2",
    );
    // The page's own readings are frames out, so "in" is what moves.
    let mut most_in = 0.0f64;
    for i in 0..80 {
        alice.send_chat(&format!("m{i}"), "bob", "hello");
        bob.next_message();
        if i % 20 == 0 {
            bob.send_text("{not json");
            assert_eq!(bob.recv_type("error")["code"], "bad_json");
        }
        most_in = most_in.max(figure(&page, "fig-in"));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(most_in >= 1.0, "messages in per second moved: {most_in}");
    page.wait_for(
        "the errors chart to draw the bad JSON",
        "document.getElementById('chart-errors').dataset.lines !== '0'",
    );
    page.wait_for(
        "a routing latency",
        "Number(document.getElementById('chart-routing').dataset.points) > 0",
    );
    page.wait_for(
        "a store commit latency",
        "Number(document.getElementById('chart-commit').dataset.points) > 0",
    );
    assert_eq!(figure(&page, "fig-online"), 2.0);
    assert_eq!(figure(&page, "fig-nodes"), 1.0);
}

#[test]
fn in_a_cluster_the_dashboard_draws_every_node() {
    let test = "in_a_cluster_the_dashboard_draws_every_node";
    let nats = match common::nats::Nats::start() {
        Ok(nats) => nats,
        Err(why) => return common::nats::skip(test, &why),
    };
    let Some(driver) = browser::driver(test) else {
        return;
    };
    let flags = ["--api-token", TOKEN];
    let a = common::nats::node_with(&nats.url(), "a", &flags);
    let b = common::nats::node_with(&nats.url(), "b", &flags);
    common::nats::wait_for_nodes(&a, 2, Duration::from_secs(30));
    let page = match Page::open(&driver, &a.http_url("/admin")) {
        Ok(page) => page,
        Err(e) => return browser::skip(test, &format!("Chromium cannot start: {e}")),
    };
    page.set("token", TOKEN);
    page.click("use-token");
    let _on_b = b.login("carol", "phone");
    page.wait_for(
        "both nodes and carol",
        "document.getElementById('fig-nodes').textContent === '2' && document.getElementById('fig-online').textContent === '1'",
    );
    page.wait_for("two readings", "Number(document.body.dataset.samples) >= 2");
    // Connections and online users for each node; a line per reactor of each.
    let lines = |chart: &str| {
        page.script(
            "return Number(document.getElementById(arguments[0]).dataset.lines);",
            json!([chart]),
        )
    };
    assert_eq!(lines("chart-connections"), 4);
    assert_eq!(lines("chart-mailboxes"), 4, "2 reactors on each node");
    let scope = page.script(
        "return document.getElementById('scope').textContent;",
        json!([]),
    );
    assert_eq!(scope, "cluster of node a");
}
