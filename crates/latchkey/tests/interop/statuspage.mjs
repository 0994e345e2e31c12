// latchkey's status page in real headless Chromium (Debian's `chromium`), driven by
// playwright-core: load the page, report each server's rendered state, press the
// named server's "Authorize" button and wait for the page (refreshing itself) to
// show `ready`. Prints one JSON object; tests/it/statuspage.rs checks it.
//
//   node statuspage.mjs http://127.0.0.1:PORT/ SERVER
import { withBrowser } from './chromium.mjs';

const [url, server] = process.argv.slice(2);
const rows = (page) => page.$$eval('tr', (trs) => trs.slice(1).map((tr) => {
  const cells = [...tr.querySelectorAll('td')];
  return {
    name: cells[0].textContent.trim(),
    state: cells[3].dataset.state,
    authorize_button: !!cells[3].querySelector('button'),
    expires: cells[4].textContent.trim(),
    scopes: cells[5].textContent.trim(),
  };
}));
const result = {};
await withBrowser(async (page) => {
  try {
    const response = await page.goto(url);
    result.status = response.status();
    result.title = await page.title();
    result.before = await rows(page);
    const row = page.locator(`tr[data-server="${server}"]`);
    await row.getByRole('button', { name: 'Authorize' }).click();
    await page.waitForURL(url);
    result.after_click = await rows(page);
    // No reloads from here: the page's own refresh must bring the new state.
    await page.waitForSelector(`tr[data-server="${server}"] td[data-state="ready"]`, { timeout: 30000 });
    result.after = await rows(page);
  } catch (e) {
    result.error = String(e);
  }
});
console.log(JSON.stringify(result));
