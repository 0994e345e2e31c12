// The official MCP TypeScript SDK client, run by latchkey's interop tests:
//   node client.mjs <mcp-url>
// It lists and calls tools, lists and reads a resource, and receives server
// notifications (progress from a long-running tool: on that call's SSE response, or on
// the GET stream when latchkey bridges an HTTP+SSE server), then ends its session. It prints one JSON summary line on success and
// exits 1 with a reason on any failure; it gives up after 30 s in all.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const url = process.argv[2];
if (!url) {
  console.error("usage: node client.mjs <mcp-url>");
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
  const client = new Client({ name: "latchkey-interop", version: "1.0.0" });
  const transport = new StreamableHTTPClientTransport(new URL(url));
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

  const sessionId = transport.sessionId ?? null;
  await transport.terminateSession();
  await client.close();
  console.log(JSON.stringify({
    ok: true,
    tools: tools.length,
    echo: text,
    resources: resources.length,
    resourceRead: true,
    notifications: progress,
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
