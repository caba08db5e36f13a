// What every Node peer shares: settings from the environment, the room bookkeeping and the
// message handling, so ws and uWebSockets.js differ only in their transport.
'use strict';
const env = (k) => {
  const v = process.env[k];
  if (!v) { console.error(`missing ${k}`); process.exit(2); }
  return v;
};
const settings = {
  port: Number(env('PORT')),
  cert: env('CERT'),
  key: env('KEY'),
  token: env('TOKEN'),
  origin: env('ORIGIN'),
  maxPayload: 4096 + 1024,
};
const ROOM = /^\/rooms\/([A-Za-z0-9_.-]{1,64})$/;
const ESC = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
// HTML-escaping rather than a full sanitiser: cheaper than wss-chat's ammonia, so the
// comparison favours the peers.
const escape = (s) => s.replace(/[&<>"']/g, (c) => ESC[c]);
const seqs = new Map();

// Check an upgrade; returns [status, room] with status 0 when it may proceed.
function gate(url, origin, authorization) {
  const m = ROOM.exec(url);
  if (!m) return [404, null];
  if (origin !== settings.origin) return [403, null];
  if (authorization !== `Bearer ${settings.token}`) return [401, null];
  return [0, m[1]];
}

// The frame to broadcast for one client message, or null to ignore it.
function outgoing(room, user, data) {
  let m;
  try { m = JSON.parse(data); } catch { return null; }
  if (!m || m.type !== 'message' || typeof m.text !== 'string' || m.text.length > 4096) return null;
  const seq = (seqs.get(room) || 0) + 1;
  seqs.set(room, seq);
  return JSON.stringify({ type: 'message', room, from: user, text: escape(m.text), seq, ts: Date.now() });
}

module.exports = { settings, gate, outgoing };
