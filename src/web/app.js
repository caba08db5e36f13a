// wss-chat browser client. Loaded from /app.js (no inline script), so the page can carry a
// strict Content-Security-Policy. The token travels in the subprotocol list, never the URL.
'use strict';

const $ = (id) => document.getElementById(id);
const MIN_DELAY = 1000;
const MAX_DELAY = 30000;

let ws = null;
let attempt = 0;        // reconnects since the last good connection
let wanted = null;      // {token, room} while the user wants to be connected
let timer = null;
let me = null;          // our user name, from the welcome
let epoch = null;       // the room's epoch and the last seq shown, to resume after a reconnect
let lastSeq = 0;
let shown = new Set();  // seqs in the view: a message is never shown twice
// Our messages not acked yet, id -> text, in the order typed. Sent again with the same id after
// a reconnect: the server stores an id once, so one that did get through is only acked.
let unacked = new Map();
// Ids must not repeat across page loads within the server's dedup window, or a new message
// would be taken for a resend of an old one.
const idPrefix = Array.from(crypto.getRandomValues(new Uint8Array(6)), (b) => b.toString(16).padStart(2, '0')).join('');
let nextId = 1;
let present = new Set(); // users in the room
let role = 'member';     // ours in this room, from the welcome: reader, member or moderator

function status(text, live) {
  $('status').textContent = text;
  $('status').classList.toggle('live', !!live);
}

function showError(text) {
  const e = $('error');
  e.textContent = text;
  e.hidden = !text;
}

// A message line; `seq` orders it among the others (a page of older ones goes above).
function add(kind, from, ts, html, seq) {
  const li = document.createElement('li');
  li.className = kind;
  if (seq !== undefined) {
    li.dataset.seq = String(seq);
    shown.add(seq);
  }
  if (ts) {
    const t = document.createElement('span');
    t.className = 'time';
    t.textContent = new Date(ts).toLocaleTimeString();
    li.append(t);
  }
  if (from) {
    const f = document.createElement('span');
    f.className = 'from';
    f.textContent = from;
    li.append(f);
  }
  const body = document.createElement('span');
  body.className = 'text';
  // The server delivers message text already sanitised: safe to insert as HTML, as is.
  if (html !== undefined) body.innerHTML = html;
  li.append(body);
  const list = $('messages');
  const later = seq === undefined ? null
    : [...list.children].find((l) => l.dataset.seq !== undefined && Number(l.dataset.seq) > seq);
  if (later) {
    list.insertBefore(li, later);
  } else {
    list.append(li);
    list.scrollTop = list.scrollHeight;
  }
  return body;
}

function showMessage(m) {
  if (shown.has(m.seq)) return;
  if (m.seq > lastSeq) lastSeq = m.seq;
  const from = m.via === 'api' ? `${m.from} (bot)` : m.from;
  const body = add(m.from === me && !m.via ? 'mine' : '', from, m.ts, m.deleted ? undefined : m.text, m.seq);
  if (m.deleted) markDeleted(body.parentElement);
  else if (role === 'moderator') addDeleteButton(body.parentElement, m.seq);
}

// A tombstone: the seq stays in the view, the text is gone.
function markDeleted(li) {
  li.classList.add('deleted');
  li.querySelector('.text').textContent = 'message deleted';
  li.querySelector('button.mod')?.remove();
}

function addDeleteButton(li, seq) {
  const b = document.createElement('button');
  b.type = 'button';
  b.className = 'mod';
  b.textContent = 'delete';
  b.title = 'Delete this message for everyone';
  b.addEventListener('click', () => moderate({ type: 'delete', seq }));
  li.append(b);
}

function moderate(frame) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ ...frame, id: `mod-${nextId++}` }));
}

// What a moderation frame says, for the notice line.
function describe(m) {
  switch (m.action) {
    case 'kick': return `${m.by} removed ${m.user} from the room${m.reason ? `: ${m.reason}` : ''}`;
    case 'mute': return `${m.by} muted ${m.user} for ${m.seconds} s`;
    case 'delete': return `${m.by} deleted a message`;
    default: return `${m.by}: ${m.action}`;
  }
}

function clearView() {
  for (const li of [...document.querySelectorAll('#messages li:not(.notice)')]) li.remove();
  shown = new Set();
  lastSeq = 0;
}

function showMembers() {
  const list = $('members');
  list.replaceChildren(...[...present].sort().map((u) => {
    const li = document.createElement('li');
    const name = document.createElement('span');
    name.textContent = u;
    li.append(name);
    if (role === 'moderator' && u !== me) {
      for (const [label, frame] of [['mute', { type: 'mute', user: u, seconds: 300 }],
        ['kick', { type: 'kick', user: u }]]) {
        const b = document.createElement('button');
        b.type = 'button';
        b.className = 'mod';
        b.textContent = label;
        b.title = label === 'mute' ? `Mute ${u} for 5 minutes` : `Remove ${u} from the room`;
        b.addEventListener('click', () => moderate(frame));
        li.append(b);
      }
    }
    return li;
  }));
  $('present').textContent = `${present.size} present`;
}

// Ask for the page of messages older than the oldest shown.
function loadEarlier() {
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  const oldest = Math.min(...shown);
  const req = { type: 'history', id: 'earlier', limit: 50 };
  if (Number.isFinite(oldest)) req.before = oldest;
  ws.send(JSON.stringify(req));
}

function sendNow(id, text) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'message', text, id }));
}

function notice(text) {
  add('notice', '', Date.now()).textContent = text;
}

// Typing stays possible while reconnecting: what is sent then waits and goes out on reconnect.
function setSending(on) {
  $('text').disabled = !on;
  $('sendbtn').disabled = !on;
}

function connect() {
  if (!wanted) return;
  clearTimeout(timer);
  const { token, room } = wanted;
  status(`connecting to ${room}…`);
  // Resume where the view stopped: the server replays exactly what was missed, or says it
  // cannot (recovered: false) and the view starts again.
  const resume = epoch ? `?since=${lastSeq}&epoch=${encodeURIComponent(epoch)}` : '';
  const sock = new WebSocket(`wss://${location.host}/rooms/${encodeURIComponent(room)}${resume}`,
    ['wss-chat.v1', `bearer.${token}`]);
  ws = sock;
  let welcomed = false;
  sock.onmessage = (ev) => {
    let m;
    try { m = JSON.parse(ev.data); } catch { return; }
    switch (m.type) {
      case 'welcome':
        welcomed = true;
        me = m.user;
        if (m.recovered === false || (epoch !== null && m.epoch !== epoch)) {
          // What we show may not match the room any more: start the view again.
          clearView();
          if (epoch !== null) notice('The room\'s history could not be resumed; showing it afresh.');
        }
        epoch = m.epoch;
        role = m.role || 'member';
        // A reader receives and pages history but cannot post: no input box at all.
        $('send').hidden = role === 'reader';
        attempt = 0; // a good connection resets the backoff
        present = new Set(m.members || []);
        showMembers();
        $('earlier').hidden = false;
        showError('');
        status(`connected as ${m.user} in ${m.room}`, true);
        setSending(true);
        // What was typed and not acked before the connection went: the same ids again.
        for (const [id, text] of unacked) sendNow(id, text);
        break;
      case 'message':
        showMessage(m);
        break;
      case 'history':
        for (const msg of m.messages) showMessage(msg);
        if (m.id === 'earlier' && !m.has_more) $('earlier').hidden = true;
        break;
      case 'resync':
        // The server lost the room's history (its shared store restarted empty): what we
        // show no longer matches; new messages start again at seq 1.
        clearView();
        epoch = null;
        notice('The room\'s history was reset by the server; showing it afresh.');
        break;
      case 'deleted': {
        const li = document.querySelector(`#messages li[data-seq="${Number(m.seq)}"]`);
        if (li) markDeleted(li);
        break;
      }
      case 'moderation':
        notice(describe(m));
        break;
      case 'join':
        present.add(m.user);
        showMembers();
        break;
      case 'leave':
        present.delete(m.user);
        showMembers();
        break;
      case 'ack':
        // Shown as the others saw it: our name and the server's sanitised text, never what
        // was typed (the server may have removed markup or hidden characters from it).
        if (unacked.delete(m.id) && !shown.has(m.seq)) {
          if (m.seq > lastSeq) lastSeq = m.seq;
          const body = add('mine', me, Date.now(), m.text, m.seq);
          if (role === 'moderator') addDeleteButton(body.parentElement, m.seq);
        }
        break;
      case 'error':
        if (m.code === 'rate_limited') {
          showError(`Slow down: you can send again in ${Math.ceil((m.retry_after_ms || 0) / 100) / 10} s.`);
        } else if (m.code === 'too_long') {
          showError('That message is too long.');
        } else if (m.code === 'empty') {
          showError('Nothing left to send after removing markup.');
        } else if (m.code === 'muted') {
          showError(`A moderator muted you here for ${Math.ceil((m.retry_after_ms || 0) / 1000)} s more.`);
        } else if (m.code === 'forbidden') {
          showError(`Not allowed: ${m.message}`);
        } else {
          showError(`Refused: ${m.message || m.code}`);
        }
        if (m.id) unacked.delete(m.id);
        break;
    }
  };
  sock.onclose = async (ev) => {
    if (ws !== sock) return;
    ws = null;
    if (!welcomed) setSending(false);
    if (!wanted) { status('not connected'); return; }
    if (ev.code === 4003) {
      // Kicked: coming straight back would be refused until the ban ends.
      wanted = null;
      setSending(false);
      status('removed from the room: not reconnecting');
      showError(`A moderator removed you from this room${ev.reason ? `: ${ev.reason}` : ''}.`);
      return;
    }
    // A refused upgrade looks like a network failure to a page (1006, no status). Ask the
    // server whether this token and page would be let in; a refusal stops the retries until
    // the user changes something and connects again.
    if (!welcomed && ev.code === 1006) {
      const refusal = await checkRefusal(token, room);
      if (refusal && wanted && wanted.token === token && wanted.room === room) {
        wanted = null;
        setSending(false);
        status('refused: not retrying');
        showError(refusal);
        return;
      }
    }
    // Exponential backoff with jitter: 1 s doubling to 30 s, a random 50-100 % of it.
    const base = Math.min(MAX_DELAY, MIN_DELAY * 2 ** attempt);
    const delay = Math.round(base * (0.5 + Math.random() * 0.5));
    attempt += 1;
    const why = ev.code === 1006 ? 'connection lost or refused' : `${ev.code} ${ev.reason || ''}`.trim();
    status(`disconnected (${why}); reconnecting in ${(delay / 1000).toFixed(1)} s`);
    notice(`Disconnected: ${why}.`);
    timer = setTimeout(connect, delay);
  };
}

// Why the server would refuse this token and room, or null when it would not (or cannot say).
async function checkRefusal(token, room) {
  let r;
  try {
    r = await fetch(`/check/${encodeURIComponent(room)}`, {
      method: 'POST', headers: { Authorization: `Bearer ${token}` }, cache: 'no-store',
    });
  } catch { return null; } // the network itself: keep retrying
  if (r.status === 401) return 'The server refused this token (401): check it and connect again.';
  if (r.status === 403) return `Not allowed (403): this token may not enter "${room}" (or was removed from it for a while), or this page's origin is not allowed.`;
  return null;
}

document.addEventListener('DOMContentLoaded', () => {
  $('earlier').addEventListener('click', loadEarlier);
  $('join').addEventListener('submit', (e) => {
    e.preventDefault();
    wanted = { token: $('token').value.trim(), room: $('room').value.trim() };
    // A new connection from the form starts a new view.
    epoch = null;
    clearView();
    for (const li of [...document.querySelectorAll('#messages li')]) li.remove();
    unacked = new Map();
    present = new Set();
    showMembers();
    attempt = 0;
    if (ws) { const old = ws; ws = null; old.close(1000); }
    connect();
  });
  $('send').addEventListener('submit', (e) => {
    e.preventDefault();
    const text = $('text').value;
    if (!text.trim() || !wanted) return;
    const id = `${idPrefix}-${nextId++}`;
    unacked.set(id, text);
    sendNow(id, text); // or on the next welcome, while reconnecting
    $('text').value = '';
    showError('');
  });
});
