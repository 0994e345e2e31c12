#!/usr/bin/env python3
"""Writes the seed corpus in fuzz/corpus/<target>/ (committed): realistic inputs for
each target, written by hand. Run again after editing; libFuzzer's own finds stay in
a working corpus outside the clone (scripts/fuzz)."""
import json, pathlib

root = pathlib.Path(__file__).resolve().parent / "corpus"

def put(target, name, data):
    d = root / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / name).write_bytes(data)

# WWW-Authenticate: the MCP authorization spec's and RFC 6750's examples, and what
# real servers send (several challenges, bare URLs, several fields: one per line).
for name, value in {
    "mcp-spec": 'Bearer resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource"',
    "mcp-scope": 'Bearer error="insufficient_scope", scope="files:read files:write user:profile:write", resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource", error_description="Additional file write permission required"',
    "rfc6750-realm": 'Bearer realm="example"',
    "rfc6750-invalid-token": 'Bearer realm="example", error="invalid_token", error_description="The access token expired"',
    "bare-url": "Bearer error=invalid_token,resource_metadata=https://api.example.com/.well-known/oauth-protected-resource/mcp",
    "several": 'Basic realm="a, b", Negotiate YWJjZA==, Bearer realm="mcp", error="invalid_token", error_description="The \\"token\\" expired"',
    "fields": 'Basic realm="legacy"\nDPoP algs="ES256 PS256"\nbearer scope="a b a"',
    "escapes": 'Bearer scope="x\\\\y", realm=\'single\', error=,, ,=x, "stray',
}.items():
    put("www_authenticate", name, value)

# Protected resource metadata (RFC 9728): the server URL, a newline, the document.
prm = {
    "mcp-spec": ("https://mcp.example.com/mcp", {"resource": "https://mcp.example.com/mcp", "authorization_servers": ["https://auth.example.com"], "scopes_supported": ["files:read", "files:write"], "bearer_methods_supported": ["header"]}),
    "github": ("https://api.githubcopilot.com/mcp/", {"resource_name": "GitHub MCP Server", "resource": "https://api.githubcopilot.com/mcp", "authorization_servers": ["https://github.com/login/oauth"], "bearer_methods_supported": ["header"], "scopes_supported": ["gist", "notifications", "public_repo", "repo", "repo:status", "repo_deployment", "user", "user:email", "user:follow", "read:gpg_key", "read:org", "project"]}),
    "root-resource": ("https://mcp.linear.app/sse?x=1", {"resource": "https://mcp.linear.app/", "authorization_servers": ["https://mcp.linear.app"]}),
    "loopback": ("http://127.0.0.1:8080/mcp", {"resource": "http://127.0.0.1:8080", "authorization_servers": ["http://localhost:8080/realms/mcp"]}),
    "other-origin": ("https://mcp.example.com/a/b", {"resource": "https://evil.example/a", "authorization_servers": []}),
    "prefix-trap": ("https://mcp.example.com/mcpx", {"resource": "https://mcp.example.com/mcp", "authorization_servers": ["https://auth.example.com/tenant/"]}),
}
for name, (server, doc) in prm.items():
    put("resource_metadata", name, server + "\n" + json.dumps(doc, indent=1))

# Authorization server metadata: the issuer, a newline, the document. Shapes of
# well-known providers' documents, trimmed.
asm = {
    "keycloak": ("http://localhost:8080/realms/mcp", {"issuer": "http://localhost:8080/realms/mcp", "authorization_endpoint": "http://localhost:8080/realms/mcp/protocol/openid-connect/auth", "token_endpoint": "http://localhost:8080/realms/mcp/protocol/openid-connect/token", "registration_endpoint": "http://localhost:8080/realms/mcp/clients-registrations/openid-connect", "device_authorization_endpoint": "http://localhost:8080/realms/mcp/protocol/openid-connect/auth/device", "revocation_endpoint": "http://localhost:8080/realms/mcp/protocol/openid-connect/revoke", "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials", "urn:ietf:params:oauth:grant-type:device_code"], "code_challenge_methods_supported": ["plain", "S256"], "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "client_secret_post"], "id_token_signing_alg_values_supported": ["RS256", "ES256"], "prompt_values_supported": ["none", "login", "consent", "create"], "authorization_response_iss_parameter_supported": True}),
    "google": ("https://accounts.google.com", {"issuer": "https://accounts.google.com", "authorization_endpoint": "https://accounts.google.com/o/oauth2/v2/auth", "device_authorization_endpoint": "https://oauth2.googleapis.com/device/code", "token_endpoint": "https://oauth2.googleapis.com/token", "revocation_endpoint": "https://oauth2.googleapis.com/revoke", "scopes_supported": ["openid", "email", "profile"], "code_challenge_methods_supported": ["plain", "S256"], "id_token_signing_alg_values_supported": ["RS256"], "grant_types_supported": ["authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:device_code", "urn:ietf:params:oauth:grant-type:jwt-bearer"]}),
    "github": ("https://github.com/login/oauth", {"issuer": "https://github.com/login/oauth", "authorization_endpoint": "https://github.com/login/oauth/authorize", "token_endpoint": "https://github.com/login/oauth/access_token", "code_challenge_methods_supported": ["S256"], "grant_types_supported": ["authorization_code", "refresh_token"]}),
    "entra": ("https://login.microsoftonline.com/common/v2.0", {"issuer": "https://login.microsoftonline.com/common/v2.0", "token_endpoint": "https://login.microsoftonline.com/common/oauth2/v2.0/token", "authorization_endpoint": "https://login.microsoftonline.com/common/oauth2/v2.0/authorize", "device_authorization_endpoint": "https://login.microsoftonline.com/common/oauth2/v2.0/devicecode", "code_challenge_methods_supported": ["plain", "S256"], "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"], "id_token_signing_alg_values_supported": ["RS256"]}),
    "cimd": ("https://auth.example.com", {"issuer": "https://auth.example.com", "authorization_endpoint": "https://auth.example.com/authorize", "token_endpoint": "https://auth.example.com/token", "registration_endpoint": "https://auth.example.com/register", "client_id_metadata_document_supported": True, "code_challenge_methods_supported": ["S256"]}),
    "insecure": ("https://auth.example.com", {"issuer": "https://auth.example.com", "token_endpoint": "http://auth.example.com/token", "authorization_endpoint": "javascript:alert(1)", "registration_endpoint": "http://[::1]:9/r", "revocation_endpoint": "http://127.1.2.3/revoke"}),
}
for name, (issuer, doc) in asm.items():
    put("as_metadata", name, issuer + "\n" + json.dumps(doc, indent=1))

# Token responses: byte 0 is the mode (0 tokens, 1 tokens with an old refresh token,
# 2 an OAuth error with 400, 3 a device authorization response).
for name, (mode, doc) in {
    "bearer": (0, {"access_token": "2YotnFZFEjr1zCsicMWpAA", "token_type": "Bearer", "expires_in": 3600, "refresh_token": "tGzv3JOkF0XG5Qx2TlKWIA", "scope": "files:read files:write"}),
    "string-expiry": (1, {"access_token": "ya29.a0Af-_x", "token_type": "bearer", "expires_in": " 3599 ", "id_token": "eyJ..."}),
    "not-bearer": (0, {"access_token": "tok$%secret", "token_type": "DPoP", "expires_in": 1e3}),
    "huge-expiry": (1, {"access_token": "x", "token_type": "BEARER", "expires_in": 18446744073709551615, "scope": ""}),
    "invalid-grant": (2, {"error": "invalid_grant", "error_description": "Refresh token expired"}),
    "invalid-client": (6, {"error": "invalid_client"}),
    "other-error": (10, {"error": "slow_down", "error_description": None, "error_uri": "https://x"}),
    "device": (3, {"device_code": "GmRhmhcxhwAzkoEqiMEg_DnyEysNkuNhszIySk9eS", "user_code": "WDJB-MJHT", "verification_uri": "https://example.com/device", "verification_uri_complete": "https://example.com/device?user_code=WDJB-MJHT", "expires_in": 1800, "interval": 5}),
    "device-hostile": (3, {"device_code": "d", "user_code": "\u001b[2J\u0007CODE", "verification_url": "http://example.com/\u001b", "expires_in": 18446744073709551615, "interval": 0}),
}.items():
    put("token_response", name, bytes([mode]) + json.dumps(doc).encode())
put("token_response", "truncated", b"\x00{\"access_token\": \"abc-def-ghi\", \"token_type\": \"Bear")

# SSE streams: byte 0's low three bits count the chunk lengths that follow.
sse = {
    "lf": b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1}\n\n: keep-alive\n\ndata: a\ndata: b\nid: 7\nretry: 3000\n\n",
    "crlf": b"event: endpoint\r\ndata: /messages?sessionId=abc\r\n\r\nevent: message\r\ndata: {}\r\n\r\n",
    "cr": b"event: endpoint\rdata: /messages?sessionId=abc\r\revent: message\rdata: {}\r\r",
    "mixed": b"data: a\r\n\ndata: b\n\r\ndata: c\r\n\rid\0x: 1\ndata\n\n\r\r\n",
    "fields": b"data:no-space\ndata:  two\nevent\nid: \nretry: +5\nretry: x\n:comment\nunknown: 1\n\n",
}
for name, stream in sse.items():
    put("sse_blocks", name, b"\x00" + stream)
# Inputs that crashed the target once, each for a bug fixed in sse.rs.
put("sse_blocks", "crash-crlf-then-lf", bytes.fromhex("01f20070d10d0a0a703f2c"))
put("sse_blocks", "crash-crlf-then-cr", b"\x00data: a\r\n\rx")
put("sse_blocks", "crash-empty-event", b"\x00event:\ndata: {}\n\nevent\ndata: x\n\n")
put("sse_blocks", "chunked-crlf", b"\x03\x0f\x01\x10" + sse["crlf"])
put("sse_blocks", "chunked-bytes", b"\x07\x01\x01\x01\x01\x01\x01\x01" + sse["mixed"])

# The endpoint rewriter: bits 3-4 of byte 0 choose the stream's URL (0
# https://mcp.example.com/sse, 1 http://127.0.0.1:8931/legacy/sse?key=1, 2
# https://mcp.example.com:8443/a/b/, 3 http://[::1]/sse); all of bits 5-7 pad the
# stream past the 64 KiB scan limit.
for name, (flags, stream) in {
    "relative": (0x00, b"event: endpoint\ndata: /messages?sessionId=1\n\n"),
    "after-comment": (0x02 | 0x08, b"\x05\x12: hi\r\n\r\nevent: endp" + b"oint\r\ndata: messages?sessionId=1\r\n\r\nevent: message\r\ndata: {}\r\n\r\n"),
    "absolute": (0x10, b"event: endpoint\ndata: https://mcp.example.com:8443/msg\n\n"),
    "other-origin": (0x00, b"event: endpoint\ndata: https://evil.example/steal\n\n"),
    "scheme-relative": (0x18, b"event: endpoint\rdata: //evil.example/x\r\r"),
    "not-first": (0x00, b"data: {\"jsonrpc\":\"2.0\"}\n\nevent: endpoint\ndata: /m\n\n"),
    "padded": (0xe1, b"\x01\nevent: endpoint\ndata: /m\n\n"),
}.items():
    put("endpoint_rewriter", name, bytes([flags]) + stream)

# Config: the project's example configs, and a few broken ones.
cfg = pathlib.Path(__file__).resolve().parent.parent / "config"
for path in sorted(cfg.glob("*.toml")):
    put("config", path.stem, path.read_bytes())
put("config", "broken", b'listen = "0.0.0.0:80"\n[servers."bad name"]\nurl = "ftp://x.example/?token=abcdef123"\nheaders = { Host = "x", "X-Key" = "${NOPE}", "X-A" = "${AKEY}", "X-N" = "${NKEY}" }\n[servers.ok.oauth]\nclient_secret_env = "ASECRET"\ngrant = "client_credentials"\nprivate_key_env = "BKEY"\nissuer = "http://auth.example.com/?q=1"\n[servers.ok]\nurl = "https://user:pw@x.example/mcp#f"\n')
put("config", "syntax", b'listen = \n[servers.a\nurl = "https://x.example/mcp?api_key=s3cr3tvalue"\nstore = "tape"\n\xff\n')
put("config", "substitution", b"\x00cost $5 ${literal} $${\x00AKEY\x00 and $$${ more")
