#!/usr/bin/env node
// Drives a shardmcp server with the official MCP TypeScript SDK client
// (handshake era) and prints one JSON line per scenario step:
//   {"client":"ts-sdk","sdk":"1.32.2","era":"handshake","transport":"http","step":"tools/call:add","ok":true,...}
// A step that fails prints "ok":false with "error"; the exit status is 1 when
// any step failed (2 for bad usage).
//
// Usage:
//   node ts_client.mjs --transport http --url http://127.0.0.1:PORT/mcp [--steps a,b,...]
//   node ts_client.mjs --transport stdio --command /path/to/shardmcp [ARG...]   (once `serve --stdio` exists)
//   node ts_client.mjs --list-steps
// --bearer TOKEN sends `Authorization: Bearer TOKEN` with every HTTP request.
// --steps runs only the named steps (in scenario order); "connect" always runs.
//
// The scenario itself does not depend on the transport: only connect() does.
// To add one (e.g. a resumed SSE stream), add a branch there and, for a step
// that only makes sense on it, a step below with `transports: [...]`.

import { readFileSync } from "node:fs";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import {
  CreateMessageRequestSchema,
  ElicitRequestSchema,
  LoggingMessageNotificationSchema,
  ResourceUpdatedNotificationSchema,
} from "@modelcontextprotocol/sdk/types.js";

const SDK_VERSION = JSON.parse(
  readFileSync(new URL("./node_modules/@modelcontextprotocol/sdk/package.json", import.meta.url)),
).version;

const USAGE = `usage: node ts_client.mjs --transport http --url URL [--steps a,b,...]
       node ts_client.mjs --transport stdio --command PATH [ARG...] [--steps a,b,...]
       node ts_client.mjs --list-steps`;

function parseArgs(argv) {
  const args = { transport: "http", url: null, command: null, commandArgs: [], steps: null, list: false, bearer: null };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--transport") args.transport = argv[++i];
    else if (arg === "--url") args.url = argv[++i];
    else if (arg === "--bearer") args.bearer = argv[++i];
    else if (arg === "--steps") args.steps = argv[++i].split(",").filter(Boolean);
    else if (arg === "--list-steps") args.list = true;
    else if (arg === "--command") {
      // Everything after --command is the server command line.
      args.command = argv[++i];
      args.commandArgs = argv.slice(i + 1);
      break;
    } else if (arg === "--help" || arg === "-h") {
      console.log(USAGE);
      process.exit(0);
    } else {
      console.error(`unknown argument ${arg}\n${USAGE}`);
      process.exit(2);
    }
  }
  return args;
}

class StepFailure extends Error {}

function expect(condition, message) {
  if (!condition) throw new StepFailure(message);
}

function same(actual, wanted, what) {
  const a = JSON.stringify(actual);
  const w = JSON.stringify(wanted);
  expect(a === w, `${what}: got ${a}, wanted ${w}`);
}

// How long the cancelled call would run: four steps, progress after each.
// A server that ran it on to its end is caught by the tally (see "cancel").
const CANCELLED_MS = 8000;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/// What the client's callbacks saw; the steps read it.
const seen = { logs: [], elicitations: [], samplings: [], updated: [] };

/// The scenario: each step returns the details to print (and throws on a mismatch).
const STEPS = [
  {
    name: "tools/list",
    async run(client) {
      const { tools } = await client.listTools();
      const names = tools.map((tool) => tool.name);
      for (const wanted of ["echo", "add", "slow", "test_sampling", "test_elicitation"]) {
        expect(names.includes(wanted), `tools/list lacks ${wanted}: ${names}`);
      }
      const add = tools.find((tool) => tool.name === "add");
      same(add.outputSchema?.required, ["sum"], "add's outputSchema.required");
      return { tools: names.length, first: names.slice(0, 4) };
    },
  },
  {
    name: "tools/call:echo",
    async run(client) {
      const result = await client.callTool({ name: "echo", arguments: { text: "héllo ✓" } });
      same(result.content, [{ type: "text", text: "héllo ✓" }], "echo content");
      return { text: result.content[0].text, isError: result.isError ?? false };
    },
  },
  {
    name: "tools/call:add",
    async run(client) {
      const result = await client.callTool({ name: "add", arguments: { a: 2, b: 40 } });
      same(result.structuredContent, { sum: 42 }, "add structuredContent");
      return { sum: result.structuredContent.sum };
    },
  },
  {
    name: "tools/call:invalid-arguments",
    async run(client) {
      // Arguments that break the input schema: a JSON-RPC error, not a result.
      try {
        await client.callTool({ name: "add", arguments: { a: "two" } });
      } catch (error) {
        same(error.code, -32602, "error code");
        return { code: error.code };
      }
      throw new StepFailure("add with a string argument was not refused");
    },
  },
  {
    name: "resources/list",
    async run(client) {
      const { resources } = await client.listResources();
      const uris = resources.map((resource) => resource.uri);
      expect(uris.includes("demo://readme") && uris.includes("demo://pixel.png"), `resources: ${uris}`);
      const { resourceTemplates } = await client.listResourceTemplates();
      const templates = resourceTemplates.map((template) => template.uriTemplate);
      expect(templates.includes("demo://notes/{name}"), `templates: ${templates}`);
      return { uris, templates };
    },
  },
  {
    name: "resources/read",
    async run(client) {
      const readme = await client.readResource({ uri: "demo://readme" });
      expect(readme.contents[0].text.startsWith("shardmcp demo server"), `readme: ${readme.contents[0].text}`);
      const pixel = await client.readResource({ uri: "demo://pixel.png" });
      same(pixel.contents[0].mimeType, "image/png", "pixel mimeType");
      const png = Buffer.from(pixel.contents[0].blob, "base64");
      same([...png.subarray(1, 4)].map((b) => String.fromCharCode(b)).join(""), "PNG", "pixel magic");
      const note = await client.readResource({ uri: "demo://notes/alpha" });
      same(note.contents, [{ uri: "demo://notes/alpha", mimeType: "text/plain", text: "note alpha" }], "note");
      let missing = null;
      try {
        await client.readResource({ uri: "demo://nothing-here" });
      } catch (error) {
        missing = error.code;
      }
      same(missing, -32002, "missing resource error code");
      return { readme: readme.contents[0].text.length, pngBytes: png.length, note: note.contents[0].text, missing };
    },
  },
  {
    name: "prompts",
    async run(client) {
      const { prompts } = await client.listPrompts();
      const names = prompts.map((prompt) => prompt.name);
      expect(names.includes("greeting") && names.includes("review"), `prompts: ${names}`);
      const greeting = await client.getPrompt({ name: "greeting", arguments: { name: "Ada" } });
      same(greeting.messages, [{ role: "user", content: { type: "text", text: "Say hello to Ada." } }], "greeting");
      const review = await client.getPrompt({ name: "review", arguments: { focus: "tone" } });
      same(review.messages[0].content.type, "resource", "review's first block");
      same(review.messages[0].content.resource.uri, "demo://readme", "embedded resource uri");
      same(review.messages[1].content.text, "Review it for tone.", "review's second block");
      const completion = await client.complete({
        ref: { type: "ref/prompt", name: "greeting" },
        argument: { name: "name", value: "A" },
      });
      same(completion.completion.values, ["Ada", "Alan"], "completion values");
      return {
        greeting: greeting.messages[0].content.text,
        review: review.messages.map((m) => m.content.type),
        completion: completion.completion.values,
      };
    },
  },
  {
    name: "progress-and-logging",
    async run(client, transport) {
      await client.setLoggingLevel("debug");
      seen.logs.length = 0;
      const progress = [];
      const result = await client.callTool({ name: "slow", arguments: { ms: 200 } }, undefined, {
        onprogress: (p) => progress.push([p.progress, p.total]),
      });
      same(result.content, [{ type: "text", text: "waited 200 ms" }], "slow content");
      // The SDK hands notifications to their handlers a microtask later but
      // settles a response at once: on stdio, where the last progress line
      // and the answer arrive in one read, the request is gone by the time
      // its last progress is dispatched, and the SDK drops it. The server
      // wrote all four before the answer (the logs below show the fourth step).
      const wanted = [[1, 4], [2, 4], [3, 4], [4, 4]];
      if (transport === "stdio" && progress.length === 3) wanted.pop();
      same(progress, wanted, "progress");
      const logs = seen.logs.map((log) => [log.level, log.logger, log.data.step]);
      same(logs, [["info", "slow", 1], ["info", "slow", 2], ["info", "slow", 3], ["info", "slow", 4]], "logs");
      return { progress: progress.map(([p]) => p), logs: logs.length, text: result.content[0].text };
    },
  },
  {
    name: "elicitation",
    async run(client) {
      seen.elicitations.length = 0;
      const result = await client.callTool({ name: "test_elicitation", arguments: { message: "Who are you?" } });
      same(seen.elicitations.length, 1, "elicitation requests seen");
      same(seen.elicitations[0].message, "Who are you?", "elicitation message");
      same(seen.elicitations[0].requestedSchema.required, ["username", "email"], "requested fields");
      const text = result.content[0].text;
      same(
        text,
        'User response: action=accept, content={"email":"ts@example.org","username":"ts-user"}',
        "tool result",
      );
      return { text };
    },
  },
  {
    name: "sampling",
    async run(client) {
      seen.samplings.length = 0;
      const result = await client.callTool({ name: "test_sampling", arguments: { prompt: "What is 6x7?" } });
      same(seen.samplings.length, 1, "sampling requests seen");
      same(seen.samplings[0].messages[0].content.text, "What is 6x7?", "sampled prompt");
      const text = result.content[0].text;
      same(text, "LLM response: ts model says: What is 6x7?", "tool result");
      return { text };
    },
  },
  {
    name: "cancel",
    async run(client) {
      // `slow` results carry a tally of every slow call: running, completed,
      // stopped early. One before, then a call cancelled once it has reported
      // progress (so its handler is surely running), then calls until no other
      // is running: the cancelled one must count as stopped, not completed.
      const probe = async () =>
        (await client.callTool({ name: "slow", arguments: { ms: 0 } })).structuredContent;
      const before = await probe();
      const abort = new AbortController();
      let reason = null;
      try {
        await client.callTool({ name: "slow", arguments: { ms: CANCELLED_MS } }, undefined, {
          signal: abort.signal,
          onprogress: () => abort.abort("interop: cancelled by the client"),
        });
      } catch (error) {
        reason = String(error);
      }
      expect(reason !== null, "the cancelled call resolved instead of being rejected");
      // The SDK sends notifications/cancelled on a POST of its own that it does
      // not wait for, so the server may learn of it a little later: poll.
      const cancelledAt = Date.now();
      let after;
      let polls = 0;
      for (;;) {
        polls++;
        after = await probe();
        if (after.othersRunning === 0 || Date.now() > cancelledAt + 2 * CANCELLED_MS) break;
        await sleep(50);
      }
      same(after.othersRunning, 0, "slow calls still running after the cancellation");
      same(after.stopped - before.stopped, 1, "calls stopped early");
      // The first probe and every poll completed; the cancelled call must not have.
      same(after.completed - before.completed, polls, "calls completed");
      return { stopped: 1, polls, stopSeenAfterMs: Date.now() - cancelledAt };
    },
  },
  {
    name: "subscribe",
    async run(client) {
      // resources/subscribe, then a tool that changes the note:
      // resources/updated must reach the client.
      const uri = "demo://notes/subscribed";
      same(await client.subscribeResource({ uri }), {}, "subscribe result");
      seen.updated.length = 0;
      const touched = await client.callTool({ name: "touch_note", arguments: { name: "subscribed" } });
      same(touched.content[0].text, `touched ${uri}`, "touch_note result");
      const deadline = Date.now() + 5000;
      while (seen.updated.length === 0 && Date.now() < deadline) await sleep(50);
      same(seen.updated, [uri], "resources/updated received");
      same(await client.unsubscribeResource({ uri }), {}, "unsubscribe result");
      return { uri };
    },
  },
  {
    // The server closes this call's SSE stream before it answers (SEP-1699);
    // the SDK must resume the stream with Last-Event-ID to get the answer.
    name: "resume",
    transports: ["http"],
    async run(client) {
      const result = await client.callTool({ name: "test_reconnection", arguments: {} });
      const text = result.content?.[0]?.text;
      same(text, "Reconnection test completed", "the answer after resuming");
      return { text };
    },
  },
  {
    name: "ping",
    async run(client) {
      same(await client.ping(), {}, "ping result");
      return {};
    },
  },
];

async function connect(args) {
  const client = new Client(
    { name: "shardmcp-interop-ts", version: "0.1.0" },
    { capabilities: { sampling: {}, elicitation: { form: {} } } },
  );
  client.setNotificationHandler(LoggingMessageNotificationSchema, (notification) => {
    seen.logs.push(notification.params);
  });
  client.setNotificationHandler(ResourceUpdatedNotificationSchema, (notification) => {
    seen.updated.push(notification.params.uri);
  });
  client.setRequestHandler(ElicitRequestSchema, async (request) => {
    seen.elicitations.push(request.params);
    return { action: "accept", content: { username: "ts-user", email: "ts@example.org" } };
  });
  client.setRequestHandler(CreateMessageRequestSchema, async (request) => {
    seen.samplings.push(request.params);
    const prompt = request.params.messages[0].content.text;
    return {
      model: "interop-model",
      role: "assistant",
      content: { type: "text", text: `ts model says: ${prompt}` },
      stopReason: "endTurn",
    };
  });
  let transport;
  if (args.transport === "http") {
    if (!args.url) throw new Error("--transport http needs --url");
    const options = args.bearer
      ? { requestInit: { headers: { Authorization: `Bearer ${args.bearer}` } } }
      : undefined;
    transport = new StreamableHTTPClientTransport(new URL(args.url), options);
  } else if (args.transport === "stdio") {
    if (!args.command) throw new Error("--transport stdio needs --command");
    transport = new StdioClientTransport({ command: args.command, args: args.commandArgs, stderr: "inherit" });
  } else {
    throw new Error(`unknown transport ${args.transport}`);
  }
  // The client hands the negotiated version to transports that want it (HTTP
  // headers); catching it here tells it on every transport.
  let protocolVersion = null;
  const setProtocolVersion = transport.setProtocolVersion?.bind(transport);
  transport.setProtocolVersion = (version) => {
    protocolVersion = version;
    setProtocolVersion?.(version);
  };
  await client.connect(transport);
  return { client, transport, protocolVersion };
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  if (args.list) {
    console.log(["connect", ...STEPS.map((step) => step.name)].join("\n"));
    return 0;
  }
  const base = { client: "ts-sdk", sdk: SDK_VERSION, era: "handshake", transport: args.transport };
  const report = (step, fields) => console.log(JSON.stringify({ ...base, step, ...fields }));
  let failed = 0;
  let connection;
  try {
    connection = await connect(args);
    const info = connection.client.getServerVersion();
    const capabilities = connection.client.getServerCapabilities();
    report("connect", {
      ok: true,
      server: info.name,
      protocolVersion: connection.protocolVersion,
      sessionId: connection.transport.sessionId != null,
      capabilities: Object.keys(capabilities).sort(),
    });
  } catch (error) {
    report("connect", { ok: false, error: String(error?.stack ?? error) });
    return 1;
  }
  const wanted = args.steps ? new Set(args.steps) : null;
  for (const step of STEPS) {
    if (step.transports && !step.transports.includes(args.transport)) continue;
    if (wanted && !wanted.has(step.name)) continue;
    try {
      const details = await step.run(connection.client, args.transport);
      report(step.name, { ok: true, ...details });
    } catch (error) {
      failed++;
      report(step.name, { ok: false, error: String(error instanceof StepFailure ? error.message : error?.stack ?? error) });
    }
  }
  try {
    // Ends the session (DELETE) on HTTP; closes the pipes on stdio.
    if (args.transport === "http") await connection.transport.terminateSession();
    await connection.client.close();
    report("close", { ok: true });
  } catch (error) {
    failed++;
    report("close", { ok: false, error: String(error) });
  }
  return failed === 0 ? 0 : 1;
}

process.exitCode = await main();
