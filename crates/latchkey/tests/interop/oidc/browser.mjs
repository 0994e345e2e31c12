// The person at the browser, scripted, for the oidc fixture (server.mjs): started as
// `$BROWSER` (`node browser.mjs <authorization-url>`), it loads the authorization URL
// and follows every redirect by hand with a cookie jar (oidc-provider's interaction
// needs its cookies), through the fixture's auto-login and auto-consent, until the
// authorization server sends it to the client's redirect URI (the first redirect that
// leaves the authorization server's origin, e.g. http://127.0.0.1:<port>/callback?...).
// It requests that URL once, as a browser would, and exits 0; on any other outcome it
// exits 1 with the reason on stderr. Loopback addresses only.

const MAX_HOPS = 20;
const TIMEOUT_MS = 15000;
const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]']);

const fail = (reason) => {
  console.error(`browser.mjs: ${reason}`);
  process.exit(1);
};

const start = process.argv[2];
if (!start) fail('usage: node browser.mjs <authorization-url>');
let url;
try {
  url = new URL(start);
} catch {
  fail(`not a URL: ${start}`);
}
const asOrigin = url.origin;

// A small RFC 6265 jar: host-only cookies keyed by host, path and name.
const jar = new Map();

function storeCookies(response, requestUrl) {
  for (const line of response.headers.getSetCookie()) {
    const [pair, ...attributes] = line.split(';');
    const eq = pair.indexOf('=');
    if (eq <= 0) continue;
    const name = pair.slice(0, eq).trim();
    const value = pair.slice(eq + 1).trim();
    let path = requestUrl.pathname.replace(/\/[^/]*$/, '') || '/';
    let expired = false;
    for (const attribute of attributes) {
      const [key, ...rest] = attribute.split('=');
      const val = rest.join('=').trim();
      switch (key.trim().toLowerCase()) {
        case 'path':
          if (val.startsWith('/')) path = val;
          break;
        case 'max-age':
          if (Number(val) <= 0) expired = true;
          break;
        case 'expires':
          if (Date.parse(val) <= Date.now()) expired = true;
          break;
        default:
          break;
      }
    }
    const key = `${requestUrl.hostname}\n${path}\n${name}`;
    if (expired) jar.delete(key);
    else jar.set(key, { host: requestUrl.hostname, path, name, value });
  }
}

function cookieHeader(requestUrl) {
  const matches = [...jar.values()].filter((c) => c.host === requestUrl.hostname
    && (requestUrl.pathname === c.path
      || requestUrl.pathname.startsWith(c.path.endsWith('/') ? c.path : `${c.path}/`)));
  matches.sort((a, b) => b.path.length - a.path.length);
  return matches.map((c) => `${c.name}=${c.value}`).join('; ');
}

async function load(target) {
  if (!['http:', 'https:'].includes(target.protocol) || !LOOPBACK.has(target.hostname)) {
    fail(`refusing to load a non-loopback URL: ${target.origin}`);
  }
  const headers = {
    accept: 'text/html,application/xhtml+xml;q=0.9,*/*;q=0.8',
    'user-agent': 'latchkey-interop-browser/1',
  };
  const cookie = cookieHeader(target);
  if (cookie) headers.cookie = cookie;
  try {
    return await fetch(target, { redirect: 'manual', headers, signal: AbortSignal.timeout(TIMEOUT_MS) });
  } catch (err) {
    fail(`GET ${target.origin}${target.pathname} failed: ${err?.cause?.code ?? err?.message ?? err}`);
  }
  return undefined;
}

const describe = (u) => `${u.origin}${u.pathname}`; // never the query: it may hold a code

for (let hop = 0; hop < MAX_HOPS; hop += 1) {
  const response = await load(url);
  storeCookies(response, url);
  const location = response.headers.get('location');
  if (response.status >= 300 && response.status < 400 && location) {
    await response.arrayBuffer();
    const next = new URL(location, url);
    if (next.origin !== asOrigin) {
      // The client's redirect URI: load it once and be done.
      const final = await load(next);
      await final.arrayBuffer().catch(() => {});
      const outcome = next.searchParams.has('error') ? ` with error=${next.searchParams.get('error')}` : '';
      console.error(`browser.mjs: reached ${describe(next)}${outcome} (answered ${final.status})`);
      process.exit(0);
    }
    url = next;
    continue;
  }
  const body = (await response.text().catch(() => ''))
    .replace(/<(style|script)[^>]*>[\s\S]*?<\/\1>/gi, ' ')
    .replace(/<[^>]*>/g, ' ')
    .replace(/\s+/g, ' ')
    .trim();
  fail(`${describe(url)} answered ${response.status} instead of a redirect: ${body.slice(0, 300)}`);
}
fail(`more than ${MAX_HOPS} redirects`);
