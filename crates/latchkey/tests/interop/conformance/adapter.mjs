// The client command for @modelcontextprotocol/conformance's client scenarios:
//   LATCHKEY_BIN=... [LATCHKEY_ADAPTER=stdio] node adapter.mjs <scenario-url>
// With LATCHKEY_ADAPTER=stdio the SDK client launches `latchkey stdio --url <url>`
// instead (or `latchkey stdio target --config …` when the scenario hands over a
// client to configure), as an editor would.
// It configures a latchkey daemon with the scenario's server (and the pre-registered
// client from MCP_CONFORMANCE_CONTEXT, if any), starts it with $BROWSER set to
// browser.mjs, and drives an MCP session through it with the official SDK client:
// initialize, tools/list, and every tool called. The OAuth flow is latchkey's.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const here = dirname(fileURLToPath(import.meta.url));
const url = process.argv[process.argv.length - 1];
const context = JSON.parse(process.env.MCP_CONFORMANCE_CONTEXT || "{}");
const dir = mkdtempSync(join(tmpdir(), "latchkey-conformance-"));

let config = `store = "memory"\n[servers.target]\nurl = ${JSON.stringify(url)}\n[servers.target.oauth]\nauth_timeout_secs = 20\n`;
// The machine-to-machine scenarios (SEP-1046) hand over a client to use with the
// client-credentials grant: a secret, or a private key for private_key_jwt.
if (process.env.MCP_CONFORMANCE_SCENARIO?.startsWith("auth/client-credentials")) {
  config += `grant = "client_credentials"\n`;
}
if (context.client_id) config += `client_id = ${JSON.stringify(context.client_id)}\n`;
if (context.client_secret) config += `client_secret = ${JSON.stringify(context.client_secret)}\n`;
if (context.private_key_pem) {
  writeFileSync(join(dir, "client-key.pem"), context.private_key_pem, { mode: 0o600 });
  config += `private_key_file = "client-key.pem"\n`;
  if (context.signing_algorithm) config += `signing_alg = ${JSON.stringify(context.signing_algorithm)}\n`;
}
// The metadata document URL the basic-cimd scenario expects.
config += `client_metadata_url = "https://conformance-test.local/client-metadata.json"\n`;
writeFileSync(join(dir, "config.toml"), config);

const browser = `${process.execPath} ${join(here, "browser.mjs")}`;
const stdio = process.env.LATCHKEY_ADAPTER === "stdio";
let latchkey = null;
let transport;
if (stdio) {
  // Only the scenarios that hand over a client need the config; the rest use --url.
  const named = Boolean(context.client_id) || process.env.MCP_CONFORMANCE_SCENARIO === "auth/basic-cimd";
  const args = named
    ? ["--log-level", "debug", "stdio", "target", "--config", join(dir, "config.toml")]
    : ["--log-level", "debug", "stdio", "--url", url];
  transport = new StdioClientTransport({
    command: process.env.LATCHKEY_BIN,
    args,
    env: {
      ...process.env,
      BROWSER: browser,
      XDG_CONFIG_HOME: join(dir, "xdg-config"),
      XDG_STATE_HOME: join(dir, "state"),
      XDG_RUNTIME_DIR: join(dir, "run"),
    },
    stderr: "inherit",
  });
} else {
  latchkey = spawn(
    process.env.LATCHKEY_BIN,
    ["--log-level", "debug", "serve", "--listen", "127.0.0.1:0", "--config", join(dir, "config.toml")],
    { env: { ...process.env, BROWSER: browser }, stdio: ["ignore", "inherit", "pipe"] },
  );
  const addr = await new Promise((resolve, reject) => {
    let seen = "";
    latchkey.stderr.on("data", (chunk) => {
      process.stderr.write(chunk);
      seen += chunk;
      const found = seen.match(/local=(\S+)/);
      if (found) resolve(found[1]);
    });
    latchkey.on("exit", (code) => reject(new Error(`latchkey exited with ${code} before listening`)));
  });
  transport = new StreamableHTTPClientTransport(new URL(`http://${addr}/target`));
}

let status = 0;
try {
  const client = new Client({ name: "latchkey-conformance", version: "1.0.0" });
  await client.connect(transport);
  const { tools } = await client.listTools();
  for (const tool of tools) {
    await client.callTool({ name: tool.name, arguments: {} });
  }
  await client.close();
} catch (error) {
  console.error(`adapter: ${error?.stack ?? error}`);
  status = 1;
} finally {
  latchkey?.kill("SIGTERM");
  rmSync(dir, { recursive: true, force: true });
}
process.exit(status);
