// Peer: uWebSockets.js over TLS, pub/sub per room (ws.publish skips the sender).
'use strict';
const path = require('path');
const { settings, gate, outgoing } = require('./common');

// The package's own loader silently falls back to `ws` when it cannot load its addon, which
// would benchmark the wrong server: load the addon for this Node ABI directly.
const dir = path.dirname(require.resolve('@trufflesuite/uws-js-unofficial/package.json'));
const uWS = require(path.join(dir, "binaries", `uws_${process.platform}_${process.arch}_${process.versions.modules}.node`));

uWS.SSLApp({ cert_file_name: settings.cert, key_file_name: settings.key })
  .ws('/rooms/:room', {
    compression: uWS.DISABLED,
    maxPayloadLength: settings.maxPayload,
    idleTimeout: 120,
    upgrade: (res, req, context) => {
      const [status, room] = gate(req.getUrl(), req.getHeader('origin'), req.getHeader('authorization'));
      if (status) {
        res.writeStatus(`${status} Refused`).end();
        return;
      }
      res.upgrade({ room }, req.getHeader('sec-websocket-key'), req.getHeader('sec-websocket-protocol'),
        req.getHeader('sec-websocket-extensions'), context);
    },
    open: (ws) => ws.subscribe(ws.getUserData().room),
    message: (ws, message, isBinary) => {
      if (isBinary) return ws.end(1003);
      const room = ws.getUserData().room;
      const out = outgoing(room, 'user', Buffer.from(message).toString());
      if (out !== null) ws.publish(room, out, false);
    },
  })
  .listen('127.0.0.1', settings.port, (ok) => {
    if (!ok) { console.error('listen failed'); process.exit(1); }
    console.log(`listening on 127.0.0.1:${settings.port}`);
  });
