#!/usr/bin/env node
// A socktop_agent client in Node.js: polls metrics, disks and processes at the
// recommended intervals over one WebSocket, decodes every answer (JSON text, or
// protobuf gzipped when it starts 1f 8b), and reconnects with exponential backoff.
//
//   npm ci
//   node socktop_client.js ws://HOST:3000/ws [--token T] [--duration SECONDS]
//
// The processes schema is the agent's own proto/processes.proto, loaded with
// protobufjs and looked up as the published guide does: lookupType('ProcessList').

'use strict';

const path = require('path');
const { gunzipSync } = require('zlib');
const { parseArgs } = require('util');
const WebSocket = require('ws');
const protobuf = require('protobufjs');

// The intervals the agent's guide recommends (the socktop TUI polls as often).
const INTERVALS_MS = { metrics: 500, disks: 5000, processes: 2000 };
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 30000;

const { values: options, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    token: { type: 'string' },
    proto: { type: 'string', default: path.join(__dirname, '..', '..', 'proto', 'processes.proto') },
    duration: { type: 'string' },
  },
});
let url = positionals[0] || 'ws://localhost:3000/ws';
if (options.token) url += (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(options.token);

// keepCase: protobufjs turns process_count into processCount by default; keep the
// schema's names.
const ProcessList = new protobuf.Root().loadSync(options.proto, { keepCase: true }).lookupType('ProcessList');

// One answer: a text frame is JSON; a binary frame is gunzipped when it starts
// 1f 8b, then protobuf for processes and JSON otherwise.
function decode(data, isBinary, kind) {
  if (!isBinary) return JSON.parse(data.toString('utf8'));
  const bytes = data[0] === 0x1f && data[1] === 0x8b ? gunzipSync(data) : data;
  if (kind === 'processes') return ProcessList.toObject(ProcessList.decode(bytes), { longs: Number, defaults: true, arrays: true });
  return JSON.parse(bytes.toString('utf8'));
}

function show(kind, answer) {
  if (answer && answer.error) {
    console.log(`error ${answer.error}`);
  } else if (kind === 'metrics') {
    const mem = (100 * answer.mem_used) / Math.max(answer.mem_total, 1);
    console.log(`metrics host=${answer.hostname} cpu=${answer.cpu_total.toFixed(1)}% ` +
      `cores=${answer.cpu_per_core.length} mem_total=${answer.mem_total} mem_used=${mem.toFixed(1)}%`);
  } else if (kind === 'disks') {
    const listed = answer.map((d) => `${d.name}:${d.available}/${d.total}`).join(' ');
    console.log(`disks count=${answer.length} ${listed}`);
  } else {
    const rows = answer.processes;
    const top = [...rows].sort((a, b) => b.cpu_usage - a.cpu_usage).slice(0, 3);
    const listed = top.map((p) => `${p.pid}:${p.name}:${p.cpu_usage.toFixed(1)}%`).join(' ');
    console.log(`processes count=${answer.process_count} rows=${rows.length} top=${listed}`);
  }
}

let backoffMs = BACKOFF_FIRST_MS;

function connect() {
  const ws = new WebSocket(url);
  // Answers come back in request order and carry no id: the queue says what each
  // one answers.
  const pending = [];
  const timers = [];
  ws.on('open', () => {
    console.log(`connected ${url}`);
    backoffMs = BACKOFF_FIRST_MS;
    for (const [kind, ms] of Object.entries(INTERVALS_MS)) {
      const ask = () => {
        pending.push(kind);
        ws.send(JSON.stringify({ type: kind }));
      };
      ask();
      timers.push(setInterval(ask, ms));
    }
  });
  ws.on('message', (data, isBinary) => {
    const kind = pending.shift();
    show(kind, decode(data, isBinary, kind));
  });
  ws.on('error', (error) => console.log(`connection failed: ${error.message}`));
  ws.on('close', () => {
    timers.forEach(clearInterval);
    console.log(`reconnecting in ${(backoffMs / 1000).toFixed(1)}s`);
    setTimeout(connect, backoffMs);
    backoffMs = Math.min(backoffMs * 2, BACKOFF_MAX_MS);
  });
}

if (options.duration) setTimeout(() => process.exit(0), Number(options.duration) * 1000);
connect();
