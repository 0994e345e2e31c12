"""Third-party MCP server for latchkey's interop tests: FastMCP 4 with its own
built-in OAuth authorization server (InMemoryOAuthProvider: dynamic client
registration, PKCE S256, rotating refresh tokens, revocation), used as a
FastMCP user would, plus a small unauthenticated test control API.

Run with the fixture's venv:  .venv/bin/python server.py
It binds 127.0.0.1 on a free port, then prints one JSON line to stdout:
  {"mcp": "http://127.0.0.1:P/mcp", "issuer": "<AS metadata issuer>",
   "control": "http://127.0.0.1:P/__test"}
Everything else (logs) goes to stderr; tokens are never logged.

Control API (no auth):
  GET  /__test/stats       counters, see Stats.snapshot()
  POST /__test/expire      every access token issued so far is refused from now
                           on (server-side expiry); refresh tokens stay valid
  POST /__test/revoke-all  every access and refresh token is revoked
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
from urllib.parse import parse_qs

import httpx2
import uvicorn
from fastmcp import FastMCP
from fastmcp.server.auth.providers.in_memory import InMemoryOAuthProvider
from fastmcp.server.dependencies import get_access_token
from mcp.server.auth.settings import ClientRegistrationOptions, RevocationOptions
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse

log = logging.getLogger("fastmcp-fixture")

MCP_PATH = "/mcp"
SCOPE = "mcp"


class Stats:
    """Server-side counters served by GET /__test/stats."""

    def __init__(self) -> None:
        self.authorize = 0
        self.grants = {"authorization_code": 0, "refresh_token": 0}
        self.refresh_reuse = 0
        self.grant_errors: list[dict[str, str]] = []
        self.revocations = 0
        self.registrations = 0
        self.mcp_ok = 0
        self.mcp_401 = 0
        self.mcp_403 = 0

    def snapshot(self) -> dict:
        return {
            "authorize": self.authorize,
            "grants": dict(self.grants),
            "refresh_reuse": self.refresh_reuse,
            "grant_errors": list(self.grant_errors),
            "revocations": self.revocations,
            "registrations": self.registrations,
            "mcp_ok": self.mcp_ok,
            "mcp_401": self.mcp_401,
            "mcp_403": self.mcp_403,
        }


class FixtureProvider(InMemoryOAuthProvider):
    """FastMCP's in-memory OAuth AS, unchanged in behaviour, with counting
    wrappers and the two test switches (server-side expiry, revoke all)."""

    def __init__(self, stats: Stats, **kwargs) -> None:
        super().__init__(**kwargs)
        self.stats = stats
        # Access tokens refused by /__test/expire although not yet expired.
        self._force_expired: set[str] = set()
        # Refresh tokens that a refresh grant has rotated away.
        self._rotated: set[str] = set()

    async def register_client(self, client_info) -> None:
        await super().register_client(client_info)
        self.stats.registrations += 1

    async def exchange_refresh_token(self, client, refresh_token, scopes):
        tokens = await super().exchange_refresh_token(client, refresh_token, scopes)
        if tokens.refresh_token != refresh_token.token:
            self._rotated.add(refresh_token.token)
        return tokens

    async def load_access_token(self, token: str):
        if token in self._force_expired:
            return None
        return await super().load_access_token(token)

    async def revoke_token(self, token) -> None:
        await super().revoke_token(token)
        self.stats.revocations += 1

    def was_rotated(self, refresh_token: str) -> bool:
        return refresh_token in self._rotated

    def expire_access_tokens(self) -> int:
        self._force_expired.update(self.access_tokens)
        return len(self.access_tokens)

    async def revoke_everything(self) -> dict:
        counts = {"access": len(self.access_tokens), "refresh": len(self.refresh_tokens)}
        # The provider's own revocation, but not counted as a client revocation.
        for tok in list(self.access_tokens.values()) + list(self.refresh_tokens.values()):
            await InMemoryOAuthProvider.revoke_token(self, tok)
        return counts


class StatsMiddleware:
    """ASGI middleware that counts OAuth and MCP traffic by path and status,
    and writes a one-line access log (no query strings, no bodies) to stderr."""

    def __init__(self, app, stats: Stats, provider: FixtureProvider) -> None:
        self.app = app
        self.stats = stats
        self.provider = provider

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        method = scope["method"]
        is_token = path == "/token" and method == "POST"
        req_body: list[bytes] = []
        resp_body: list[bytes] = []
        status = 0

        async def recv():
            msg = await receive()
            if is_token and msg["type"] == "http.request":
                req_body.append(msg.get("body", b""))
                if not msg.get("more_body", False):
                    # Judged before the grant runs, which would rotate the token.
                    self._check_reuse(b"".join(req_body))
            return msg

        async def snd(msg):
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
                log.info("%s %s -> %d", method, path, status)
                if path == "/authorize":
                    self.stats.authorize += 1
                elif path == MCP_PATH:
                    if status == 401:
                        self.stats.mcp_401 += 1
                    elif status == 403:
                        self.stats.mcp_403 += 1
                    else:
                        self.stats.mcp_ok += 1
            elif is_token and msg["type"] == "http.response.body":
                resp_body.append(msg.get("body", b""))
            await send(msg)

        await self.app(scope, recv, snd)
        if is_token:
            self._count_token(b"".join(req_body), status, b"".join(resp_body))

    @staticmethod
    def _form(body: bytes) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}

    def _check_reuse(self, body: bytes) -> None:
        form = self._form(body)
        if form.get("grant_type") == "refresh_token" and self.provider.was_rotated(
            form.get("refresh_token", "")
        ):
            self.stats.refresh_reuse += 1

    def _count_token(self, body: bytes, status: int, response: bytes) -> None:
        grant_type = self._form(body).get("grant_type", "")
        if status == 200:
            self.stats.grants[grant_type] = self.stats.grants.get(grant_type, 0) + 1
            return
        try:
            error = json.loads(response).get("error", "")
        except ValueError:
            error = f"http_{status}"
        self.stats.grant_errors.append({"grant_type": grant_type, "error": error})


def build(base_url: str) -> tuple[FastMCP, FixtureProvider, Stats]:
    stats = Stats()
    provider = FixtureProvider(
        stats,
        base_url=base_url,
        client_registration_options=ClientRegistrationOptions(
            enabled=True, valid_scopes=[SCOPE], default_scopes=[SCOPE]
        ),
        revocation_options=RevocationOptions(enabled=True),
        required_scopes=[SCOPE],
    )
    mcp = FastMCP("latchkey-fastmcp-fixture", auth=provider)

    @mcp.tool
    def whoami() -> str:
        """Who the bearer token belongs to."""
        tok = get_access_token()
        if tok is None:
            return "anonymous"
        return (
            f"client_id={tok.client_id} subject={tok.subject} "
            f"scopes={' '.join(tok.scopes)}"
        )

    @mcp.tool
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @mcp.custom_route("/__test/stats", methods=["GET"])
    async def test_stats(request: Request) -> JSONResponse:
        return JSONResponse(stats.snapshot())

    @mcp.custom_route("/__test/expire", methods=["POST"])
    async def test_expire(request: Request) -> JSONResponse:
        n = provider.expire_access_tokens()
        log.info("test: %d access tokens expired server-side", n)
        return JSONResponse({"expired_access_tokens": n})

    @mcp.custom_route("/__test/revoke-all", methods=["POST"])
    async def test_revoke_all(request: Request) -> JSONResponse:
        counts = await provider.revoke_everything()
        log.info("test: revoked %s", counts)
        return JSONResponse({"revoked": counts})

    return mcp, provider, stats


async def main() -> None:
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="fastmcp-fixture %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}"

    mcp, provider, stats = build(base)
    app = mcp.http_app(
        path=MCP_PATH,
        transport="http",
        middleware=[Middleware(StatsMiddleware, stats=stats, provider=provider)],
    )
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if serving.done():
            serving.result()
            raise SystemExit("uvicorn stopped before it started")
        await asyncio.sleep(0.02)

    # Announce the issuer exactly as FastMCP serves it in its AS metadata.
    async with httpx2.AsyncClient() as client:
        meta = (await client.get(f"{base}/.well-known/oauth-authorization-server")).json()
    print(
        json.dumps(
            {"mcp": f"{base}{MCP_PATH}", "issuer": meta["issuer"], "control": f"{base}/__test"}
        ),
        flush=True,
    )
    await serving


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
