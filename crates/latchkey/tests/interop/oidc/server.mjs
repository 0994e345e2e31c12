// A strict third-party OAuth world for latchkey's interop tests, in one Node process
// on 127.0.0.1:
//   * an authorization server: panva's oidc-provider (open dynamic client registration,
//     PKCE S256 for every client, resource indicators with JWT access tokens whose
//     audience is the MCP resource, rotating refresh tokens, revocation, RFC 9207 `iss`),
//     with an interaction route that logs in "alice" and consents to everything asked,
//     as oidc-provider itself would keep it (offline_access only with prompt=consent);
//   * an MCP resource server: the official TypeScript SDK's McpServer (tools `whoami`
//     and `echo`) over Streamable HTTP at /mcp, guarded by the SDK's requireBearerAuth
//     with a jose verifier against the provider's JWKS, and the SDK's RFC 9728
//     protected-resource metadata naming the provider as its authorization server;
//   * a control API under /__test/ (no auth): GET stats, POST expire, POST revoke-all.
// Startup prints exactly one JSON line on stdout ({"mcp","issuer","control"}); all
// logging goes to stderr and never includes a token. Env: PORT (default 0 = any),
// OIDC_FIXTURE_RFC8414=0 to stop serving /.well-known/oauth-authorization-server.
// OIDC_FIXTURE_DPOP=1 (or =nonce) for DPoP (RFC 9449): the provider's features.dPoP
// binds tokens (`cnf.jkt`) and, with nonce, wants its nonce in token requests; the MCP
// server then takes tokens only with the DPoP scheme and a proof of the bound key,
// checked here with jose (signature by the embedded jwk, htm, htu, iat, jti replay,
// ath, cnf.jkt), and with nonce wants a nonce of its own (RFC 9449 section 9).

// Anything written to stdout besides the contract line would break a reader that
// expects one line, and oidc-provider prints its run-time notices with console.info:
// send the console to stderr (the imports above it run first; they only warn, there).
console.log = console.info = console.debug = (...args) => console.error(...args);

import { createHash, randomBytes, randomUUID } from 'node:crypto';
import http from 'node:http';

import express from 'express';
import * as jose from 'jose';
import Provider, { errors as oidcErrors } from 'oidc-provider';
import * as z from 'zod';

import { InvalidTokenError } from '@modelcontextprotocol/sdk/server/auth/errors.js';
import { requireBearerAuth } from '@modelcontextprotocol/sdk/server/auth/middleware/bearerAuth.js';
import {
  getOAuthProtectedResourceMetadataUrl,
  mcpAuthMetadataRouter,
} from '@modelcontextprotocol/sdk/server/auth/router.js';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js';

const ACCOUNT_ID = 'alice';
const MCP_SCOPE = 'mcp:tools';
const ACCESS_TOKEN_TTL = 3600;
const SERVE_RFC8414 = process.env.OIDC_FIXTURE_RFC8414 !== '0';
const DPOP = ['1', 'nonce'].includes(process.env.OIDC_FIXTURE_DPOP ?? '');
const DPOP_NONCE = process.env.OIDC_FIXTURE_DPOP === 'nonce';

const log = (...args) => console.error('[oidc-fixture]', ...args);

// ---------------------------------------------------------------------------------
// Counters and server-side token state (the control API reads and changes these).

const stats = {
  authorize: 0,
  grants: { authorization_code: 0, refresh_token: 0 },
  refresh_reuse: 0,
  grant_errors: [],
  revocations: 0,
  registrations: 0,
  mcp_ok: 0,
  mcp_401: 0,
  tokens_refused_early: 0,
  dpop_ok: 0,
  dpop_refused: [],
  rs_nonce_challenges: 0,
};

let issueSeq = 0; // bumped for every access token the AS issues
const accessTokenSeq = new Map(); // access token jti -> its issueSeq
let refusedUpTo = 0; // access tokens with issueSeq <= this are refused by the RS
const consumedRefreshTokens = new Set(); // ids (= values) of rotated refresh tokens
const grantIds = new Set(); // every grant saved, for revoke-all

// ---------------------------------------------------------------------------------
// Listen first: the issuer and resource URLs need the port.

const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', resolve);
});
const { port } = server.address();
const ISSUER = `http://127.0.0.1:${port}`;
const MCP_URL = `${ISSUER}/mcp`;
const CONTROL_URL = `${ISSUER}/__test`;
const RESOURCE_METADATA_URL = getOAuthProtectedResourceMetadataUrl(new URL(MCP_URL));

// ---------------------------------------------------------------------------------
// The authorization server.

const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
const signingKey = { ...(await jose.exportJWK(privateKey)), kid: randomUUID(), alg: 'RS256', use: 'sig' };

const provider = new Provider(ISSUER, {
  clients: [],
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  // The scopes a client may name at registration (`scope` metadata) and in requests;
  // mcp:tools is also the resource server's scope below, which puts it in the JWT.
  scopes: ['openid', 'offline_access', MCP_SCOPE],
  claims: { openid: ['sub'] },
  responseTypes: ['code'],
  async findAccount(_ctx, sub) {
    return { accountId: sub, async claims() { return { sub }; } };
  },
  interactions: {
    url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
  },
  features: {
    devInteractions: { enabled: false },
    registration: { enabled: true, initialAccessToken: false },
    revocation: {
      enabled: true,
      // A client revokes its own tokens only (others' are ignored, as RFC 7009 allows).
      allowedPolicy: async (_ctx, client, token) => token.clientId === client.clientId,
    },
    // Without OIDC_FIXTURE_DPOP, oidc-provider's default: DPoP offered at the token
    // endpoint, in front of an MCP server that takes Bearer tokens only.
    ...(DPOP && {
      dPoP: { enabled: true, ...(DPOP_NONCE && { nonceSecret: randomBytes(32), requireNonce: () => true }) },
    }),
    resourceIndicators: {
      enabled: true,
      // No resource asked for: the MCP server; several: left as they are (an error).
      defaultResource: async (_ctx, _client, oneOf) => oneOf ?? MCP_URL,
      // A token request without `resource` gets the resource of the grant.
      useGrantedResource: async () => true,
      async getResourceServerInfo(_ctx, resourceIndicator) {
        if (resourceIndicator !== MCP_URL) {
          throw new oidcErrors.InvalidTarget(`unknown resource ${resourceIndicator}`);
        }
        return {
          scope: MCP_SCOPE,
          audience: MCP_URL,
          accessTokenTTL: ACCESS_TOKEN_TTL,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  pkce: { required: () => true }, // oidc-provider 9 supports S256 only
  rotateRefreshToken: true,
  ttl: {
    AccessToken: ACCESS_TOKEN_TTL,
    AuthorizationCode: 60,
    Grant: 86400,
    IdToken: 3600,
    Interaction: 600,
    RefreshToken: 86400,
    Session: 86400,
  },
});

const AUTH_PATH = provider.pathFor('authorization');
const REVOCATION_PATH = provider.pathFor('revocation');

// Count browser opens of the authorization endpoint (not the /auth/:uid resumes) and
// answered revocation requests (RFC 7009: 200 whether or not the token was known).
provider.use(async (ctx, next) => {
  if (ctx.method === 'GET' && ctx.path === AUTH_PATH) stats.authorize += 1;
  await next();
  if (ctx.method === 'POST' && ctx.path === REVOCATION_PATH && ctx.status === 200) {
    stats.revocations += 1;
    log('revocation answered 200');
  }
});

const paramOf = (ctx, name) => ctx?.oidc?.params?.[name] ?? ctx?.oidc?.body?.[name];

provider.on('registration_create.success', (_ctx, client) => {
  stats.registrations += 1;
  log(`registered client ${client.clientId} (${client.applicationType}, ${client.tokenEndpointAuthMethod})`);
});
provider.on('grant.success', (ctx) => {
  const grantType = paramOf(ctx, 'grant_type');
  stats.grants[grantType] = (stats.grants[grantType] ?? 0) + 1;
  log(`grant.success ${grantType} client=${ctx.oidc.client?.clientId}`);
});
provider.on('grant.error', (ctx, err) => {
  const grantType = paramOf(ctx, 'grant_type') ?? null;
  stats.grant_errors.push({ grant_type: grantType, error: err.error });
  // Reuse: a refresh token that rotation already consumed is presented again, whatever
  // error oidc-provider answers it with (it revokes the whole grant on first reuse).
  if (grantType === 'refresh_token' && consumedRefreshTokens.has(paramOf(ctx, 'refresh_token'))) {
    stats.refresh_reuse += 1;
    log('refresh token reuse detected');
  }
  log(`grant.error ${grantType} ${err.error}: ${err.error_detail ?? err.error_description ?? ''}`);
});
provider.on('refresh_token.consumed', (token) => consumedRefreshTokens.add(token.jti));
provider.on('access_token.issued', (token) => accessTokenSeq.set(token.jti, ++issueSeq));
provider.on('grant.saved', (grant) => grantIds.add(grant.jti));
provider.on('grant.revoked', (_ctx, grantId) => {
  grantIds.delete(grantId);
  log(`grant ${grantId} revoked`);
});
provider.on('authorization.error', (_ctx, err) => log(`authorization.error ${err.error}: ${err.error_detail ?? err.error_description ?? ''}`));
provider.on('server_error', (_ctx, err) => log('oidc-provider server_error', err));

// Revoke every grant at the AS and refuse every access token issued so far at the RS.
async function revokeAll() {
  const ids = [...grantIds];
  for (const grantId of ids) {
    await Promise.all([provider.AccessToken, provider.RefreshToken, provider.AuthorizationCode]
      .map((model) => model.revokeByGrantId(grantId)));
    await provider.Grant.adapter.destroy(grantId);
    grantIds.delete(grantId);
  }
  refusedUpTo = issueSeq;
  return ids.length;
}

// ---------------------------------------------------------------------------------
// The resource server's token verifier: jose against the provider's JWKS, then the
// server-side cut-off that /__test/expire and /__test/revoke-all move.

const JWKS = jose.createRemoteJWKSet(new URL(provider.pathFor('jwks'), ISSUER));

const verifier = {
  async verifyAccessToken(token) {
    let payload;
    try {
      ({ payload } = await jose.jwtVerify(token, JWKS, {
        issuer: ISSUER,
        audience: MCP_URL,
        typ: 'at+jwt',
        algorithms: ['RS256'],
        requiredClaims: ['exp', 'iat', 'jti', 'sub'],
      }));
    } catch (err) {
      throw new InvalidTokenError(err?.code === 'ERR_JWT_EXPIRED' ? 'Token has expired' : 'Token verification failed');
    }
    const aud = Array.isArray(payload.aud) && payload.aud.length === 1 ? payload.aud[0] : payload.aud;
    if (aud !== MCP_URL) throw new InvalidTokenError('Token audience is not this resource');
    const seq = accessTokenSeq.get(payload.jti);
    if (seq === undefined || seq <= refusedUpTo) {
      stats.tokens_refused_early += 1;
      throw new InvalidTokenError('Token was expired or revoked by the server');
    }
    return {
      token,
      clientId: payload.client_id,
      scopes: typeof payload.scope === 'string' ? payload.scope.split(' ').filter(Boolean) : [],
      expiresAt: payload.exp,
      resource: new URL(MCP_URL),
      extra: { sub: payload.sub, jkt: payload.cnf?.jkt },
    };
  },
};

// ---------------------------------------------------------------------------------
// The MCP server: one McpServer per Streamable HTTP session.

function buildMcpServer() {
  const mcp = new McpServer({ name: 'latchkey-oidc-fixture', version: '1.0.0' });
  mcp.registerTool('whoami', {
    description: "Tells the subject (sub) of the access token this request carried",
  }, async (extra) => ({
    content: [{
      type: 'text',
      text: JSON.stringify({ sub: extra.authInfo?.extra?.sub ?? null, client_id: extra.authInfo?.clientId ?? null }),
    }],
  }));
  mcp.registerTool('echo', {
    description: 'Echoes its text',
    inputSchema: { text: z.string() },
  }, async ({ text }) => ({ content: [{ type: 'text', text }] }));
  return mcp;
}

const transports = new Map(); // session id -> StreamableHTTPServerTransport

async function handleMcp(req, res) {
  const sessionId = req.headers['mcp-session-id'];
  let transport = sessionId ? transports.get(sessionId) : undefined;
  if (!transport) {
    if (sessionId) {
      res.status(404).json({ jsonrpc: '2.0', error: { code: -32001, message: 'Session not found' }, id: null });
      return;
    }
    if (req.method !== 'POST' || !isInitializeRequest(req.body)) {
      res.status(400).json({ jsonrpc: '2.0', error: { code: -32000, message: 'Bad Request: no valid session ID provided' }, id: null });
      return;
    }
    const created = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      onsessioninitialized: (id) => transports.set(id, created),
    });
    created.onclose = () => {
      if (created.sessionId) transports.delete(created.sessionId);
    };
    await buildMcpServer().connect(created);
    transport = created;
  }
  await transport.handleRequest(req, res, req.body);
}

// ---------------------------------------------------------------------------------
// The HTTP routes. No body parser runs before oidc-provider: it reads its own bodies.

const app = express();
app.disable('x-powered-by');

const control = express.Router();
control.get('/stats', (_req, res) => res.json(stats));
control.post('/expire', (_req, res) => {
  refusedUpTo = issueSeq;
  log(`expire: access tokens up to #${refusedUpTo} are refused from now on`);
  res.json({ ok: true });
});
control.post('/revoke-all', async (_req, res, next) => {
  try {
    const grants = await revokeAll();
    log(`revoke-all: ${grants} grant(s) revoked, access tokens up to #${refusedUpTo} refused`);
    res.json({ ok: true, grants });
  } catch (err) {
    next(err);
  }
});
app.use('/__test', control);

// RFC 9728 metadata for /mcp (and, unless disabled, an RFC 8414 copy of the provider's
// discovery document); the router is made once that document has been fetched.
let metadataRouter;
if (!SERVE_RFC8414) {
  app.use('/.well-known/oauth-authorization-server', (_req, res) => res.status(404).json({ error: 'not_found' }));
}
app.use((req, res, next) => (metadataRouter ? metadataRouter(req, res, next) : next()));

// The person who logs in as alice and approves everything asked, with no page shown.
app.get('/interaction/:uid', async (req, res) => {
  try {
    const details = await provider.interactionDetails(req, res);
    const { prompt, params, session, grantId } = details;
    let result;
    if (prompt.name === 'login') {
      result = { login: { accountId: ACCOUNT_ID } };
    } else if (prompt.name === 'consent') {
      const grant = grantId
        ? await provider.Grant.find(grantId)
        : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
      const { missingOIDCScope, missingOIDCClaims, missingResourceScopes } = prompt.details;
      // params.scope is as oidc-provider kept it: offline_access is already gone unless
      // the request had prompt=consent and the client may use refresh tokens.
      const kept = new Set(String(params.scope ?? '').split(' '));
      const oidcScopes = (missingOIDCScope ?? []).filter((s) => s !== 'offline_access' || kept.has(s));
      if (oidcScopes.length) grant.addOIDCScope(oidcScopes.join(' '));
      if (missingOIDCClaims?.length) grant.addOIDCClaims(missingOIDCClaims);
      for (const [indicator, scopes] of Object.entries(missingResourceScopes ?? {})) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
      result = { consent: { grantId: await grant.save() } };
    } else {
      result = { error: 'access_denied', error_description: `the fixture cannot answer prompt ${prompt.name}` };
    }
    log(`interaction ${prompt.name} for client ${params.client_id} done`);
    await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: true });
  } catch (err) {
    log('interaction failed:', err?.message ?? err);
    res.status(500).type('text/plain').send(`interaction failed: ${err?.message ?? err}`);
  }
});

const countMcp = (req, res, next) => {
  res.on('finish', () => {
    if (res.statusCode === 401) stats.mcp_401 += 1;
  });
  next();
};
const bearer = requireBearerAuth({
  verifier,
  requiredScopes: [MCP_SCOPE],
  resourceMetadataUrl: RESOURCE_METADATA_URL,
  expectedResource: new URL(MCP_URL),
});
// RFC 9449 §7.1 at the MCP server, in place of the SDK's Bearer middleware.
const seenJtis = new Set();
const rsNonce = randomBytes(16).toString('base64url');
const DPOP_CHALLENGE = `DPoP algs="ES256 EdDSA", resource_metadata="${RESOURCE_METADATA_URL}"`;
const dpopAuth = async (req, res, next) => {
  // Counted: a refusal of the proof or the binding (not of a token the control API
  // expired, and not a nonce asked for).
  const refuse = (error, why, { nonce, counted = true } = {}) => {
    if (nonce) res.set('DPoP-Nonce', nonce);
    if (counted && !nonce) {
      stats.dpop_refused.push(why);
      log(`DPoP refused: ${why}`);
    }
    res.status(401)
      .set('WWW-Authenticate', `${DPOP_CHALLENGE}, error="${error}", error_description="${why}"`)
      .json({ error, error_description: why });
  };
  const [scheme, token] = (req.headers.authorization ?? '').split(' ');
  if (!token) {
    res.status(401).set('WWW-Authenticate', DPOP_CHALLENGE).json({ error: 'invalid_token' });
    return;
  }
  if (scheme !== 'DPoP') return refuse('invalid_token', 'the token must come with the DPoP scheme');
  let info;
  try {
    info = await verifier.verifyAccessToken(token);
  } catch (err) {
    return refuse('invalid_token', err.message, { counted: false });
  }
  const proof = req.headers.dpop;
  if (typeof proof !== 'string' || proof.includes(',')) return refuse('invalid_dpop_proof', 'not one DPoP proof');
  let payload;
  let protectedHeader;
  try {
    ({ payload, protectedHeader } = await jose.jwtVerify(proof, jose.EmbeddedJWK, {
      typ: 'dpop+jwt',
      algorithms: ['ES256', 'EdDSA', 'Ed25519'],
    }));
  } catch {
    return refuse('invalid_dpop_proof', 'the proof does not verify with its jwk');
  }
  const ath = createHash('sha256').update(token).digest('base64url');
  const jkt = await jose.calculateJwkThumbprint(protectedHeader.jwk, 'sha256');
  if (payload.htm !== req.method) return refuse('invalid_dpop_proof', 'htm');
  if (payload.htu !== MCP_URL) return refuse('invalid_dpop_proof', 'htu');
  if (typeof payload.iat !== 'number' || Math.abs(Date.now() / 1000 - payload.iat) > 60) return refuse('invalid_dpop_proof', 'iat');
  if (typeof payload.jti !== 'string' || seenJtis.has(payload.jti)) return refuse('invalid_dpop_proof', 'jti replayed');
  seenJtis.add(payload.jti);
  if (payload.ath !== ath) return refuse('invalid_dpop_proof', 'ath');
  if (!info.extra.jkt || info.extra.jkt !== jkt) return refuse('invalid_token', 'the token is not bound to the proof key (cnf.jkt)');
  if (DPOP_NONCE && payload.nonce !== rsNonce) {
    stats.rs_nonce_challenges += 1;
    return refuse('use_dpop_nonce', 'Resource server requires nonce in DPoP proof', { nonce: rsNonce });
  }
  stats.dpop_ok += 1;
  req.auth = info;
  next();
};
const passed = (_req, _res, next) => {
  stats.mcp_ok += 1;
  next();
};
app.all('/mcp', countMcp, DPOP ? dpopAuth : bearer, passed, express.json(), async (req, res) => {
  try {
    await handleMcp(req, res);
  } catch (err) {
    log('mcp request failed:', err?.message ?? err);
    if (!res.headersSent) res.status(500).json({ jsonrpc: '2.0', error: { code: -32603, message: 'Internal error' }, id: null });
  }
});

app.use(provider.callback());

server.on('request', app);

const discoveryResponse = await fetch(`${ISSUER}/.well-known/openid-configuration`);
if (!discoveryResponse.ok) throw new Error(`own discovery answered ${discoveryResponse.status}`);
metadataRouter = mcpAuthMetadataRouter({
  oauthMetadata: await discoveryResponse.json(),
  resourceServerUrl: new URL(MCP_URL),
  scopesSupported: [MCP_SCOPE],
  resourceName: 'latchkey oidc fixture MCP server',
});

process.stdout.write(`${JSON.stringify({ mcp: MCP_URL, issuer: ISSUER, control: CONTROL_URL })}\n`);
log(`listening on ${ISSUER}`);

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    server.closeAllConnections?.();
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 500).unref();
  });
}
