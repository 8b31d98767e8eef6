// WebTransport from a real browser: headless Chromium (chromium.mjs) opens
// `new WebTransport(URL, { serverCertificateHashes })` sessions to Tollgate
// and exchanges messages in Tollgate's framing: each message on a
// unidirectional stream of its own, one type byte (0x01 text, 0x02 binary),
// the payload, FIN; replies arrive the same way on server-opened streams.
//
// The page is a secure context (WebTransport needs one): `http://127.0.0.1:N/`
// served by a node:http server of this driver on loopback (a page Playwright
// fulfils itself counts as public, and Chromium's Local Network Access checks
// then block sessions to 127.0.0.1). Chromium
// trusts the server by the SHA-256 of its certificate (ECDSA P-256, valid
// under 14 days), so no certificate flags are involved; names other than
// 127.0.0.1 resolve to nothing, so Chromium's own lookups stay local.
//
// usage: node wt_browser.mjs CERT_SHA256_HEX SCENARIOS_JSON
// SCENARIOS_JSON: [{ name, url, messages: [{ type: "text"|"binary", data }],
//                    burst: bool, close: { closeCode, reason },
//                    replies: N, serverCloses: bool }]
//   (binary `data` is a list of byte values; `close` is what the page passes
//   to `transport.close()` after the replies, { closeCode: 0, reason: "done" }
//   when absent; `replies` is how many replies to read, one per message
//   when absent; with `serverCloses` the page never closes: it waits for
//   Tollgate to close the session, and `incomingDone` tells whether the
//   incoming streams then ended)
// prints one JSON object: { results: { NAME: { opened, error, replies:
//   [{ type, data }], closed: { ok, info: { closeCode, reason } | error },
//   incomingDone } }, console, error }
import { createServer } from "node:http";
import { openPage, watchdog, withChromium } from "./chromium.mjs";

const [hashHex, scenariosJson] = process.argv.slice(2);
const scenarios = JSON.parse(scenariosJson);
const LIMIT_MS = 20000;

const timer = watchdog("wt_browser.mjs", 90000);

const site = createServer((_req, res) => {
  res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
  res.end("<!doctype html><title>wt</title>");
});
await new Promise((resolve) => site.listen(0, "127.0.0.1", resolve));
const pageUrl = `http://127.0.0.1:${site.address().port}/`;

const args = ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"];
const report = await withChromium(args, LIMIT_MS, async (browser) => {
  const messages = [];
  const page = await openPage(browser, messages);
  const out = { console: messages, results: {} };
  try {
    await page.goto(pageUrl, { timeout: LIMIT_MS });
    for (const scenario of scenarios) {
      out.results[scenario.name] = await page.evaluate(runScenario, { scenario, hashHex, limitMs: 10000 });
    }
  } catch (e) {
    out.error = String(e);
  }
  return out;
});
site.close();
console.log(JSON.stringify(report));
clearTimeout(timer);

// Runs in the page: one session, each message sent then its reply read.
async function runScenario({ scenario, hashHex, limitMs }) {
  const bounded = (promise, what) =>
    Promise.race([
      promise,
      new Promise((_, reject) => setTimeout(() => reject(new Error(`timeout: ${what}`)), limitMs)),
    ]);
  const hash = new Uint8Array(hashHex.match(/../g).map((h) => parseInt(h, 16)));
  const result = { secure: isSecureContext, opened: false, replies: [] };
  let wt;
  try {
    wt = new WebTransport(scenario.url, { serverCertificateHashes: [{ algorithm: "sha-256", value: hash }] });
    await bounded(wt.ready, "ready");
    result.opened = true;
  } catch (e) {
    result.error = String(e);
    if (wt) {
      result.closed = await bounded(wt.closed, "closed").then(
        (info) => ({ ok: true, info }),
        (e) => ({ ok: false, error: String(e) }),
      );
    }
    return result;
  }
  try {
    const incoming = wt.incomingUnidirectionalStreams.getReader();
    const send = async (message) => {
      const payload =
        message.type === "text" ? new TextEncoder().encode(message.data) : new Uint8Array(message.data);
      const framed = new Uint8Array(payload.length + 1);
      framed[0] = message.type === "text" ? 0x01 : 0x02;
      framed.set(payload, 1);
      const stream = await bounded(wt.createUnidirectionalStream(), "createUnidirectionalStream");
      const writer = stream.getWriter();
      // Not awaited one by one in a burst: the streams go out back to back.
      return Promise.all([writer.write(framed), writer.close()]);
    };
    // A burst opens every stream before reading any reply; otherwise each
    // message waits for its reply.
    const sent = [];
    for (const message of scenario.messages) {
      sent.push(send(message));
      if (!scenario.burst) await bounded(sent.at(-1), "write");
    }
    await bounded(Promise.all(sent), "writes");
    for (let i = 0; i < (scenario.replies ?? scenario.messages.length); i++) {
      const { value: replyStream, done } = await bounded(incoming.read(), "incoming stream");
      if (done) throw new Error("no more incoming streams");
      const reader = replyStream.getReader();
      const chunks = [];
      for (;;) {
        const { value, done } = await bounded(reader.read(), "reply bytes");
        if (done) break;
        chunks.push(...value);
      }
      const body = new Uint8Array(chunks.slice(1));
      result.replies.push(
        chunks[0] === 0x01
          ? { type: "text", data: new TextDecoder("utf-8", { fatal: true }).decode(body) }
          : chunks[0] === 0x02
            ? { type: "binary", data: [...body] }
            : { type: `unknown ${chunks[0]}`, data: [...body] },
      );
    }
    if (scenario.serverCloses) {
      // Tollgate's close: no further stream, and the session's end with its code.
      result.incomingDone = await bounded(incoming.read(), "end of incoming streams").then(
        ({ done }) => done,
        (e) => String(e),
      );
    }
  } catch (e) {
    result.error = String(e);
  }
  if (!scenario.serverCloses) wt.close(scenario.close ?? { closeCode: 0, reason: "done" });
  result.closed = await bounded(wt.closed, "closed").then(
    (info) => ({ ok: true, info }),
    (e) => ({ ok: false, error: String(e) }),
  );
  return result;
}
