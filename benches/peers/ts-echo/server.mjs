// The TypeScript SDK peer of the comparison (benches/peers/run.sh): the
// official SDK's Streamable HTTP server, stateful (one transport and one
// McpServer per session, as the SDK's own stateful example does), with the
// same `echo` tool as shardmcp's demo ({"text": string} -> one text block).
// The SDK's defaults are kept: answers as text/event-stream (SSE).
// Node's plain http server, no framework; TCP_NODELAY on every socket.
//
// Usage: node server.mjs [HOST:PORT]   (default 127.0.0.1:0; prints
// "listening on HOST:PORT")
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js';
import { z } from 'zod';

const BODY_MAX = 4 * 1024 * 1024;
const [host, port] = (process.argv[2] ?? '127.0.0.1:0').split(/:(?=\d+$)/);

function newServer() {
  const server = new McpServer({ name: 'ts-echo', version: '0.1.0' });
  server.registerTool(
    'echo',
    { description: 'Echoes the given text back.', inputSchema: { text: z.string().describe('Text to echo') } },
    async ({ text }) => ({ content: [{ type: 'text', text }] }),
  );
  return server;
}

const transports = new Map(); // session id -> transport

function fail(res, status, message) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ jsonrpc: '2.0', error: { code: -32000, message }, id: null }));
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > BODY_MAX) {
        reject(new Error('body too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

async function handle(req, res) {
  if (!req.url.startsWith('/mcp')) return fail(res, 404, 'not found');
  const sessionId = req.headers['mcp-session-id'];
  if (req.method === 'POST') {
    let body;
    try {
      body = JSON.parse(await readBody(req));
    } catch {
      return fail(res, 400, 'bad JSON');
    }
    let transport = sessionId ? transports.get(sessionId) : undefined;
    if (!transport) {
      if (sessionId || !isInitializeRequest(body)) return fail(res, sessionId ? 404 : 400, 'no such session');
      transport = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        onsessioninitialized: (id) => transports.set(id, transport),
      });
      transport.onclose = () => {
        if (transport.sessionId) transports.delete(transport.sessionId);
      };
      await newServer().connect(transport);
    }
    return transport.handleRequest(req, res, body);
  }
  if (req.method === 'GET' || req.method === 'DELETE') {
    const transport = sessionId && transports.get(sessionId);
    if (!transport) return fail(res, 404, 'no such session');
    return transport.handleRequest(req, res);
  }
  return fail(res, 405, 'method not allowed');
}

const httpServer = http.createServer({ noDelay: true, keepAliveTimeout: 60_000 }, (req, res) => {
  handle(req, res).catch((error) => {
    if (!res.headersSent) fail(res, 500, String(error));
    else res.end();
  });
});
httpServer.on('connection', (socket) => socket.setNoDelay(true));
httpServer.listen(Number(port), host, () => {
  const a = httpServer.address();
  console.log(`listening on ${a.address}:${a.port}`);
});
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
