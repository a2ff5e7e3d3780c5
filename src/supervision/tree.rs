//! The live supervision tree as data, and as JSON for `/admin/tree`.

use serde::Serialize;

use super::spec::{ChildKind, Restart};

/// One node of the live tree.
///
/// `restarts` is how often this node was restarted by its parent;
/// `children_restarted` is how many restart events this supervisor performed.
/// Dynamic worker children (session actors) are counted in `child_count` but
/// not listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TreeNode {
    pub id: String,
    pub kind: ChildKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<&'static str>,
    pub restart: Restart,
    pub running: bool,
    pub restarts: u64,
    pub children_restarted: u64,
    pub child_count: usize,
    pub children: Vec<TreeNode>,
}

impl TreeNode {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|error| format!("{{\"error\":\"{error}\"}}"))
    }

    /// Depth-first search by id path, e.g. `["pools", "pool-3"]`.
    pub fn find(&self, path: &[&str]) -> Option<&TreeNode> {
        match path.split_first() {
            None => Some(self),
            Some((head, rest)) => self
                .children
                .iter()
                .find(|child| child.id == *head)
                .and_then(|child| child.find(rest)),
        }
    }

    /// Total restarts performed anywhere in this subtree.
    pub fn total_restarts(&self) -> u64 {
        self.children_restarted
            + self
                .children
                .iter()
                .map(TreeNode::total_restarts)
                .sum::<u64>()
    }

    /// The tree as indented text, one node a line.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        self.render_into(&mut out, 0);
        out
    }

    fn render_into(&self, out: &mut String, depth: usize) {
        use std::fmt::Write;
        let indent = "  ".repeat(depth);
        let _ = match self.strategy {
            Some(strategy) => writeln!(
                out,
                "{indent}{} [{strategy}] children={} restarts={} restarted={}",
                self.id, self.child_count, self.restarts, self.children_restarted
            ),
            None => writeln!(
                out,
                "{indent}{} ({:?}) running={} restarts={}",
                self.id, self.kind, self.running, self.restarts
            ),
        };
        for child in &self.children {
            child.render_into(out, depth + 1);
        }
    }
}
