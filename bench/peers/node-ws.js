// Peer: Node `ws` over https, one room map, broadcast to all but the sender.
'use strict';
const fs = require('fs');
const https = require('https');
const { WebSocketServer } = require('ws');
const { settings, gate, outgoing } = require('./common');

const rooms = new Map();
const server = https.createServer({ cert: fs.readFileSync(settings.cert), key: fs.readFileSync(settings.key) });
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: settings.maxPayload });
server.on('upgrade', (req, socket, head) => {
  const [status, room] = gate(req.url, req.headers.origin, req.headers.authorization);
  if (status) {
    socket.end(`HTTP/1.1 ${status} Refused\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    if (!rooms.has(room)) rooms.set(room, new Set());
    const members = rooms.get(room);
    members.add(ws);
    ws.on('message', (data, isBinary) => {
      if (isBinary) return ws.close(1003);
      const out = outgoing(room, 'user', data.toString());
      if (out === null) return;
      for (const peer of members) if (peer !== ws && peer.readyState === 1) peer.send(out);
    });
    ws.on('close', () => members.delete(ws));
    ws.on('error', () => members.delete(ws));
  });
});
server.listen(settings.port, '127.0.0.1', () => console.log(`listening on 127.0.0.1:${settings.port}`));
