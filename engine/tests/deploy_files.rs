//! The operator's files in `deploy/`: Prometheus' config and alerting rules pass
//! `promtool`'s checks, each alert fires on the series it is for and not on a healthy
//! node's (`promtool test rules`), every Grafana query is valid PromQL, and the dashboard
//! and the alerts name only metrics a running cluster node exports.
//!
//! `promtool` is Debian's `prometheus` package (`.ci/run` installs it); without it these
//! tests say why and pass, except under CI.

mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

/// `deploy/` in the repository.
fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The `promtool` on the path, or `None` (after saying why, or failing under CI).
fn promtool(test: &str) -> Option<&'static str> {
    let found = Command::new("promtool").arg("--version").output().is_ok();
    if !found {
        common::nats::skip(test, "no promtool (apt-get install prometheus)");
    }
    found.then_some("promtool")
}

/// Runs `promtool` with `args` in `dir`; panics with its output unless it succeeds.
fn run_promtool(dir: &Path, args: &[&str]) {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool runs");
    assert!(
        output.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The dashboard's queries, with Grafana's variables replaced as Grafana would.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy().join("grafana/engine.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("a title").to_owned();
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("an expr");
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*");
            queries.push((title.clone(), expr));
        }
    }
    queries
}

/// Every `engine_…` metric name in `text` (a histogram's series name its family).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("engine_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(&name)
            .to_owned();
        names.insert(family);
    }
    names
}

#[test]
fn the_prometheus_config_and_rules_pass_promtool_and_each_alert_fires_as_its_test_says() {
    let test = "the_prometheus_config_and_rules_pass_promtool";
    if promtool(test).is_none() {
        return;
    }
    let dir = deploy().join("prometheus");
    run_promtool(&dir, &["check", "config", "prometheus.yml"]);
    run_promtool(&dir, &["check", "rules", "alerts.yml"]);
    run_promtool(&dir, &["test", "rules", "alerts_test.yml"]);
    // Each alert has a test that fires it.
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("alerts_test.yml")).unwrap();
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        let fired = format!("alertname: {alert}\n        exp_alerts:\n          - ");
        assert!(tests.contains(&fired), "no test fires {alert}");
    }
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    if promtool("every_dashboard_query_is_valid_promql").is_none() {
        return;
    }
    let queries = dashboard_queries();
    assert!(queries.len() >= 11, "{queries:?}");
    // promtool checks PromQL in rule files: each query becomes a recording rule.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in queries.iter().enumerate() {
        let expr = serde_json::to_string(expr).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {expr}\n"
        ));
    }
    let dir = std::env::temp_dir().join(format!("dashboard-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dashboard.yml"), rules).unwrap();
    run_promtool(&dir, &["check", "rules", "dashboard.yml"]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_dashboard_and_the_alerts_name_only_metrics_a_cluster_node_exports() {
    let nats = match common::nats::Nats::start() {
        Ok(nats) => nats,
        Err(why) => return common::nats::skip("deploy_files_metrics", &why),
    };
    // A cluster node: it exports every metric a single node does, and the cluster's; with
    // an events webhook (nothing listens there: no event is posted), the events hook's.
    let webhook = ["--events-webhook", "http://127.0.0.1:9/events"];
    let node = common::nats::node_with(&nats.url(), "a", &webhook);
    common::wait_until("the node joins", || {
        node.get("/metrics").1.contains("engine_cluster_nodes 1")
    });
    let exported = metric_names(&node.get("/metrics").1);
    let queries: String = dashboard_queries().into_iter().map(|(_, e)| e).collect();
    let rules = std::fs::read_to_string(deploy().join("prometheus/alerts.yml")).unwrap();
    for (file, text) in [("grafana/engine.json", &queries), ("alerts.yml", &rules)] {
        let named = metric_names(text);
        assert!(named.len() >= 5, "{file}: {named:?}");
        let unknown: Vec<&String> = named.difference(&exported).collect();
        assert!(unknown.is_empty(), "{file} names {unknown:?}, not exported");
    }
}

#[test]
fn metric_names_are_found_with_histograms_as_their_family() {
    let names = metric_names(
        "rate(engine_a_total[1m]) + x{le=\"1\"} engine_b_seconds_bucket engine_b_seconds_count",
    );
    let expected: BTreeSet<String> = ["engine_a_total", "engine_b_seconds"]
        .map(String::from)
        .into();
    assert_eq!(names, expected);
}
