// End-to-end test of the chat page in Debian's Chromium, driven by playwright-core.
// Run by tests/it/browser.rs, which starts the server and answers the RESTART handshake on
// stdin/stdout. Exits 0 when every check passed; prints what failed otherwise.
import { chromium } from 'playwright-core';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';

const { URL_BASE, CERT, ALICE, BOB, CAROL, SHOTS } = process.env;
const lines = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once('line', resolve));

// Trust the test certificate by its public key hash, the way Chromium's flag expects it.
const spki = new crypto.X509Certificate(fs.readFileSync(CERT)).publicKey.export({ type: 'spki', format: 'der' });
const spkiHash = crypto.createHash('sha256').update(spki).digest('base64');

const fail = (msg) => { console.error(`FAIL: ${msg}`); process.exit(1); };
const check = (cond, msg) => { if (!cond) fail(msg); };

const userData = fs.mkdtempSync(path.join(os.tmpdir(), 'wss-chat-chromium-'));
const context = await chromium.launchPersistentContext(userData, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  viewport: { width: 760, height: 560 },
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--disable-features=LocalNetworkAccessChecks', `--ignore-certificate-errors-spki-list=${spkiHash}`],
});
context.setDefaultTimeout(20000);

const dialogs = [];
const errors = [];
async function open(name, token) {
  const page = await context.newPage();
  page.on('dialog', (d) => { dialogs.push(`${name}: ${d.message()}`); d.dismiss().catch(() => {}); });
  page.on('pageerror', (e) => errors.push(`${name}: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`${name}: ${m.text()}`); });
  await page.goto(`${URL_BASE}/`);
  await page.fill('#token', token);
  await page.fill('#room', 'lobby');
  await page.click('#connect');
  return page;
}
const connected = (page, user) => page.waitForFunction(
  (u) => document.getElementById('status').textContent === `connected as ${u} in lobby`, user);
async function say(page, text) {
  await page.fill('#text', text);
  await page.click('#sendbtn');
}
// The last message from `from` on `page`, once its text matches.
async function lastFrom(page, from, text) {
  await page.waitForFunction(([f, t]) => [...document.querySelectorAll('#messages li')]
    .some((li) => li.querySelector('.from')?.textContent === f && li.querySelector('.text').textContent === t), [from, text]);
  return page.evaluate(([f, t]) => {
    const li = [...document.querySelectorAll('#messages li')]
      .find((l) => l.querySelector('.from')?.textContent === f && l.querySelector('.text').textContent === t);
    const body = li.querySelector('.text');
    return { text: body.textContent, elements: body.querySelectorAll('*').length, hasTime: !!li.querySelector('.time') };
  }, [from, text]);
}

// 1. Two pages chat.
const alice = await open('alice', ALICE);
const bob = await open('bob', BOB);
await connected(alice, 'alice');
await connected(bob, 'bob');
await say(alice, 'hello bob');
let m = await lastFrom(bob, 'alice', 'hello bob');
check(m.hasTime, 'messages show their time');
await say(bob, 'hi alice, all good here');
await lastFrom(alice, 'bob', 'hi alice, all good here');
// Each page lists who is present.
const members = (page) => page.$$eval('#members li span', (l) => l.map((x) => x.textContent));
await alice.waitForFunction(() => document.querySelectorAll('#members li').length === 2);
check(JSON.stringify(await members(alice)) === '["alice","bob"]', `alice sees ${await members(alice)}`);
check(JSON.stringify(await members(bob)) === '["alice","bob"]', `bob sees ${await members(bob)}`);

// 2. An XSS payload typed in one page shows as text in the other and runs nothing.
await say(alice, '1 < 2 <img src=x onerror=alert(1)> & <script>alert(2)</script><b onclick=alert(3)>done</b>');
m = await lastFrom(bob, 'alice', '1 < 2  & done');
check(m.elements === 0, `the delivered message has ${m.elements} elements; it should be text only`);
// The sender's own page shows its name and the server's sanitised text, not what was typed.
m = await lastFrom(alice, 'alice', '1 < 2  & done');
check(m.elements === 0, `alice's own copy has ${m.elements} elements; it should be text only`);
await say(alice, '<svg onload=alert(4)>');
await alice.waitForSelector('#error:not([hidden])');
check((await alice.textContent('#error')).includes('Nothing left'), 'an all-markup message is refused with a reason');
await bob.waitForTimeout(500);
check(dialogs.length === 0, `a dialog opened: ${dialogs}`);
check(errors.length === 0, `console errors: ${errors}`);

fs.mkdirSync(SHOTS, { recursive: true });
await alice.screenshot({ path: path.join(SHOTS, 'chat-alice.png') });
await bob.screenshot({ path: path.join(SHOTS, 'chat-bob.png') });

// 3. A page from a foreign origin cannot connect: the browser really sends that Origin.
const evil = await context.newPage();
await evil.route('https://evil.example/', (route) => route.fulfill({
  contentType: 'text/html',
  body: `<!doctype html><title>waiting</title><script>
    const ws = new WebSocket(${JSON.stringify(URL_BASE.replace('https:', 'wss:') + '/rooms/lobby')},
      ['wss-chat.v1', 'bearer.' + ${JSON.stringify(ALICE)}]);
    ws.onopen = () => { document.title = 'open'; ws.send(JSON.stringify({type: 'message', text: 'from evil'})); };
    ws.onclose = (e) => { if (document.title !== 'open') document.title = 'closed:' + e.code; };
  </script>`,
}));
await evil.goto('https://evil.example/');
await evil.waitForFunction(() => document.title !== 'waiting');
check((await evil.title()) === 'closed:1006', `foreign page: ${await evil.title()}`);
await evil.close();

// 4. A wrong token says so and stops retrying (a browser sees only 1006 for any refused
// upgrade; the page asks the server why).
const wrong = await context.newPage();
let attempts = 0;
wrong.on('websocket', () => { attempts += 1; });
await wrong.goto(`${URL_BASE}/`);
await wrong.fill('#token', 'not-a-valid-token');
await wrong.click('#connect');
await wrong.waitForFunction(() => document.getElementById('status').textContent === 'refused: not retrying');
check((await wrong.textContent('#error')).includes('refused this token (401)'), `wrong token: ${await wrong.textContent('#error')}`);
await wrong.waitForTimeout(3000); // the first retry would come after 0.5-1 s
check(attempts === 1, `a refused page kept retrying: ${attempts} attempts`);
await wrong.close();

// 5. Kill the server (SIGKILL) in the middle of a burst and restart it: the pages reconnect,
// resume where they stopped, send again what was not acked (same ids), and in the end each
// page shows every message exactly once.
const count = (page, text) => page.$$eval('#messages li .text', (l, t) => l.filter((x) => x.textContent === t).length, text);
for (let i = 1; i <= 3; i += 1) await say(alice, `burst ${i}`);
const restarted = nextLine(); // listening before asking: a line with no listener is lost
console.log('RESTART');
for (let i = 4; i <= 6; i += 1) await say(alice, `burst ${i}`); // typed while it is down
check((await restarted) === 'RESTARTED', 'the test driver did not restart the server');
await connected(alice, 'alice');
await connected(bob, 'bob');
for (let i = 1; i <= 6; i += 1) {
  await lastFrom(bob, 'alice', `burst ${i}`);
  await lastFrom(alice, 'alice', `burst ${i}`);
}
await say(bob, 'back after the restart');
await lastFrom(alice, 'bob', 'back after the restart');
for (const page of [alice, bob]) {
  for (const t of ['hello bob', 'burst 1', 'burst 2', 'burst 3', 'burst 4', 'burst 5', 'burst 6', 'back after the restart']) {
    const n = await count(page, t);
    check(n === 1, `"${t}" is shown ${n} times`);
  }
}
const notices = await alice.$$eval('#messages li.notice .text', (l) => l.map((x) => x.textContent));
check(notices.some((n) => n.startsWith('Disconnected')), 'the page showed the disconnection');
check(!notices.some((n) => n.includes('could not be resumed')), `the view was not resumed: ${notices}`);

// 6. A late page shows the last few messages (history.on_join) and pages back to the first
// with "load earlier", in order, with no gap.
const late = await open('bob-late', BOB);
await connected(late, 'bob');
const seqs = () => late.$$eval('#messages li[data-seq]', (l) => l.map((x) => Number(x.dataset.seq)));
await late.waitForFunction(() => document.querySelectorAll('#messages li[data-seq]').length > 0);
check(!(await seqs()).includes(1), `the late page got everything at once: ${await seqs()}`);
await late.click('#earlier');
await lastFrom(late, 'alice', 'hello bob');
await late.waitForSelector('#earlier', { state: 'hidden' });
const all = await seqs();
check(all.every((s, i) => s === i + 1), `seqs in the late page: ${all}`);
await late.close();

// 7. Roles and moderation (alice moderates lobby, carol only reads it): a reader has no input
// box, a member no controls; the moderator deletes a message (a tombstone on every page),
// mutes bob (his page says so) and kicks him (his page stops, without retrying).
const reader = await open('carol', CAROL);
await connected(reader, 'carol');
check(await reader.isHidden('#send'), 'a reader sees an input box');
check(await bob.isVisible('#send'), 'a member has no input box');
check((await bob.$$eval('button.mod', (b) => b.length)) === 0, 'a member sees moderator controls');
await lastFrom(reader, 'bob', 'back after the restart');
await alice.evaluate(() => [...document.querySelectorAll('#messages li')]
  .find((l) => l.querySelector('.text')?.textContent === 'back after the restart')
  .querySelector('button.mod').click());
for (const page of [alice, bob, reader]) {
  await page.waitForFunction(() => [...document.querySelectorAll('#messages li.deleted .text')]
    .some((t) => t.textContent === 'message deleted'));
  check((await count(page, 'back after the restart')) === 0, 'a deleted message is still shown');
}
await alice.click('#members li:has-text("bob") button:has-text("mute")');
await bob.waitForFunction(() => [...document.querySelectorAll('#messages li.notice .text')]
  .some((t) => t.textContent === 'alice muted bob for 300 s'));
await say(bob, 'am I muted?');
await bob.waitForFunction(() => document.getElementById('error').textContent.includes('muted you'));
check((await count(alice, 'am I muted?')) === 0, 'a muted message reached alice');
await alice.click('#members li:has-text("bob") button:has-text("kick")');
await bob.waitForFunction(() => document.getElementById('status').textContent === 'removed from the room: not reconnecting');
await bob.screenshot({ path: `${SHOTS}/kicked-bob.png` });
await alice.screenshot({ path: `${SHOTS}/moderator-alice.png` });

check(dialogs.length === 0 && errors.length === 0, `dialogs ${dialogs}, errors ${errors}`);
await context.close();
fs.rmSync(userData, { recursive: true, force: true });
console.log('OK');
process.exit(0);
