// mqtt.js (v5 of the npm package) over WebSocket against the broker: one subcommand per
// role, the other end (mosquitto_pub / mosquitto_sub on TCP) is driven by
// tests/tests/websocket.rs. Output: JSON lines, see lib.mjs.
//
//   node mqttjs.mjs publish       --url U --version 4|5 --topic T --qos Q --count N --prefix P
//   node mqttjs.mjs subscribe     --url U --version 4|5 --topic T --qos Q --count N --prefix P
//   node mqttjs.mjs big-publish   --url U --version 4|5 --topic T --file F
//   node mqttjs.mjs big-subscribe --url U --version 4|5 --topic T --file F
//   node mqttjs.mjs session-prepare --url U --version 4|5 --client-id C --topic T
//   node mqttjs.mjs session-resume  --url U --version 4|5 --client-id C --topic T --count N --prefix P
//   node mqttjs.mjs will          --url U --version 4|5 --client-id C --topic T --payload P [--disconnect]
//
// Every command takes --timeout SECS (watchdog). `--url` is the broker's WebSocket URL,
// e.g. ws://127.0.0.1:PORT/mqtt.

import { readFileSync } from 'node:fs';
import mqtt from 'mqtt';
import WebSocket from 'ws';

import { Run, parseArgs, sha256, sleep, waitFor, within } from './lib.mjs';

const args = parseArgs(process.argv.slice(2));
const run = new Run(`mqttjs ${args.command}`, args.timeout);
const version = Number(args.version || 5);
const qos = Number(args.qos || 0);
const count = Number(args.count || 0);

/**
 * Frame-level view of the client's WebSocket, through mqtt.js's `createWebsocket` hook:
 * the negotiated sub-protocol and the frames sent and received.
 */
function frameCounter() {
  const stats = { protocol: null, framesOut: 0, framesIn: 0, textIn: 0 };
  stats.factory = (url, protocols, opts) => {
    const sock = new WebSocket(url, protocols, opts.wsOptions);
    sock.on('upgrade', (res) => {
      stats.protocol = res.headers['sec-websocket-protocol'] ?? null;
    });
    sock.on('message', (_data, isBinary) => {
      stats.framesIn++;
      if (!isBinary) stats.textIn++;
    });
    const send = sock.send.bind(sock);
    sock.send = (...a) => {
      stats.framesOut++;
      return send(...a);
    };
    return sock;
  };
  return stats;
}

/**
 * Connects mqtt.js over WebSocket and waits for CONNACK. `extra` goes to mqtt.connect;
 * the returned client carries `frames` (see frameCounter), `received` (messages) and
 * `packets` (type counts, received and sent).
 */
async function connect(extra = {}) {
  const frames = frameCounter();
  const opts = {
    protocolVersion: version,
    reconnectPeriod: 0,
    connectTimeout: 5000,
    keepalive: 30,
    createWebsocket: frames.factory,
    ...extra,
  };
  if (version === 3) opts.protocolId = 'MQIsdp';
  const client = mqtt.connect(args.url, opts);
  client.frames = frames;
  client.received = [];
  client.packets = { in: {}, out: {} };
  client.on('message', (topic, payload, packet) => {
    client.received.push({ topic, payload: Buffer.from(payload), qos: packet.qos, retain: packet.retain, dup: packet.dup });
  });
  client.on('packetreceive', (p) => {
    client.packets.in[p.cmd] = (client.packets.in[p.cmd] || 0) + 1;
  });
  client.on('packetsend', (p) => {
    client.packets.out[p.cmd] = (client.packets.out[p.cmd] || 0) + 1;
  });
  const connack = await within(
    6000,
    'CONNACK',
    new Promise((resolve, reject) => {
      client.once('connect', resolve);
      client.once('error', reject);
      client.once('close', () => reject(new Error('closed before CONNACK')));
    }),
  );
  client.connack = connack;
  const code = connack.reasonCode ?? connack.returnCode ?? 0;
  run.check('connack', code === 0, { code, sessionPresent: connack.sessionPresent, subprotocol: frames.protocol });
  run.eq('subprotocol', frames.protocol, version === 3 ? 'mqttv3.1' : 'mqtt');
  return client;
}

/** Subscribes and checks the granted QoS. */
async function subscribe(client, topic, q) {
  const granted = await within(5000, 'SUBACK', client.subscribeAsync(topic, { qos: q }));
  run.eq('suback', granted.map((g) => g.qos), [q], { topic });
}

/** The payloads `prefix-0` … `prefix-(n-1)`. */
const payloads = (prefix, n) => Array.from({ length: n }, (_, i) => `${prefix}-${i}`);

/** Waits for `n` messages, then checks payloads (in order), QoS and flags, and that no
 * more arrive during a short settle. */
async function expectMessages(client, n, prefix, q, topic) {
  await waitFor(() => client.received.length >= n, 8000);
  const got = client.received.slice(0, n);
  run.eq('payloads_in_order', got.map((m) => m.payload.toString()), payloads(prefix, n));
  run.eq('delivered_qos', got.map((m) => m.qos), Array(n).fill(q));
  run.eq('topic', [...new Set(got.map((m) => m.topic))], [topic]);
  run.eq('retain_flag', got.filter((m) => m.retain).length, 0);
  await sleep(300);
  run.eq('no_extra_messages', client.received.length, n);
}

async function publish() {
  const client = await connect({ clientId: `ws-pub-${process.pid}` });
  const sent = payloads(args.prefix, count);
  for (const p of sent) {
    await within(5000, `publish ${p}`, client.publishAsync(args.topic, p, { qos }));
  }
  run.check('published', true, { count });
  if (qos === 1) run.eq('pubacks', client.packets.in.puback || 0, count);
  if (qos === 2) {
    run.eq('pubrecs', client.packets.in.pubrec || 0, count);
    run.eq('pubcomps', client.packets.in.pubcomp || 0, count);
  }
  await within(5000, 'end', client.endAsync());
  run.info({ framesOut: client.frames.framesOut, framesIn: client.frames.framesIn });
}

async function subscribeCmd() {
  const client = await connect({ clientId: `ws-sub-${process.pid}` });
  await subscribe(client, args.topic, qos);
  run.ready();
  await expectMessages(client, count, args.prefix, qos, args.topic);
  // The receiving half of each flow: PUBACK sent for QoS 1, PUBREC sent and PUBREL
  // received then PUBCOMP sent for QoS 2.
  if (qos === 1) run.eq('pubacks_sent', client.packets.out.puback || 0, count);
  if (qos === 2) {
    run.eq('pubrels_received', client.packets.in.pubrel || 0, count);
    run.eq('pubcomps_sent', client.packets.out.pubcomp || 0, count);
  }
  run.eq('text_frames_received', client.frames.textIn, 0);
  await within(5000, 'end', client.endAsync());
}

async function bigPublish() {
  const body = readFileSync(args.file);
  const client = await connect({ clientId: `ws-bigpub-${process.pid}` });
  const before = client.frames.framesOut;
  await within(10000, 'big publish', client.publishAsync(args.topic, body, { qos: 1 }));
  run.check('big_published', true, { bytes: body.length, sha256: sha256(body), frames: client.frames.framesOut - before });
  await within(5000, 'end', client.endAsync());
}

async function bigSubscribe() {
  const want = readFileSync(args.file);
  const client = await connect({ clientId: `ws-bigsub-${process.pid}` });
  await subscribe(client, args.topic, 1);
  const before = client.frames.framesIn;
  run.ready();
  await waitFor(() => client.received.length >= 1, 10000);
  const m = client.received[0];
  run.check('big_received', Boolean(m), { frames: client.frames.framesIn - before });
  if (m) {
    run.eq('big_length', m.payload.length, want.length);
    run.eq('big_sha256', sha256(m.payload), sha256(want));
  }
  await sleep(300);
  run.eq('no_extra_messages', client.received.length, 1);
  await within(5000, 'end', client.endAsync());
}

/** Connect options of a session that outlives the connection. */
function persistent() {
  const o = { clientId: args['client-id'], clean: false };
  if (version === 5) o.properties = { sessionExpiryInterval: 300 };
  return o;
}

async function sessionPrepare() {
  const client = await connect(persistent());
  run.eq('session_present_first', client.connack.sessionPresent, false);
  await subscribe(client, args.topic, 1);
  await within(5000, 'end', client.endAsync());
  run.check('disconnected', true);
}

async function sessionResume() {
  const client = await connect(persistent());
  run.eq('session_present_on_resume', client.connack.sessionPresent, true);
  await expectMessages(client, count, args.prefix, 1, args.topic);
  await within(5000, 'end', client.endAsync());
}

async function will() {
  const client = await connect({
    clientId: args['client-id'],
    will: { topic: args.topic, payload: Buffer.from(args.payload), qos: 1, retain: false },
  });
  if (args.disconnect) {
    await within(5000, 'end', client.endAsync());
    run.check('disconnected_normally', true);
    return;
  }
  // The test kills this process now: the TCP connection under the WebSocket ends
  // without DISCONNECT (and without a WebSocket Close frame).
  run.ready({ pid: process.pid });
  await sleep(60_000);
  run.check('killed', false, { detail: 'still running 60 s after ready' });
}

const commands = {
  publish,
  subscribe: subscribeCmd,
  'big-publish': bigPublish,
  'big-subscribe': bigSubscribe,
  'session-prepare': sessionPrepare,
  'session-resume': sessionResume,
  will,
};

const cmd = commands[args.command];
if (!cmd) throw new Error(`unknown command ${args.command}`);
await cmd();
run.finish();
