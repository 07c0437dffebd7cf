// Drives the broker's live dashboard (GET /ui/) in headless Chromium and checks that it
// works end to end against a running broker that receives sensor events:
//
//   node check_dashboard.mjs http://127.0.0.1:PORT target/dashboard/dashboard.png
//
// 1. #status says `live` and #topics has a row for a `mote/events/...` topic showing a
//    decoded event (data-kind="event" and a value);
// 2. a click on that row charts its channel (#channel-select, #chart-label);
// 3. the stats cards show numbers (/api/v1/stats polled, rates from two polls);
// 4. the publish form sends `hello` to `dash/test` and #publish-result says ok;
// then a full-page screenshot goes to argv[3] and one JSON line of what was seen to
// stdout, exit 0. On any failure: the reason on stderr (a screenshot is still attempted,
// for a look at the page) and exit 1.
//
// playwright-core never downloads a browser: Debian's chromium is used
// (CHROMIUM_PATH overrides /usr/bin/chromium). Run by tests/tests/dashboard.rs.

import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';

const [base, shot] = process.argv.slice(2);
if (!base || !shot) {
  console.error('usage: node check_dashboard.mjs BASE_URL SCREENSHOT.png');
  process.exit(2);
}
const executablePath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const WAIT_LIVE_MS = 15_000; // for `live` and a decoded event row
const WAIT_STEP_MS = 10_000; // for each later step
const OVERALL_MS = 50_000;   // whatever happens, the script ends by then

// A failure of a step: its message is the reason printed.
class Failure extends Error {}

/// Waits for `fn(arg)` in the page to return a truthy value; fails with `what` on timeout.
async function waitFor(page, what, timeout, fn, arg) {
  try {
    const handle = await page.waitForFunction(fn, arg, { timeout, polling: 100 });
    return await handle.jsonValue();
  } catch (e) {
    const state = await page.evaluate(() => ({
      status: document.querySelector('#status')?.textContent,
      rows: document.querySelectorAll('#topics tbody tr').length,
      publish_result: document.querySelector('#publish-result')?.textContent,
    })).catch(() => ({}));
    throw new Failure(`${what}: not within ${timeout} ms (page: ${JSON.stringify(state)}; ${e.message.split('\n')[0]})`);
  }
}

async function check(page) {
  const seen = {};
  const url = new URL('ui/', base.endsWith('/') ? base : base + '/').href;
  const res = await page.goto(url, { waitUntil: 'domcontentloaded', timeout: WAIT_STEP_MS });
  if (!res || res.status() !== 200) throw new Failure(`GET ${url}: HTTP ${res?.status()}`);

  // 1. Live, with a decoded sensor event in the table.
  const row = await waitFor(page, '#status `live` and a decoded mote/events/ row', WAIT_LIVE_MS, () => {
    if (document.querySelector('#status')?.textContent !== 'live') return null;
    let best = null; // the busiest such row: its chart has the most points
    for (const tr of document.querySelectorAll('#topics tbody tr')) {
      const value = tr.cells[1]?.textContent ?? '';
      const count = Number((tr.cells[2]?.textContent ?? '').replace(/\D/g, ''));
      if (tr.dataset.topic?.startsWith('mote/events/') && tr.dataset.kind === 'event' && value
          && (!best || count > best.count)) {
        best = { topic: tr.dataset.topic, channel: tr.dataset.channel, value, count };
      }
    }
    return best;
  });
  Object.assign(seen, { status: 'live', topic: row.topic, value: row.value, count: row.count });

  // 2. Its channel charted after a click on the row.
  await page.locator(`#topics tbody tr[data-topic=${JSON.stringify(row.topic)}]`).click();
  const chart = await waitFor(page, 'the clicked row charted', WAIT_STEP_MS, (r) => {
    const sel = document.querySelector('#channel-select');
    const label = document.querySelector('#chart-label')?.textContent ?? '';
    const option = sel?.selectedOptions[0]?.textContent ?? '';
    const want = `${r.topic} · channel ${r.channel}`;
    return option === want && label.startsWith(want) && label.includes('latest')
      ? { option, label } : null;
  }, row);
  seen.channel = chart.option;
  seen.chart_label = chart.label;
  seen.chart_drawn = await page.evaluate(() => {
    // Some pixel of the canvas is not transparent: the line (or grid) was drawn.
    const c = document.querySelector('#chart');
    const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    for (let i = 3; i < data.length; i += 4) if (data[i] !== 0) return true;
    return false;
  });
  if (!seen.chart_drawn) throw new Failure('#chart is blank');

  // 3. Statistics, with rates (two polls one second apart).
  const stats = await waitFor(page, 'statistics with rates', WAIT_STEP_MS, () => {
    const text = (id) => document.getElementById(id)?.textContent ?? '';
    const s = Object.fromEntries(['connections', 'clients', 'rate-in', 'rate-out', 'uptime', 'dropped']
      .map((id) => [id.replace('-', '_'), text(id)]));
    return /\d/.test(s.connections) && /\d/.test(s.rate_in) && /\d/.test(s.rate_out) && /\d/.test(s.uptime)
      ? s : null;
  });
  Object.assign(seen, stats);

  // 4. The publish form.
  await page.fill('#publish-topic', 'dash/test');
  await page.fill('#publish-payload', 'hello');
  await page.selectOption('#publish-qos', '1');
  await page.click('#publish-form button[type="submit"]');
  const result = await waitFor(page, '#publish-result after submit', WAIT_STEP_MS, () => {
    const t = document.querySelector('#publish-result')?.textContent ?? '';
    return t && t !== '…' ? t : null;
  });
  seen.publish_result = result;
  seen.publish_note = await page.textContent('#publish-note');
  if (result !== 'ok') throw new Failure(`#publish-result says ${JSON.stringify(result)}, not ok`);
  // The page subscribes to `#`, so the message comes back to it: noted, not required.
  seen.published_row_seen = await page
    .waitForSelector('#topics tbody tr[data-topic="dash/test"]', { timeout: 3000 })
    .then(() => true, () => false);
  seen.rows = await page.locator('#topics tbody tr').count();
  return seen;
}

async function main() {
  let browser;
  let failed = null;
  const timer = setTimeout(() => {
    console.error(`dashboard check failed: gave up after ${OVERALL_MS} ms`);
    // Close Chromium (3 s at most) rather than leave it behind.
    const pause = new Promise((resolve) => setTimeout(resolve, 3000));
    Promise.race([browser?.close(), pause]).finally(() => process.exit(1));
  }, OVERALL_MS);
  try {
    // --no-sandbox: tests run as root. The rest keep Chromium off the network (closed here).
    browser = await chromium.launch({
      executablePath,
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--disable-background-networking'],
    });
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const pageErrors = [];
    const errorList = () => {
      const counts = new Map();
      for (const e of pageErrors) counts.set(e, (counts.get(e) ?? 0) + 1);
      return [...counts].map(([e, n]) => (n > 1 ? `${e} (x${n})` : e)).join(' | ');
    };
    page.on('pageerror', (e) => pageErrors.push(e.message));
    page.on('console', (m) => {
      if (m.type() === 'error') pageErrors.push(`console: ${m.text()} [${m.location().url}]`);
    });
    try {
      const seen = await check(page);
      if (pageErrors.length) throw new Failure('the page reported errors');
      fs.mkdirSync(path.dirname(path.resolve(shot)), { recursive: true });
      await page.screenshot({ path: shot, fullPage: true });
      seen.screenshot = shot;
      console.log(JSON.stringify(seen));
    } catch (e) {
      failed = e instanceof Failure ? e.message : `${e.stack ?? e}`;
      if (pageErrors.length) failed += ` (errors in the page: ${errorList()})`;
      // A picture of the page as it was, for whoever reads the failure.
      try {
        fs.mkdirSync(path.dirname(path.resolve(shot)), { recursive: true });
        await page.screenshot({ path: shot, fullPage: true });
        failed += ` (screenshot of the page: ${shot})`;
      } catch { /* the page is gone: nothing to show */ }
    }
  } catch (e) {
    failed = `cannot start ${executablePath}: ${e.message}`;
  } finally {
    await browser?.close().catch(() => {});
    clearTimeout(timer);
  }
  if (failed) {
    console.error(`dashboard check failed: ${failed}`);
    process.exit(1);
  }
}

await main();
