// MQTT over WebSocket frame by frame, with the `ws` package and MQTT 3.1.1 packets built
// by hand: where packets sit relative to frames is chosen here, not by a client library.
// Output: JSON lines, see lib.mjs.
//
//   node raw.mjs frames       --base ws://127.0.0.1:PORT   packets spanning frames, frames holding packets
//   node raw.mjs text         --base ws://127.0.0.1:PORT   a text frame closes the connection
//   node raw.mjs subprotocols --base ws://127.0.0.1:PORT   paths and Sec-WebSocket-Protocol
//   node raw.mjs silent       --base ws://127.0.0.1:PORT --min-ms A --max-ms B
//                                                          no CONNECT: closed after the connect timeout
//   node raw.mjs big-split    --base ws://127.0.0.1:PORT --topic T --file F
//                                                          a 256 KiB PUBLISH in 16 KiB frames
//   node raw.mjs close        --base ws://127.0.0.1:PORT --client-id C --topic T --payload P [--expect-close-reply]
//                                                          a Close frame without DISCONNECT (will)
//
// Every command takes --timeout SECS (watchdog).

import { readFileSync } from 'node:fs';

import WebSocket from 'ws';

import { Run, parseArgs, sleep, waitFor, within } from './lib.mjs';

const args = parseArgs(process.argv.slice(2));
const run = new Run(`raw ${args.command}`, args.timeout);
const base = args.base;

// ------------------------------------------------------------------ MQTT 3.1.1 packets

const CONNACK = 2;
const PUBLISH = 3;
const PUBACK = 4;
const SUBACK = 9;
const PINGRESP = 13;

function varint(n) {
  const out = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0);
  return Buffer.from(out);
}

const u16 = (n) => Buffer.from([n >> 8, n & 0xff]);
const str = (s) => {
  const b = Buffer.from(s);
  return Buffer.concat([u16(b.length), b]);
};
const packet = (first, ...body) => {
  const b = Buffer.concat(body);
  return Buffer.concat([Buffer.from([first]), varint(b.length), b]);
};

/**
 * CONNECT, clean session, keep alive 30 s; level 3 is MQTT 3.1 (`MQIsdp`). `will`:
 * `{ topic, payload }`, sent at QoS 1 without retain.
 */
const connect = (clientId, level = 4, will = null) => {
  const flags = 0x02 | (will ? 0x04 | (1 << 3) : 0);
  const tail = will ? [str(will.topic), str(will.payload)] : [];
  return packet(0x10, str(level === 3 ? 'MQIsdp' : 'MQTT'), Buffer.from([level, flags]), u16(30), str(clientId), ...tail);
};
const subscribe = (id, topic, q) => packet(0x82, u16(id), str(topic), Buffer.from([q]));
const publish = (topic, payload, q = 0, id = 0) =>
  packet(0x30 | (q << 1), str(topic), q > 0 ? u16(id) : Buffer.alloc(0), Buffer.from(payload));
const puback = (id) => packet(0x40, u16(id));
const pingreq = () => Buffer.from([0xc0, 0x00]);
const disconnect = () => Buffer.from([0xe0, 0x00]);

/** Splits complete packets off the front of `buf`: `[packets, rest]`. */
function parsePackets(buf) {
  const packets = [];
  for (;;) {
    if (buf.length < 2) break;
    let len = 0;
    let mult = 1;
    let i = 1;
    let complete = false;
    while (i < buf.length && i <= 4) {
      const b = buf[i++];
      len += (b & 0x7f) * mult;
      mult *= 128;
      if ((b & 0x80) === 0) {
        complete = true;
        break;
      }
    }
    if (!complete || buf.length < i + len) break;
    const type = buf[0] >> 4;
    const flags = buf[0] & 0x0f;
    const body = buf.subarray(i, i + len);
    packets.push(decode(type, flags, body));
    buf = buf.subarray(i + len);
  }
  return [packets, buf];
}

function decode(type, flags, body) {
  const p = { type, flags, body: Buffer.from(body) };
  if (type === CONNACK) {
    p.sessionPresent = body[0] & 1;
    p.code = body[1];
  } else if (type === SUBACK || type === PUBACK) {
    p.id = body.readUInt16BE(0);
    if (type === SUBACK) p.granted = [...body.subarray(2)];
  } else if (type === PUBLISH) {
    p.qos = (flags >> 1) & 3;
    const tlen = body.readUInt16BE(0);
    p.topic = body.subarray(2, 2 + tlen).toString();
    let at = 2 + tlen;
    if (p.qos > 0) {
      p.id = body.readUInt16BE(at);
      at += 2;
    }
    p.payload = body.subarray(at).toString();
  }
  return p;
}

// ------------------------------------------------------------------ a raw client

/** A WebSocket whose binary frames are reassembled into MQTT packets. */
class Raw {
  /** Opens `path` offering `protocols`; resolves once open (rejects on refusal). */
  static open(path, protocols = ['mqtt']) {
    const ws = new WebSocket(base + path, protocols);
    const raw = new Raw(ws);
    return within(
      5000,
      `open ${path}`,
      new Promise((resolve, reject) => {
        ws.once('open', () => {
          raw.openedAt = Date.now();
          resolve(raw);
        });
        ws.once('error', reject);
        ws.once('unexpected-response', (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
      }),
    );
  }

  constructor(ws) {
    this.ws = ws;
    this.buf = Buffer.alloc(0);
    this.packets = [];
    this.frames = [];
    this.closed = false;
    this.closedAt = null;
    this.closeCode = null;
    this.subprotocol = null;
    ws.on('upgrade', (res) => {
      this.subprotocol = res.headers['sec-websocket-protocol'] ?? null;
    });
    ws.on('message', (data, isBinary) => {
      this.frames.push({ bytes: data.length, binary: isBinary });
      if (!isBinary) return;
      const [packets, rest] = parsePackets(Buffer.concat([this.buf, data]));
      this.buf = rest;
      this.packets.push(...packets);
    });
    ws.on('close', (code) => {
      this.closed = true;
      this.closedAt = Date.now();
      this.closeCode = code;
    });
    // A reset connection is reported as an error before 'close'; 'close' says enough.
    ws.on('error', () => {});
  }

  /** Sends `bytes` as one binary frame; resolves once written. */
  send(bytes) {
    return new Promise((resolve, reject) => this.ws.send(bytes, { binary: true }, (e) => (e ? reject(e) : resolve())));
  }

  /** Removes and returns the first packet matching `pred`, waiting at most `ms`. */
  async next(pred, ms = 3000) {
    let found;
    await waitFor(() => {
      const i = this.packets.findIndex(pred);
      if (i >= 0) [found] = this.packets.splice(i, 1);
      return found !== undefined;
    }, ms);
    return found;
  }

  /** Waits at most `ms` for the connection to close; true when it did. */
  waitClosed(ms) {
    return waitFor(() => this.closed, ms);
  }

  /** Ends the TCP connection at once, if still open. */
  kill() {
    if (!this.closed) this.ws.terminate();
  }
}

/** Opens a connection, sends CONNECT (with `will`, if given) and waits for its CONNACK. */
async function connected(clientId, will = null) {
  const c = await Raw.open('/mqtt');
  await c.send(connect(clientId, 4, will));
  const ack = await c.next((p) => p.type === CONNACK);
  run.check(`connack:${clientId}`, ack && ack.code === 0, { ack: ack && { code: ack.code } });
  return c;
}

/** A client of its own subscribes, publishes to itself and gets it back: the broker serves. */
async function stillServes(tag) {
  const c = await connected(`ws-raw-fine-${tag}`);
  await c.send(subscribe(1, `raw/fine/${tag}`, 1));
  const sa = await c.next((p) => p.type === SUBACK);
  await c.send(publish(`raw/fine/${tag}`, 'still fine', 1, 2));
  const ack = await c.next((p) => p.type === PUBACK && p.id === 2);
  const msg = await c.next((p) => p.type === PUBLISH);
  run.check(`other_client_fine:${tag}`, Boolean(sa && ack && msg && msg.payload === 'still fine'), {
    suback: sa && sa.granted,
    message: msg && msg.payload,
  });
  await c.send(disconnect());
  c.kill();
}

// ------------------------------------------------------------------ commands

async function frames() {
  const topic = 'raw/frames';
  const c = await Raw.open('/mqtt');

  // CONNECT and SUBSCRIBE in one frame.
  await c.send(Buffer.concat([connect('ws-raw-frames'), subscribe(1, topic, 1)]));
  const ack = await c.next((p) => p.type === CONNACK);
  const sa = await c.next((p) => p.type === SUBACK);
  run.check('one_frame_connack', ack && ack.code === 0 && ack.sessionPresent === 0, { ack: ack && ack.code });
  run.check('one_frame_suback', sa && sa.id === 1 && JSON.stringify(sa.granted) === '[1]', {
    suback: sa && { id: sa.id, granted: sa.granted },
  });

  // One QoS 1 PUBLISH in three frames: the first byte alone, then up to the middle of
  // the topic, then the rest.
  const split = publish(topic, 'one packet, three frames', 1, 2);
  const parts = [split.subarray(0, 1), split.subarray(1, 6), split.subarray(6)];
  for (const part of parts) {
    await c.send(part);
    await sleep(40);
  }
  const pa = await c.next((p) => p.type === PUBACK && p.id === 2);
  const m = await c.next((p) => p.type === PUBLISH);
  run.check('split_publish_acked', Boolean(pa), { parts: parts.map((p) => p.length) });
  run.check('split_publish_delivered', m && m.topic === topic && m.payload === 'one packet, three frames' && m.qos === 1, {
    message: m && { topic: m.topic, payload: m.payload, qos: m.qos },
  });
  if (m) await c.send(puback(m.id));

  // Two whole packets and the head of a third in one frame; its tail and a PINGREQ in
  // the next.
  const third = publish(topic, 'c', 0);
  await c.send(Buffer.concat([publish(topic, 'a', 0), publish(topic, 'b', 0), third.subarray(0, 3)]));
  await sleep(40);
  await c.send(Buffer.concat([third.subarray(3), pingreq()]));
  const got = [];
  for (let i = 0; i < 3; i++) {
    const p = await c.next((x) => x.type === PUBLISH);
    if (p) got.push(p.payload);
  }
  const pingresp = await c.next((p) => p.type === PINGRESP);
  run.eq('coalesced_publishes_delivered', got, ['a', 'b', 'c']);
  run.check('coalesced_pingresp', Boolean(pingresp));

  // A PUBLISH one byte per frame.
  const bytewise = publish(topic, 'byte by byte', 1, 3);
  for (const b of bytewise) await c.send(Buffer.from([b]));
  const pa3 = await c.next((p) => p.type === PUBACK && p.id === 3);
  const m3 = await c.next((p) => p.type === PUBLISH);
  run.check('bytewise_publish', Boolean(pa3 && m3 && m3.payload === 'byte by byte'), { frames: bytewise.length });
  if (m3) await c.send(puback(m3.id));

  // One PUBLISH as one WebSocket message in three fragments (a binary frame with FIN
  // clear, then continuation frames).
  const fragmented = publish(topic, 'one message, three fragments', 1, 4);
  await new Promise((resolve, reject) => {
    const done = (e) => (e ? reject(e) : resolve());
    c.ws.send(fragmented.subarray(0, 4), { binary: true, fin: false });
    c.ws.send(fragmented.subarray(4, 12), { binary: true, fin: false });
    c.ws.send(fragmented.subarray(12), { binary: true, fin: true }, done);
  });
  const pa4 = await c.next((p) => p.type === PUBACK && p.id === 4);
  const m4 = await c.next((p) => p.type === PUBLISH);
  run.check('fragmented_message_publish', Boolean(pa4 && m4 && m4.payload === 'one message, three fragments'), {
    message: m4 && m4.payload,
  });
  if (m4) await c.send(puback(m4.id));

  // A WebSocket ping is answered with a pong while the MQTT connection is idle.
  const pong = new Promise((resolve) => c.ws.once('pong', (data) => resolve(data.toString())));
  c.ws.ping('are you there');
  const echoed = await within(2000, 'pong', pong).catch((e) => String(e));
  run.eq('ws_ping_answered', echoed, 'are you there');

  // A hundred QoS 1 PUBLISHes in one frame.
  const many = Array.from({ length: 100 }, (_, i) => publish(topic, `m${i}`, 1, 100 + i));
  await c.send(Buffer.concat(many));
  const acks = [];
  const msgs = [];
  for (let i = 0; i < 100; i++) {
    const a = await c.next((p) => p.type === PUBACK && p.id >= 100);
    if (a) acks.push(a.id);
    const d = await c.next((p) => p.type === PUBLISH);
    if (d) {
      msgs.push(d.payload);
      await c.send(puback(d.id));
    }
  }
  run.seq('hundred_in_one_frame_acked', acks, Array.from({ length: 100 }, (_, i) => 100 + i));
  run.seq('hundred_in_one_frame_delivered', msgs, Array.from({ length: 100 }, (_, i) => `m${i}`));

  run.eq('server_frames_all_binary', c.frames.filter((f) => !f.binary).length, 0, { frames: c.frames.length });
  await c.send(disconnect());
  const closed = await c.waitClosed(2000);
  run.check('closed_after_disconnect', closed, { code: c.closeCode });
  c.kill();
}

async function text() {
  // A text frame is a protocol error, not a DISCONNECT: the will is published.
  const watcher = await connected('ws-raw-text-watcher');
  await watcher.send(subscribe(1, 'raw/text/will', 1));
  await watcher.next((p) => p.type === SUBACK);

  // After CONNECT/CONNACK.
  const c = await connected('ws-raw-text', { topic: 'raw/text/will', payload: 'text frame ended me' });
  const t0 = Date.now();
  c.ws.send('this is text', { binary: false });
  const closed = await c.waitClosed(2000);
  run.check('text_frame_closes_within_2s', closed, { ms: closed ? c.closedAt - t0 : null, code: c.closeCode });
  c.kill();
  const will = await watcher.next((p) => p.type === PUBLISH, 3000);
  run.check('will_after_text_frame', Boolean(will && will.payload === 'text frame ended me'), { will: will && will.payload });
  if (will) await watcher.send(puback(will.id));
  await watcher.send(disconnect());
  watcher.kill();

  // Before CONNECT.
  const d = await Raw.open('/mqtt');
  const t1 = Date.now();
  d.ws.send('{"hello": "broker"}', { binary: false });
  const closed2 = await d.waitClosed(2000);
  run.check('text_frame_before_connect_closes_within_2s', closed2, { ms: closed2 ? d.closedAt - t1 : null, code: d.closeCode });
  d.kill();

  await stillServes('text');
}

async function subprotocols() {
  const cases = [
    [['mqtt'], 'mqtt'],
    [['mqttv3.1'], 'mqttv3.1'],
    [['mqttv3.1', 'mqtt'], 'mqtt'],
    [[], null],
  ];
  for (const path of ['/mqtt', '/']) {
    for (const [offer, expected] of cases) {
      const name = `${path}:${offer.join('+') || 'none'}`;
      let c;
      try {
        c = await Raw.open(path, offer);
      } catch (e) {
        run.check(`protocol:${name}`, false, { error: String(e) });
        run.check(`connack:${name}`, false, { error: 'not opened' });
        continue;
      }
      run.eq(`protocol:${name}`, c.subprotocol, expected);
      // MQTT 3.1 (`MQIsdp`, level 3) where only mqttv3.1 is offered, 3.1.1 otherwise.
      const level = expected === 'mqttv3.1' ? 3 : 4;
      await c.send(connect(`ws-proto-${level}`, level));
      const ack = await c.next((p) => p.type === CONNACK);
      run.check(`connack:${name}`, ack && ack.code === 0, { level, code: ack && ack.code });
      await c.send(disconnect());
      await c.waitClosed(2000);
      c.kill();
    }
  }
  // A path that is not in http.ws_paths is not upgraded.
  const refused = await within(
    5000,
    'unknown path',
    new Promise((resolve) => {
      const ws = new WebSocket(`${base}/not-mqtt`, ['mqtt']);
      ws.once('open', () => {
        resolve('opened');
        ws.terminate();
      });
      ws.once('unexpected-response', (_req, res) => {
        resolve(res.statusCode);
        res.resume();
        ws.terminate();
      });
      ws.once('error', (e) => resolve(String(e)));
    }),
  );
  run.eq('unknown_path_not_upgraded', refused, 404);
}

async function silent() {
  const minMs = Number(args['min-ms']);
  const maxMs = Number(args['max-ms']);
  // One connection that never sends CONNECT, one that does and must stay open.
  const quiet = await Raw.open('/mqtt');
  const busy = await connected('ws-raw-busy');
  const closed = await quiet.waitClosed(maxMs + 2000);
  const ms = closed ? quiet.closedAt - quiet.openedAt : null;
  run.check('silent_closed', closed, { ms, code: quiet.closeCode });
  run.check('silent_closed_after_connect_timeout', closed && ms >= minMs && ms <= maxMs, { ms, minMs, maxMs });
  run.eq('silent_received_nothing', quiet.frames.length, 0);
  // The connected client outlives the timeout and still answers.
  await busy.send(pingreq());
  const pong = await busy.next((p) => p.type === PINGRESP);
  run.check('connected_client_kept', !busy.closed && Boolean(pong));
  await busy.send(disconnect());
  busy.kill();
  quiet.kill();
}

async function bigSplit() {
  // A 256 KiB QoS 1 PUBLISH in 16 KiB frames (each frame a message of its own).
  const body = readFileSync(args.file);
  const c = await connected('ws-raw-big-split');
  const bytes = publish(args.topic, body, 1, 7);
  const size = 16 * 1024;
  let n = 0;
  for (let at = 0; at < bytes.length; at += size) {
    await c.send(bytes.subarray(at, at + size));
    n++;
  }
  const ack = await c.next((p) => p.type === PUBACK && p.id === 7, 5000);
  run.check('big_split_acked', Boolean(ack), { frames: n, bytes: bytes.length });
  await c.send(disconnect());
  await c.waitClosed(2000);
  c.kill();
}

async function closeFrame() {
  // A WebSocket Close without MQTT DISCONNECT: the broker answers the Close and, the
  // network connection having ended without DISCONNECT, publishes the will.
  const c = await connected(args['client-id'], { topic: args.topic, payload: args.payload });
  const t0 = Date.now();
  c.ws.close(1000, 'bye');
  const closed = await c.waitClosed(2000);
  const detail = { ms: closed ? c.closedAt - t0 : null, code: c.closeCode };
  run.check('closed_after_close_frame', closed, detail);
  // RFC 6455 §5.5.1: the receiver of a Close frame MUST answer with a Close frame; `ws`
  // reports the peer's code (1000 echoed) when it did, 1006 when the TCP connection just
  // ended.
  if (args['expect-close-reply']) run.eq('close_frame_answered', c.closeCode, 1000, detail);
  else run.info({ close_code: c.closeCode });
  c.kill();
}

const commands = { frames, text, subprotocols, silent, 'big-split': bigSplit, close: closeFrame };
const cmd = commands[args.command];
if (!cmd) throw new Error(`unknown command ${args.command}`);
await cmd();
run.finish();
