"""The official MCP Python SDK's stdio client, run by latchkey's interop tests:

    python client.py <command> [args...]

It launches <command> as an MCP stdio server (as an editor launches `latchkey
stdio`), lists and calls tools, reads a resource, answers a sampling request the
server sends mid-call, subscribes to a resource and waits for its update. It prints
one JSON summary line, or exits 1 with the reason.
"""

import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client


async def main(command: str, args: list[str]) -> dict:
    updated: asyncio.Future = asyncio.get_running_loop().create_future()
    sampled = 0

    async def sampling(context, params: types.CreateMessageRequestParams):
        nonlocal sampled
        sampled += 1
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text="sampled through latchkey"),
            model="latchkey-test",
        )

    async def messages(message):
        if isinstance(message, types.ServerNotification) and isinstance(
            message.root, types.ResourceUpdatedNotification
        ):
            if not updated.done():
                updated.set_result(str(message.root.params.uri))

    params = StdioServerParameters(command=command, args=args, env=dict(os.environ))
    async with stdio_client(params) as (read, write):
        async with ClientSession(
            read, write, sampling_callback=sampling, message_handler=messages
        ) as session:
            await session.initialize()
            tools = (await session.list_tools()).tools
            names = [t.name for t in tools]
            assert "echo" in names, names
            echoed = await session.call_tool("echo", {"message": "from python"})
            text = echoed.content[0].text
            assert text == "Echo: from python", text
            resources = (await session.list_resources()).resources
            read_back = await session.read_resource(resources[0].uri)
            assert read_back.contents, "empty resource"
            result = await session.call_tool(
                "trigger-sampling-request", {"prompt": "hi", "maxTokens": 10}
            )
            assert sampled == 1 and "sampled through latchkey" in str(result.content), result
            await session.subscribe_resource(resources[0].uri)
            await session.call_tool("toggle-subscriber-updates", {})
            uri = await asyncio.wait_for(updated, timeout=12)
            return {
                "ok": True,
                "tools": len(tools),
                "echo": text,
                "resourceRead": True,
                "sampling": True,
                "subscription": uri,
            }


if __name__ == "__main__":
    try:
        summary = asyncio.run(asyncio.wait_for(main(sys.argv[1], sys.argv[2:]), timeout=40))
    except Exception as error:  # noqa: BLE001 - any failure fails the test, with its reason
        print(f"python client: {error!r}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(summary))
