// Puts latchkey between a conformance client and a scenario's server, in one of
// two forms (LATCHKEY_ADAPTER): `daemon` starts `latchkey serve` and hands back
// its local URL; `stdio` hands back the command line an editor would configure
// (`latchkey stdio --url <url>`, or `latchkey stdio target --config …` when the
// scenario hands over a client to configure). The config is what a user would
// write for the scenario: the pre-registered client, the client-credentials
// grant, the key file. $BROWSER is browser.mjs, the person who approves at once.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));

export const scenario = process.env.MCP_CONFORMANCE_SCENARIO ?? "";
export const context = JSON.parse(process.env.MCP_CONFORMANCE_CONTEXT || "{}");
export const form = process.env.LATCHKEY_ADAPTER === "stdio" ? "stdio" : "daemon";

function config(url, dir) {
  let text = `store = "memory"\n[servers.target]\nurl = ${JSON.stringify(url)}\n[servers.target.oauth]\nauth_timeout_secs = 20\n`;
  // The machine-to-machine scenarios (SEP-1046) hand over a client to use with the
  // client-credentials grant: a secret, or a private key for private_key_jwt.
  if (scenario.startsWith("auth/client-credentials")) text += `grant = "client_credentials"\n`;
  // Workload identity (SEP-1933): the workload's JWT in a file, as a platform mounts it.
  if (scenario === "auth/wif-jwt-bearer") {
    writeFileSync(join(dir, "workload.jwt"), context.valid_jwt, { mode: 0o600 });
    text += `grant = "jwt_bearer"\nassertion_file = "workload.jwt"\n`;
  }
  // Enterprise-Managed Authorization (SEP-990): the IdP's ID token handed over, as
  // a program that keeps it current would.
  const enterprise = ["auth/enterprise-managed-authorization", "auth/cross-app-access-complete-flow"].includes(scenario);
  if (enterprise) text += `grant = "enterprise"\nidp = "corp"\n`;
  if (context.client_id) text += `client_id = ${JSON.stringify(context.client_id)}\n`;
  if (context.client_secret) text += `client_secret = ${JSON.stringify(context.client_secret)}\n`;
  if (context.private_key_pem) {
    writeFileSync(join(dir, "client-key.pem"), context.private_key_pem, { mode: 0o600 });
    text += `private_key_file = "client-key.pem"\n`;
    if (context.signing_algorithm) text += `signing_alg = ${JSON.stringify(context.signing_algorithm)}\n`;
  }
  // The metadata document URL the basic-cimd scenario expects.
  text += `client_metadata_url = "https://conformance-test.local/client-metadata.json"\n`;
  if (enterprise) {
    writeFileSync(join(dir, "id-token.jwt"), context.idp_id_token, { mode: 0o600 });
    text += `[idps.corp]\nissuer = ${JSON.stringify(context.idp_issuer)}\nclient_id = ${JSON.stringify(context.idp_client_id)}\nid_token_file = "id-token.jwt"\n`;
  }
  return text;
}

// Starts latchkey for the scenario server at `url`. Resolves to
// { url } (daemon form: the local endpoint) or { stdio } (stdio form: the
// StdioServerParameters to launch), plus close().
export async function latchkey(url) {
  const dir = mkdtempSync(join(tmpdir(), "latchkey-conformance-"));
  writeFileSync(join(dir, "config.toml"), config(url, dir));
  const browser = `${process.execPath} ${join(here, "browser.mjs")}`;
  const cleanup = () => rmSync(dir, { recursive: true, force: true });
  if (form === "stdio") {
    // Only the scenarios that hand over a client need the config; the rest use --url.
    const named = Boolean(context.client_id) || scenario === "auth/basic-cimd";
    const args = named
      ? ["--log-level", "debug", "stdio", "target", "--config", join(dir, "config.toml")]
      : ["--log-level", "debug", "stdio", "--url", url];
    const env = {
      ...process.env,
      BROWSER: browser,
      XDG_CONFIG_HOME: join(dir, "xdg-config"),
      XDG_STATE_HOME: join(dir, "state"),
      XDG_RUNTIME_DIR: join(dir, "run"),
    };
    // No session bus: the store is then a file in this scenario's own state
    // directory, so that no scenario finds another's tokens in the session's
    // keyring (scenario servers of different runs can share a port).
    delete env.DBUS_SESSION_BUS_ADDRESS;
    return { stdio: { command: process.env.LATCHKEY_BIN, args, env, stderr: "inherit" }, close: cleanup };
  }
  const daemon = spawn(
    process.env.LATCHKEY_BIN,
    ["--log-level", "debug", "serve", "--listen", "127.0.0.1:0", "--config", join(dir, "config.toml")],
    { env: { ...process.env, BROWSER: browser }, stdio: ["ignore", "inherit", "pipe"] },
  );
  const addr = await new Promise((resolve, reject) => {
    let seen = "";
    daemon.stderr.on("data", (chunk) => {
      process.stderr.write(chunk);
      seen += chunk;
      const found = seen.match(/local=(\S+)/);
      if (found) resolve(found[1]);
    });
    daemon.on("exit", (code) => reject(new Error(`latchkey exited with ${code} before listening`)));
  });
  return {
    url: `http://${addr}/target`,
    close: () => {
      daemon.kill("SIGTERM");
      cleanup();
    },
  };
}

// Runs `drive(endpoint)` against latchkey for the scenario server given as the
// last argument, and exits 0 only if it finished.
export async function main(drive) {
  const endpoint = await latchkey(process.argv[process.argv.length - 1]);
  let status = 0;
  try {
    await drive(endpoint);
  } catch (error) {
    console.error(`adapter: ${error?.stack ?? error}`);
    status = 1;
  } finally {
    endpoint.close();
  }
  process.exit(status);
}
