// latchkey's status page, live without a reload: every 2 s it fetches the page again
// and swaps in each server's part that changed; every second it turns expiry and
// last-request times into countdowns; and its Copy buttons copy. Without script the
// page still works (a plain refresh), so nothing here is needed to act.
'use strict';
(() => {
  const fetched = new Map();
  for (const live of document.querySelectorAll('[data-live]')) {
    fetched.set(live.dataset.live, live.innerHTML);
  }
  const span = (secs) => {
    const h = Math.floor(secs / 3600);
    const m = Math.floor((secs % 3600) / 60);
    const s = secs % 60;
    if (h > 0) return `${h} h ${m} min`;
    if (m > 0) return `${m} min ${s} s`;
    return `${s} s`;
  };
  const tick = () => {
    const now = Date.now() / 1000;
    for (const time of document.querySelectorAll('[data-expires-at]')) {
      const left = Math.round(Number(time.dataset.expiresAt) - now);
      time.textContent = left > 0 ? `in ${span(left)}` : 'expired';
    }
    for (const time of document.querySelectorAll('[data-at]')) {
      time.textContent = `${span(Math.max(0, Math.round(now - Number(time.dataset.at))))} ago`;
    }
  };
  const announce = document.getElementById('announce');
  const connection = document.getElementById('connection');
  const names = (root) => [...root.querySelectorAll('[data-live]')].map((e) => e.dataset.live).join('\n');
  const poll = async () => {
    if (document.hidden) return;
    try {
      const response = await fetch('/', { headers: { accept: 'text/html' }, cache: 'no-store' });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const fresh = new DOMParser().parseFromString(await response.text(), 'text/html');
      // A reload of the config added or removed servers: take the whole page.
      if (names(fresh) !== names(document)) {
        location.reload();
        return;
      }
      for (const live of fresh.querySelectorAll('[data-live]')) {
        const name = live.dataset.live;
        if (fetched.get(name) === live.innerHTML) continue;
        fetched.set(name, live.innerHTML);
        const old = document.querySelector(`[data-live="${CSS.escape(name)}"]`);
        const before = old.dataset.state;
        old.replaceWith(document.adoptNode(live));
        if (live.dataset.state !== before) {
          announce.textContent = `${name}: ${live.querySelector('.badge').textContent}`;
        }
      }
      connection.textContent = 'Updates live.';
      connection.classList.remove('lost');
    } catch {
      connection.textContent = 'latchkey is not answering; this is what it said last.';
      connection.classList.add('lost');
    }
    tick();
  };
  tick();
  connection.textContent = 'Updates live.';
  setInterval(tick, 1000);
  setInterval(poll, 2000);
  document.addEventListener('visibilitychange', poll);
  document.addEventListener('click', async (event) => {
    const button = event.target.closest('button[data-copy]');
    if (!button) return;
    const source = document.getElementById(button.dataset.copy);
    const text = source.value ?? source.textContent;
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = 'Copied';
    } catch {
      // No clipboard (a browser that refuses it): select the text for a manual copy.
      if (source.select) {
        source.select();
      } else {
        const range = document.createRange();
        range.selectNodeContents(source);
        getSelection().removeAllRanges();
        getSelection().addRange(range);
      }
      button.textContent = 'Selected';
    }
    setTimeout(() => { button.textContent = 'Copy'; }, 1500);
  });
})();
