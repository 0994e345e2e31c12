// The client command for the conformance client scenarios with the official SDK's
// 1.x client (@modelcontextprotocol/sdk 1.32.2, still `latest` on npm: what most
// editors embed), through latchkey (latchkey.mjs):
//   LATCHKEY_BIN=... [LATCHKEY_ADAPTER=stdio] node client-v1.mjs <scenario-url>
// It speaks 2025-11-25, and answers the server's requests (elicitation, sampling,
// roots) as an editor's user would.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import {
  CreateMessageRequestSchema,
  ElicitRequestSchema,
  ListRootsRequestSchema,
} from "@modelcontextprotocol/sdk/types.js";
import { drive } from "./drive.mjs";
import { main, scenario } from "./latchkey.mjs";

// SEP-1034: the client fills in the defaults the server's schema gives.
const defaults = scenario === "elicitation-sep1034-client-defaults";

await main(async (endpoint) => {
  const client = new Client(
    { name: "latchkey-conformance", version: "1.0.0" },
    {
      capabilities: {
        elicitation: defaults ? { form: { applyDefaults: true } } : {},
        sampling: {},
        roots: {},
      },
    },
  );
  client.setRequestHandler(ElicitRequestSchema, async () => ({
    action: "accept",
    content: defaults ? {} : { confirmed: true },
  }));
  client.setRequestHandler(CreateMessageRequestSchema, async () => ({
    role: "assistant",
    content: { type: "text", text: "A sampled answer." },
    model: "latchkey-conformance",
  }));
  client.setRequestHandler(ListRootsRequestSchema, async () => ({ roots: [] }));
  const transport = endpoint.stdio
    ? new StdioClientTransport(endpoint.stdio)
    : new StreamableHTTPClientTransport(new URL(endpoint.url));
  await client.connect(transport);
  await drive(client);
  await client.close();
});
