//! `/api/stats?scope=cluster`: every node's `/api/stats` figures side by side, and their
//! sum. No I/O: the relay gathers the parts ([`super::relayer`]).

use serde_json::{json, Map, Value};

/// The figures summed over nodes (top-level keys of `/api/stats`). `online_users` counts
/// a user once per node that holds a device of the user.
const SUMMED: [&str; 7] = [
    "messages_processed",
    "messages_out",
    "messages_persisted",
    "messages_recorded",
    "persistence_failures",
    "connections",
    "online_users",
];

/// One node's part: `{"node_id": …, "stats": <its /api/stats body>}`.
pub(super) fn node_part(node_id: &str, stats: &[u8]) -> Vec<u8> {
    let stats: Value = serde_json::from_slice(stats).unwrap_or(Value::Null);
    json!({ "node_id": node_id, "stats": stats })
        .to_string()
        .into_bytes()
}

/// The answer: the parts that came (a part that does not parse is left out), how many
/// nodes were known alive, and the sum of each figure in [`SUMMED`] and of the resident
/// memory.
pub(super) fn cluster_stats(parts: &[Vec<u8>], nodes_known: u32) -> Vec<u8> {
    let nodes: Vec<Value> = parts
        .iter()
        .filter_map(|part| serde_json::from_slice::<Value>(part).ok())
        .filter(|part| part["stats"].is_object())
        .collect();
    let mut total = Map::new();
    for key in SUMMED {
        let sum: i64 = nodes.iter().filter_map(|n| n["stats"][key].as_i64()).sum();
        total.insert(key.into(), sum.into());
    }
    let rss: u64 = nodes
        .iter()
        .filter_map(|n| n["stats"]["memory"]["rss_bytes"].as_u64())
        .sum();
    total.insert("rss_bytes".into(), rss.into());
    json!({
        "scope": "cluster",
        "nodes_answered": nodes.len(),
        "nodes_known": nodes_known,
        "total": total,
        "nodes": nodes,
    })
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_summed_and_each_node_is_kept() {
        let a = node_part(
            "a",
            br#"{"connections":2,"online_users":1,"messages_processed":10,"memory":{"rss_bytes":100}}"#,
        );
        let b = node_part(
            "b",
            br#"{"connections":3,"online_users":2,"messages_processed":5,"memory":{"rss_bytes":null}}"#,
        );
        let body: Value =
            serde_json::from_slice(&cluster_stats(&[a, b, b"garbage".to_vec()], 3)).unwrap();
        assert_eq!(body["nodes_answered"], 2);
        assert_eq!(body["nodes_known"], 3);
        assert_eq!(body["total"]["connections"], 5);
        assert_eq!(body["total"]["online_users"], 3);
        assert_eq!(body["total"]["messages_processed"], 15);
        assert_eq!(body["total"]["rss_bytes"], 100);
        assert_eq!(body["nodes"][1]["node_id"], "b");
        assert_eq!(body["nodes"][1]["stats"]["connections"], 3);
    }
}
