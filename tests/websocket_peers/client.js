// A WebSocket client on Node `ws`, run by tests/websocket.rs: subprotocol
// `chat`, a text, a binary and a ping round-trip, then a client close with
// 4001; prints one JSON line of what it saw.
const WebSocket = require('ws');

const ws = new WebSocket(process.argv[2], ['superchat', 'chat']);
const out = {};
const timer = setTimeout(() => { console.log(JSON.stringify({ error: 'timeout', ...out })); process.exit(2); }, 10000);
let step = 0;
ws.on('open', () => { out.subprotocol = ws.protocol; ws.send('hello from node'); });
ws.on('message', (data, isBinary) => {
  if (step === 0) { out.text = data.toString(); step = 1; ws.send(Buffer.from([9, 8, 7])); }
  else if (step === 1) { out.binary = isBinary ? [...data] : null; step = 2; ws.ping('node-ping'); }
});
ws.on('pong', (data) => {
  if (step === 2) { out.pong = data.toString(); step = 3; ws.close(4001, 'node bye'); }
});
ws.on('close', (code, reason) => {
  out.close_code = code; out.close_reason = reason.toString();
  clearTimeout(timer);
  console.log(JSON.stringify(out));
});
ws.on('error', (e) => { console.log(JSON.stringify({ error: String(e) })); process.exit(1); });
