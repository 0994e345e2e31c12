// Real headless Chromium (Debian's `chromium`, driven by playwright-core) for the
// browser tests (statuspage.mjs, attacks.mjs): `withBrowser(run)` gives `run` a page
// in a fresh profile, and closes the browser and removes the profile afterwards;
// `options` are playwright's for the context (a viewport, permissions).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export async function withBrowser(run, options = {}) {
  const profile = mkdtempSync(join(tmpdir(), 'latchkey-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
    ...options,
  });
  try {
    return await run(context.pages()[0] ?? await context.newPage());
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
}
