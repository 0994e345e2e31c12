// latchkey's status page in real headless Chromium (Debian's `chromium`), driven by
// playwright-core, as a person uses it: read every server's card, check the layout
// on a laptop and on a phone and the page's accessibility (axe-core), copy the local
// URL, press the named server's "Sign in" and watch the page (never reloaded) go
// through "Signing in" to "Signed in" with a countdown that moves, then press "Sign
// out". Saves a screenshot per state in SHOTS. Prints one JSON object;
// tests/it/statuspage.rs checks it.
//
// In between, a page on another port (ATTACKER) tries to press "Sign out" itself.
//
//   node statuspage.mjs http://127.0.0.1:PORT/ SERVER SHOTS http://127.0.0.1:OTHER/
import { readFileSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { withBrowser } from './chromium.mjs';

const [url, server, shots, attacker] = process.argv.slice(2);
mkdirSync(shots, { recursive: true });
const axeSource = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');

// Every card as a person reads it.
const cards = (page) => page.$$eval('section[data-server]', (sections) => sections.map((section) => {
  const live = section.querySelector('[data-live]');
  const facts = {};
  for (const dt of live.querySelectorAll('dt')) facts[dt.textContent.trim()] = dt.nextElementSibling.textContent.trim();
  return {
    name: section.dataset.server,
    state: live.dataset.state,
    badge: live.querySelector('.badge').textContent.trim(),
    detail: live.querySelector('.detail')?.textContent.trim() ?? null,
    fix: live.querySelector('.fix')?.textContent.trim() ?? null,
    notice: live.querySelector('.notice')?.textContent.trim() ?? null,
    facts,
    buttons: [...live.querySelectorAll('button, a.button')].map((b) => b.textContent.trim()),
    local_url: section.querySelector('input[readonly]')?.value ?? null,
    snippets: [...section.querySelectorAll('.copy[data-client]')].map((div) => ({
      client: div.dataset.client,
      form: div.dataset.form,
      place: div.dataset.place,
      text: div.querySelector('pre').textContent,
    })),
  };
}));

const shot = {};
// One picture of each state's card, the first time it is seen.
const pictures = async (page, seen) => {
  for (const card of seen) {
    if (shot[card.state]) continue;
    const file = join(shots, `state-${card.state}.png`);
    await page.locator(`section[data-server="${card.name}"]`).screenshot({ path: file });
    shot[card.state] = file;
  }
};

// axe-core's WCAG 2.1 A and AA rules (labels, names, contrast, landmarks), in
// light and in dark.
const audit = async (page) => {
  const found = [];
  let passes = [];
  // Every "Connect a client" open, so its fields and buttons are checked too.
  await page.$$eval('details', (all) => { for (const d of all) d.open = true; });
  for (const colorScheme of ['light', 'dark']) {
    await page.emulateMedia({ colorScheme });
    await page.evaluate(axeSource);
    const results = await page.evaluate(() => window.axe.run(document, {
      runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'] },
    }));
    for (const v of results.violations) {
      found.push({ colorScheme, id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(' ')) });
    }
    if (colorScheme === 'light') passes = results.passes.map((p) => p.id);
  }
  await page.emulateMedia({ colorScheme: 'light' });
  return { violations: found, passes };
};

const stateOf = (page, name) => page.locator(`section[data-server="${name}"] [data-live]`).getAttribute('data-state');
const waitState = (page, name, state) => page.waitForSelector(
  `section[data-server="${name}"] [data-live][data-state="${state}"]`, { timeout: 30000 });
const card = async (page, name) => (await cards(page)).find((c) => c.name === name);

const result = { console: [] };
await withBrowser(async (page) => {
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') result.console.push(m.text()); });
  page.on('pageerror', (e) => result.console.push(String(e)));
  try {
    const response = await page.goto(url);
    result.status = response.status();
    result.csp = response.headers()['content-security-policy'];
    result.title = await page.title();
    result.before = await cards(page);
    await pictures(page, result.before);
    await page.screenshot({ path: join(shots, 'laptop.png'), fullPage: true });
    result.audit_before = await audit(page);

    // A phone: no sideways scrolling, the connect part opened.
    await page.setViewportSize({ width: 390, height: 844 });
    await page.$$eval('section[data-server] details', (all, name) => {
      for (const d of all) d.open = d.closest('section').dataset.server === name;
    }, server);
    result.phone_overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    await page.screenshot({ path: join(shots, 'phone.png') });
    await page.locator(`section[data-server="${server}"] details`).screenshot({ path: join(shots, 'phone-connect.png') });
    await page.setViewportSize({ width: 1280, height: 800 });

    // The Copy button next to the local URL.
    await page.locator(`section[data-server="${server}"] .copy input + button`).click();
    result.copied = await page.evaluate(() => navigator.clipboard.readText());
    result.copy_label = await page.locator(`section[data-server="${server}"] .copy input + button`).textContent();

    await page.locator(`section[data-server="${server}"]`).getByRole('button', { name: `Sign in to ${server}` }).click();
    await page.waitForURL(url);
    // From here on the page is never reloaded: the marker would be gone.
    await page.evaluate(() => { window.notReloaded = true; });
    await waitState(page, server, 'signing_in');
    result.signing_in = await card(page, server);
    await pictures(page, [result.signing_in]);
    await waitState(page, server, 'signed_in');
    result.signed_in = await card(page, server);
    await pictures(page, [result.signed_in]);
    const countdown = () => page.locator(`section[data-server="${server}"] [data-expires-at]`).textContent();
    result.countdown = [await countdown()];
    await page.waitForTimeout(2500);
    result.countdown.push(await countdown());
    result.not_reloaded = await page.evaluate(() => window.notReloaded === true);
    await page.screenshot({ path: join(shots, 'signed-in.png'), fullPage: true });
    result.audit_signed_in = await audit(page);
    result.json_signed_in = await (await fetch(url, { headers: { accept: 'application/json' } })).json();

    const other = await page.context().newPage();
    await other.goto(attacker);
    await other.waitForFunction(() => document.title === 'done', null, { timeout: 10000 });
    result.attacker_title = await other.title();
    await other.close();
    // Two polls of the page: a sign-out would show.
    await page.waitForTimeout(4500);
    result.after_attack = await card(page, server);
    result.json_after_attack = await (await fetch(url, { headers: { accept: 'application/json' } })).json();

    await page.locator(`section[data-server="${server}"]`).getByRole('button', { name: `Sign out of ${server}` }).click();
    await page.waitForURL(url);
    await waitState(page, server, 'sign_in_needed');
    result.signed_out = await card(page, server);
    await page.screenshot({ path: join(shots, 'signed-out.png'), fullPage: true });
    result.state_at_end = await stateOf(page, server);
  } catch (e) {
    result.error = String(e);
    await page.screenshot({ path: join(shots, 'failure.png'), fullPage: true }).catch(() => {});
  }
  result.shots = shot;
}, { viewport: { width: 1280, height: 800 }, permissions: ['clipboard-read', 'clipboard-write'] });
console.log(JSON.stringify(result));
