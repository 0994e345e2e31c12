// What each conformance scenario needs the client to do once connected, for both
// SDK clients (their Client classes share these methods): list the tools, then
// make the calls the scenario checks. `extra` handles what only one client can
// do (the v2 client's skills); it returns false for a scenario it does not know.
import { context, scenario } from "./latchkey.mjs";

export async function drive(client, extra = async () => false) {
  const { tools } = await client.listTools();
  const call = (name, args = {}) => client.callTool({ name, arguments: args });
  switch (scenario) {
    case "request-metadata":
    case "json-schema-ref-no-deref":
    case "initialize":
      break;
    case "http-custom-headers":
      for (const c of context.toolCalls ?? []) await call(c.name, c.arguments);
      break;
    case "http-invalid-tool-headers":
      // Only the valid tool may be left; a call refused locally is not a failure.
      for (const tool of tools) await call(tool.name, { region: "us-west1" }).catch(() => {});
      break;
    case "http-standard-headers": {
      if (tools[0]) await call(tools[0].name);
      const { resources } = await client.listResources();
      if (resources[0]) await client.readResource({ uri: resources[0].uri });
      const { prompts } = await client.listPrompts();
      if (prompts[0]) await client.getPrompt({ name: prompts[0].name, arguments: {} });
      break;
    }
    case "sep-2322-client-request-state":
      for (const name of ["test_mrtr_echo_state", "test_mrtr_no_state", "test_mrtr_unrelated"]) await call(name);
      // A result without resultType is refused by the SDK without a retry: expected.
      await call("test_mrtr_no_result_type").catch(() => {});
      break;
    case "json-schema-2020-12-preservation": {
      const focal = tools.find((t) => t.name === "json_schema_2020_12_tool");
      if (!focal) throw new Error("json_schema_2020_12_tool not listed");
      await call("json_schema_echo", { schema: focal.inputSchema });
      break;
    }
    case "tools_call":
      if (tools.some((t) => t.name === "add_numbers")) await call("add_numbers", { a: 5, b: 3 });
      break;
    default:
      if (await extra(client, tools)) break;
      for (const tool of tools) await call(tool.name);
  }
}
