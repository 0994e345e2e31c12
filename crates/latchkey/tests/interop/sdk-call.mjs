// The official MCP TypeScript SDK client with no auth provider, through latchkey:
//   node sdk-call.mjs <mcp-url> <tool> <json-arguments>
//   node sdk-call.mjs --stdio <tool> <json-arguments> <command> [args...]
// It initializes, lists the tools, calls <tool>, ends its session and prints one JSON
// summary line. A 401 reaching it would fail the run: latchkey must do the OAuth.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const argv = process.argv.slice(2);
const stdio = argv[0] === "--stdio";
const [url, tool, args, ...command] = stdio ? [null, ...argv.slice(1)] : argv;
const deadline = setTimeout(() => {
  console.error("sdk-call: timed out after 30 s");
  process.exit(1);
}, 30_000);
try {
  const client = new Client({ name: "latchkey-sdk-call", version: "1.0.0" });
  const transport = stdio
    ? new StdioClientTransport({ command: command[0], args: command.slice(1), env: process.env, stderr: "inherit" })
    : new StreamableHTTPClientTransport(new URL(url));
  await client.connect(transport);
  const { tools } = await client.listTools();
  const result = await client.callTool({ name: tool, arguments: JSON.parse(args ?? "{}") });
  if (!stdio) await transport.terminateSession();
  await client.close();
  console.log(JSON.stringify({
    ok: true,
    tools: tools.map((t) => t.name),
    text: result.content?.[0]?.text ?? null,
    isError: result.isError ?? false,
  }));
  clearTimeout(deadline);
  process.exit(0);
} catch (error) {
  console.error(`sdk-call: ${error?.stack ?? error}`);
  process.exit(1);
}
