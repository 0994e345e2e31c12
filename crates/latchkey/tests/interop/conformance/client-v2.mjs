// The client command for the conformance client scenarios with the official SDK's
// v2 client (@modelcontextprotocol/client 2.4.0, which negotiates 2026-07-28),
// through latchkey (latchkey.mjs):
//   LATCHKEY_BIN=... [LATCHKEY_ADAPTER=stdio] node client-v2.mjs <scenario-url>
// The OAuth is latchkey's: the client has no auth provider. What a scenario
// measures besides auth needs the client to do something particular (answer an
// elicitation, make the calls the runner names, echo a schema back); that is
// here, one entry per scenario, learnt from the SDK's own conformance client.
import { Client } from "@modelcontextprotocol/client";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/client";
import { StdioClientTransport } from "@modelcontextprotocol/client/stdio";
import { SkillsClient } from "@modelcontextprotocol/client/ext/skills";
import { drive } from "./drive.mjs";
import { main, scenario } from "./latchkey.mjs";

const info = { name: "latchkey-conformance", version: "1.0.0" };

// The 2026-07-28 scenarios, and any scenario the runner resolved to that
// revision: the client negotiates it (server/discover) instead of initialize.
const modern =
  process.env.MCP_CONFORMANCE_PROTOCOL_VERSION === "2026-07-28" ||
  ["request-metadata", "http-standard-headers", "http-custom-headers", "http-invalid-tool-headers", "sep-2322-client-request-state"].includes(scenario);

// The SEP-2243 and SEP-2322 scenario servers answer neither server/discover nor
// a 2026-shaped initialize, so the client's connect-time discovery is answered
// here, before latchkey, as the SDK's own conformance client does. Every other
// message goes through latchkey to the scenario server.
const noDiscovery = ["http-standard-headers", "http-custom-headers", "http-invalid-tool-headers", "sep-2322-client-request-state"].includes(scenario);

function localDiscovery(inner) {
  const outer = {
    start: () => inner.start(),
    close: () => inner.close(),
    async send(message, options) {
      if (message.method === "server/discover") {
        queueMicrotask(() =>
          outer.onmessage?.({
            jsonrpc: "2.0",
            id: message.id,
            result: {
              supportedVersions: ["2026-07-28"],
              capabilities: { tools: { listChanged: true }, resources: {}, prompts: {} },
              _meta: { "io.modelcontextprotocol/serverInfo": info },
            },
          }),
        );
        return;
      }
      return inner.send(message, options);
    },
    get sessionId() {
      return inner.sessionId;
    },
    setProtocolVersion: (version) => inner.setProtocolVersion?.(version),
  };
  inner.onmessage = (message, extra) => outer.onmessage?.(message, extra);
  inner.onerror = (error) => outer.onerror?.(error);
  inner.onclose = () => outer.onclose?.();
  return outer;
}

await main(async (endpoint) => {
  const capabilities = scenario === "elicitation-sep1034-client-defaults"
    ? { elicitation: { form: { applyDefaults: true } } }
    : { roots: { listChanged: true }, sampling: {}, elicitation: {} };
  const client = new Client(info, modern ? { capabilities, versionNegotiation: { mode: "auto" } } : { capabilities });
  client.setRequestHandler("elicitation/create", async () =>
    scenario === "elicitation-sep1034-client-defaults"
      ? { action: "accept", content: {} } // the SDK fills in the defaults
      : { action: "accept", content: { confirmed: true } },
  );
  let transport = endpoint.stdio
    ? new StdioClientTransport(endpoint.stdio)
    : new StreamableHTTPClientTransport(new URL(endpoint.url));
  if (noDiscovery) transport = localDiscovery(transport);
  await client.connect(transport);
  await drive(client, async () => {
    switch (scenario) {
      case "sep-2640-client-no-prefetch":
        // A host lists skills and retrieves nothing until one is needed.
        await new SkillsClient(client).list();
        break;
      case "sep-2640-client-verify-digest":
      case "sep-2640-client-verify-size":
      case "sep-2640-client-verify-frontmatter": {
        // A host loads each skill (its SKILL.md), then its files; the SDK checks
        // each against the listing, and a file that fails is not used (nor a skill
        // whose SKILL.md fails).
        const skills = new SkillsClient(client);
        for (const skill of (await skills.list({}, {})).skills) {
          try {
            await skills.read(skill);
          } catch {
            continue;
          }
          for (const file of skill.resources ?? []) {
            if (file.uri !== skill.uri) await skills.read(skill, file.uri).catch(() => {});
          }
        }
        break;
      }
      default:
        return false;
    }
    return true;
  });
  await client.close();
});
