// The live page: one EventSource on /admin/events; every message is a whole
// snapshot (tree and per-shard figures), so a missed one costs nothing.
"use strict";

const state = document.getElementById("state");
const tbody = document.querySelector("#shards tbody");
const treeBox = document.getElementById("tree");
let snapshots = 0;
// Refused streams (503: admin.page_streams_max reached) are retried after
// this long; EventSource itself gives up on a non-200 answer.
const RETRY_MS = 5000;
// `?pushes=N` stops after N snapshots: a still page to print or screenshot
// (headless browsers wait for open streams before they dump the page).
const pushes = Number(new URLSearchParams(location.search).get("pushes")) || 0;

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function ms(value) {
  if (value === null || value === undefined) return "–";
  return value < 1 ? value.toFixed(3) + " ms" : value.toFixed(1) + " ms";
}

function renderShards(shards) {
  tbody.replaceChildren();
  for (const shard of shards) {
    const row = el("tr");
    row.id = "shard-row-" + shard.shard;
    const cells = [
      ["id", "shard-" + shard.shard],
      ["status", shard.status],
      ["sessions", String(shard.sessions)],
      ["pools", shard.pools.map((n, i) => "pool-" + i + ": " + n).join(", ")],
      ["restarts", String(shard.restarts)],
      ["requests", String(shard.requests)],
      ["rps", shard.rps === null ? "–" : shard.rps.toFixed(1)],
      ["p50", ms(shard.p50_ms)],
      ["p99", ms(shard.p99_ms)],
    ];
    for (const [key, text] of cells) {
      const cell = el("td", key === "status" ? (shard.status === "up" ? "up" : "down") : "", text);
      cell.id = key + "-" + shard.shard;
      row.appendChild(cell);
    }
    tbody.appendChild(row);
  }
}

// pools[shard][pool] = sessions, to label the pool supervisors of the tree.
function renderTree(node, pools, shard) {
  const item = el("li");
  item.appendChild(el("span", "node-id", node.id));
  const parts = [];
  if (node.kind === "worker") {
    parts.push("worker, " + node.restart + (node.running ? ", running" : ", stopped"));
  } else if (node.strategy) {
    parts.push("[" + node.strategy + "] children=" + node.child_count);
  }
  if (node.status) parts.push("(" + node.status + ")");
  parts.push("restarts=" + node.restarts);
  item.appendChild(el("span", "meta", parts.join(" ")));
  if (node.children_restarted > 0) {
    item.appendChild(el("span", "meta restarted", "restarted=" + node.children_restarted));
  }
  if (typeof node.shard === "number") shard = node.shard;
  if (typeof node.sessions === "number") {
    item.appendChild(el("span", "sessions", "sessions=" + node.sessions));
  }
  const pool = /^pool-(\d+)$/.exec(node.id);
  if (pool && shard !== undefined && pools[shard]) {
    const count = pools[shard][Number(pool[1])];
    if (count !== undefined) {
      const label = el("span", "sessions", "sessions=" + count);
      label.id = "pool-sessions-" + shard + "-" + pool[1];
      item.appendChild(label);
    }
  }
  if (node.children && node.children.length) {
    const list = el("ul");
    for (const child of node.children) list.appendChild(renderTree(child, pools, shard));
    item.appendChild(list);
  }
  return item;
}

function render(snapshot) {
  snapshots += 1;
  document.body.dataset.snapshots = String(snapshots);
  const up = snapshot.shards.filter((s) => s.status === "up").length;
  state.className = snapshot.draining ? "down" : "";
  state.textContent = (snapshot.draining ? "draining, " : "") + up + "/" + snapshot.shards.length +
    " shards up; push every " + snapshot.interval_ms + " ms; last at " +
    new Date().toLocaleTimeString();
  renderShards(snapshot.shards);
  const pools = {};
  for (const shard of snapshot.shards) pools[shard.shard] = shard.pools;
  const root = el("ul");
  root.appendChild(renderTree(snapshot.tree, pools, undefined));
  treeBox.replaceChildren(root);
}

function connect() {
  const source = new EventSource("/admin/events");
  source.onmessage = (message) => {
    try {
      render(JSON.parse(message.data));
      if (pushes > 0 && snapshots >= pushes) {
        source.close();
        state.textContent += " (stopped after " + pushes + " pushes; reload to go on)";
      }
    } catch (error) {
      state.className = "down";
      state.textContent = "bad snapshot: " + error;
    }
  };
  source.addEventListener("stopped", () => {
    source.close();
    state.className = "stopped";
    state.textContent = "the node has stopped";
  });
  source.onerror = () => {
    state.className = "down";
    if (source.readyState === EventSource.CLOSED) {
      state.textContent = "stream refused or closed; retrying in " + RETRY_MS / 1000 + " s";
      setTimeout(connect, RETRY_MS);
    } else {
      state.textContent = "stream interrupted; reconnecting…";
    }
  };
}

connect();
