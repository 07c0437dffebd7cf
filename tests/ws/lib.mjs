// Shared helpers of the WebSocket end-to-end scripts (tests/tests/websocket.rs runs them).
//
// The convention is that of tests/python/motepaho.py: one JSON object per line on stdout,
// `{"check": NAME, "ok": BOOL, ...}` for each assertion, `{"ready": ...}` when the
// script waits for the test to act (publish from TCP, kill it), `{"info": ...}` for
// context, and a final `{"result": "pass"|"fail"}`; the process exits 0 only when every
// check passed. A watchdog ends a script that runs past `--timeout` seconds (exit 3),
// an uncaught error ends it with exit 2, so a script always ends with a result line.

import { createHash } from 'node:crypto';

/** Prints one JSON line. */
export function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

/** `--key value` pairs (and bare `--flag`s) after the subcommand, as an object. */
export function parseArgs(argv) {
  const [command, ...rest] = argv;
  const args = { command };
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i];
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`);
    const key = a.slice(2);
    if (i + 1 < rest.length && !rest[i + 1].startsWith('--')) {
      args[key] = rest[++i];
    } else {
      args[key] = true;
    }
  }
  return args;
}

/** Collects checks; arms the watchdog; `finish()` prints the result and exits. */
export class Run {
  constructor(name, timeoutSecs) {
    this.name = name;
    this.checks = 0;
    this.failed = 0;
    const ms = Math.round((Number(timeoutSecs) || 15) * 1000);
    setTimeout(() => {
      emit({ check: 'watchdog', ok: false, detail: `${name}: no result after ${ms} ms` });
      emit({ result: 'fail' });
      process.exit(3);
    }, ms);
    const fatal = (e) => {
      emit({ check: 'exception', ok: false, error: String(e && e.stack ? e.stack : e) });
      emit({ result: 'fail' });
      process.exit(2);
    };
    process.on('uncaughtException', fatal);
    process.on('unhandledRejection', fatal);
  }

  check(name, ok, detail = {}) {
    this.checks++;
    if (!ok) this.failed++;
    emit({ check: name, ok: Boolean(ok), ...detail });
    return Boolean(ok);
  }

  /** A check that `got` deep-equals `expected` (compared as JSON). */
  eq(name, got, expected, detail = {}) {
    const ok = JSON.stringify(got) === JSON.stringify(expected);
    return this.check(name, ok, { got, expected, ...detail });
  }

  /**
   * A check that two arrays are equal, reporting their lengths and the first difference
   * rather than both arrays (they may be long).
   */
  seq(name, got, expected, detail = {}) {
    const n = Math.max(got.length, expected.length);
    let first = -1;
    for (let i = 0; i < n && first < 0; i++) {
      if (JSON.stringify(got[i]) !== JSON.stringify(expected[i])) first = i;
    }
    const diff = first < 0 ? {} : { at: first, got: got[first] ?? null, expected: expected[first] ?? null };
    return this.check(name, first < 0, { len: got.length, expectedLen: expected.length, ...diff, ...detail });
  }

  info(obj) {
    emit({ info: obj });
  }

  ready(obj = {}) {
    emit({ ready: true, ...obj });
  }

  finish() {
    const ok = this.failed === 0 && this.checks > 0;
    emit({ result: ok ? 'pass' : 'fail', checks: this.checks, failed: this.failed });
    // Let stdout drain before exiting (a pipe is asynchronous in Node).
    process.stdout.write('', () => process.exit(ok ? 0 : 1));
  }
}

/** Resolves after `ms` milliseconds. */
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `pred` every 10 ms until it is true (→ true) or `ms` pass (→ its last value). */
export async function waitFor(pred, ms) {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() >= end) return Boolean(pred());
    await sleep(10);
  }
  return true;
}

/** Hex SHA-256 of a buffer. */
export const sha256 = (buf) => createHash('sha256').update(buf).digest('hex');

/**
 * Rejects with `what` when `promise` does not settle within `ms`; the timer is cleared
 * either way so that it never keeps the process alive.
 */
export function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
