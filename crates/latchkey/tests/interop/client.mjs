// The official MCP TypeScript SDK client, run by latchkey's interop tests:
//   node client.mjs [--server-requests] <mcp-url>
//   node client.mjs [--server-requests] --stdio <command> [args...]
// With --stdio it launches <command> as an MCP stdio server (StdioClientTransport), as
// an editor would launch `latchkey stdio`. With --server-requests it also answers a
// sampling request the server sends mid-call, and subscribes to a resource and waits
// for its update notification.
// It lists and calls tools, lists and reads a resource, and receives server
// notifications (progress from a long-running tool: on that call's SSE response, or on
// the GET stream when latchkey bridges an HTTP+SSE server), then ends its session. It prints one JSON summary line on success and
// exits 1 with a reason on any failure; it gives up after 30 s in all.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import {
  CreateMessageRequestSchema,
  ResourceUpdatedNotificationSchema,
} from "@modelcontextprotocol/sdk/types.js";

const args = process.argv.slice(2);
const serverRequests = args[0] === "--server-requests";
if (serverRequests) args.shift();
const stdio = args[0] === "--stdio";
if (stdio) args.shift();
if (args.length === 0) {
  console.error("usage: node client.mjs [--server-requests] <mcp-url> | --stdio <command> [args...]");
  process.exit(2);
}

const deadline = setTimeout(() => {
  console.error("interop client: timed out after 30 s");
  process.exit(1);
}, 30_000);

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function main() {
  const client = new Client(
    { name: "latchkey-interop", version: "1.0.0" },
    { capabilities: serverRequests ? { sampling: {} } : {} },
  );
  const transport = stdio
    ? new StdioClientTransport({ command: args[0], args: args.slice(1), env: process.env, stderr: "inherit" })
    : new StreamableHTTPClientTransport(new URL(args[0]));
  let sampled = 0;
  if (serverRequests) {
    client.setRequestHandler(CreateMessageRequestSchema, async () => {
      sampled += 1;
      return { model: "latchkey-test", role: "assistant", content: { type: "text", text: "sampled through latchkey" } };
    });
  }
  const updated = new Promise((resolve) => {
    client.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => resolve(n.params.uri));
  });
  await client.connect(transport);

  const { tools } = await client.listTools();
  check(tools.some((t) => t.name === "echo"), `no echo tool in ${tools.map((t) => t.name)}`);

  const message = `through latchkey ${process.pid}-${Date.now()}`;
  const echoed = await client.callTool({ name: "echo", arguments: { message } });
  const text = echoed.content?.[0]?.text ?? "";
  check(text === `Echo: ${message}`, `echo returned ${JSON.stringify(echoed)}`);

  const { resources } = await client.listResources();
  check(resources.length > 0, "no resources listed");
  const read = await client.readResource({ uri: resources[0].uri });
  check(read.contents.length > 0, `resource ${resources[0].uri} is empty`);

  // Progress notifications are server-to-client messages sent while the call runs,
  // before its result (one per step).
  const steps = 3;
  const seen = [];
  const done = await client.callTool(
    { name: "trigger-long-running-operation", arguments: { duration: 1, steps } },
    undefined,
    { onprogress: (p) => seen.push(p), timeout: 15_000 },
  );
  check(!done.isError, `long-running operation failed: ${JSON.stringify(done)}`);
  check(seen.length > 0, "no progress notification arrived before the result");
  check(
    seen.every((p, i) => p.total === steps && p.progress > (seen[i - 1]?.progress ?? 0)),
    `progress out of order: ${JSON.stringify(seen)}`,
  );
  const progress = seen.length;

  let sampling = null;
  let subscription = null;
  if (serverRequests) {
    // The server asks the client for a completion while the call runs.
    const result = await client.callTool({ name: "trigger-sampling-request", arguments: { prompt: "hi", maxTokens: 10 } });
    const text = JSON.stringify(result.content);
    check(sampled === 1 && text.includes("sampled through latchkey"), `sampling: ${text}`);
    sampling = true;
    await client.subscribeResource({ uri: resources[0].uri });
    await client.callTool({ name: "toggle-subscriber-updates", arguments: {} });
    subscription = await Promise.race([
      updated,
      new Promise((_, reject) => setTimeout(() => reject(new Error("no resource update within 12 s")), 12_000)),
    ]);
  }

  const sessionId = transport.sessionId ?? null;
  if (!stdio) await transport.terminateSession();
  await client.close();
  console.log(JSON.stringify({
    ok: true,
    tools: tools.length,
    echo: text,
    resources: resources.length,
    resourceRead: true,
    notifications: progress,
    sampling,
    subscription,
    sessionId,
  }));
}

main().then(
  () => {
    clearTimeout(deadline);
    process.exit(0);
  },
  (error) => {
    console.error(`interop client: ${error?.stack ?? error}`);
    process.exit(1);
  },
);
