//! The supervision tree of `/admin/tree` as indented text (`shardmcp
//! tree`): one node a line, with its strategy, children and restart counts.
//! Works on the JSON so the command line needs nothing but the answer.

use serde_json::Value;

/// Renders the tree JSON (node → shards → their supervision trees).
pub fn render(tree: &Value) -> String {
    let mut out = String::new();
    out.push_str(&line(tree));
    out.push('\n');
    render_children(tree, "", &mut out);
    out
}

fn render_children(node: &Value, prefix: &str, out: &mut String) {
    let children = node
        .get("children")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (i, child) in children.iter().enumerate() {
        let last = i + 1 == children.len();
        out.push_str(prefix);
        out.push_str(if last { "└── " } else { "├── " });
        out.push_str(&line(child));
        out.push('\n');
        let deeper = format!("{prefix}{}", if last { "    " } else { "│   " });
        render_children(child, &deeper, out);
    }
}

fn number(node: &Value, key: &str) -> u64 {
    node.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// `id [strategy] facts`: supervisors show their strategy, how many
/// children they hold and how many restarts they performed; workers their
/// restart type and whether they run.
fn line(node: &Value) -> String {
    let id = node.get("id").and_then(Value::as_str).unwrap_or("?");
    let kind = node.get("kind").and_then(Value::as_str).unwrap_or("");
    let mut text = id.to_string();
    if kind == "node" {
        let shards = number(node, "child_count");
        let restarts_max = node
            .pointer("/restart_intensity/restarts_max")
            .and_then(Value::as_u64);
        let period = node
            .pointer("/restart_intensity/period_ms")
            .and_then(Value::as_u64);
        text.push_str(" [restarts dead shards");
        if let (Some(max), Some(period)) = (restarts_max, period) {
            text.push_str(&format!(", at most {max} per {period} ms"));
        }
        text.push(']');
        text.push_str(&format!(
            " shards={shards} shard_restarts={}",
            number(node, "restarts")
        ));
        if node.get("draining").and_then(Value::as_bool) == Some(true) {
            text.push_str(" draining");
        }
        return text;
    }
    if let Some(status) = node.get("status").and_then(Value::as_str) {
        // A shard: the node's view of it first.
        text.push_str(&format!(" ({status})"));
    }
    match node.get("strategy").and_then(Value::as_str) {
        Some(strategy) => text.push_str(&format!(
            " [{strategy}] children={} restarts={} restarted={}",
            number(node, "child_count"),
            number(node, "restarts"),
            number(node, "children_restarted"),
        )),
        // A shard that is down or did not answer: no tree to describe.
        None if node.get("status").is_some() => {
            text.push_str(&format!(" restarts={}", number(node, "restarts")))
        }
        None => {
            let restart = node.get("restart").and_then(Value::as_str).unwrap_or("");
            let running = node.get("running").and_then(Value::as_bool) == Some(true);
            text.push_str(&format!(
                " ({kind}, {restart}) {} restarts={}",
                if running { "running" } else { "stopped" },
                number(node, "restarts"),
            ));
        }
    }
    if let Some(error) = node.get("error").and_then(Value::as_str) {
        text.push_str(&format!(" error: {error}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_node_shards_supervisors_and_workers_with_box_lines() {
        let tree = json!({
            "id": "node", "kind": "node", "child_count": 2, "restarts": 1,
            "restart_intensity": {"restarts_max": 5, "period_ms": 10000},
            "children": [
                {"id": "shard-0", "kind": "supervisor", "status": "up", "strategy": "one_for_one",
                 "restarts": 1, "children_restarted": 2, "child_count": 2, "children": [
                    {"id": "services", "kind": "supervisor", "strategy": "one_for_one",
                     "restarts": 0, "children_restarted": 0, "child_count": 1, "children": [
                        {"id": "control", "kind": "worker", "restart": "permanent",
                         "running": true, "restarts": 0, "children": []}
                    ]},
                    {"id": "listeners", "kind": "supervisor", "strategy": "one_for_one",
                     "restarts": 0, "children_restarted": 2, "child_count": 1, "children": [
                        {"id": "tcp", "kind": "worker", "restart": "transient",
                         "running": true, "restarts": 2, "children": []}
                    ]}
                ]},
                {"id": "shard-1", "kind": "supervisor", "status": "down", "running": false,
                 "restarts": 0, "children": [], "error": "shard is down"}
            ]
        });
        assert_eq!(
            render(&tree),
            "node [restarts dead shards, at most 5 per 10000 ms] shards=2 shard_restarts=1\n\
             ├── shard-0 (up) [one_for_one] children=2 restarts=1 restarted=2\n\
             │   ├── services [one_for_one] children=1 restarts=0 restarted=0\n\
             │   │   └── control (worker, permanent) running restarts=0\n\
             │   └── listeners [one_for_one] children=1 restarts=0 restarted=2\n\
             │       └── tcp (worker, transient) running restarts=2\n\
             └── shard-1 (down) restarts=0 error: shard is down\n"
        );
    }
}
