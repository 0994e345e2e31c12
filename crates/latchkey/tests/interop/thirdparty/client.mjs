// The official MCP TypeScript SDK client against the SDK's own OAuth example server
// (examples/server/simpleStreamableHttp.js --oauth), through latchkey:
//   node client.mjs <mcp-url> <name>
// It initializes, lists the tools, calls `greet` with <name>, ends its session, and
// prints one JSON summary line. latchkey does the OAuth: this client has no auth
// provider, so a 401 reaching it would fail the run. Exits 1 with a reason on any
// failure; gives up after 30 s in all.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, name] = process.argv.slice(2);
if (!url || !name) {
  console.error("usage: node client.mjs <mcp-url> <name>");
  process.exit(2);
}

const deadline = setTimeout(() => {
  console.error("thirdparty client: timed out after 30 s");
  process.exit(1);
}, 30_000);

async function main() {
  const client = new Client({ name: "latchkey-thirdparty", version: "1.0.0" });
  const transport = new StreamableHTTPClientTransport(new URL(url));
  await client.connect(transport);
  const server = client.getServerVersion();
  const { tools } = await client.listTools();
  const greeted = await client.callTool({ name: "greet", arguments: { name } });
  const sessionId = transport.sessionId ?? null;
  await transport.terminateSession();
  await client.close();
  console.log(JSON.stringify({
    ok: true,
    server: server?.name ?? null,
    tools: tools.map((t) => t.name),
    greeting: greeted.content?.[0]?.text ?? null,
    isError: greeted.isError ?? false,
    sessionId,
  }));
}

main().then(
  () => {
    clearTimeout(deadline);
    process.exit(0);
  },
  (error) => {
    console.error(`thirdparty client: ${error?.stack ?? error}`);
    process.exit(1);
  },
);
