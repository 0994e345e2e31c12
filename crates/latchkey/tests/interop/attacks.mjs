// The browser-side attacks on latchkey's origin, in real headless Chromium (Debian's
// `chromium`, driven by playwright-core), as a hostile page would run them:
//  1. navigate to a proxy path whose upstream answers with an HTML page whose script
//     POSTs to another server's proxy path (same origin as latchkey);
//  2. open a page on another port of 127.0.0.1 ("same-site") that sends an <img> and a
//     no-cors fetch to a proxy path, and frames latchkey's status page.
// Prints one JSON object; tests/it/attacks.rs checks it, and what reached the upstreams.
//
//   node attacks.mjs http://127.0.0.1:PORT/hostile http://127.0.0.1:OTHER/
import { withBrowser } from './chromium.mjs';

const [hostile, attacker] = process.argv.slice(2);
const result = {};
await withBrowser(async (page) => {
  try {
    const response = await page.goto(hostile);
    result.hostile_status = response.status();
    result.hostile_csp = response.headers()['content-security-policy'] ?? null;
    await page.waitForTimeout(1500);
    result.hostile_title = await page.title();

    await page.goto(attacker);
    await page.waitForFunction(() => document.title.startsWith('done'), null, { timeout: 10000 });
    result.attacker_title = await page.title();
    const frame = page.frames().find((f) => f !== page.mainFrame());
    let framed = false;
    try {
      framed = (await frame.content()).includes('<h1>latchkey');
    } catch (e) {
      framed = false;
    }
    result.framed = framed;
    result.frame_url = frame ? frame.url() : null;
  } catch (e) {
    result.error = String(e);
  }
});
console.log(JSON.stringify(result));
