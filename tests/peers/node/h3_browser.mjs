// HTTP/3 from a real browser: headless Chromium (chromium.mjs) forced onto
// QUIC for one origin loads a page from it and calls gRPC-Web on it.
// Bundles browser/h3_page.js (@connectrpc/connect-web) with esbuild into
// SITE_DIR as h3_page.js, next to browser/h3.html as index.html (the test's
// HTTP/1.1 backend serves that directory through Tollgate), opens PAGE_URL
// and runs window.runCalls() there.
//
// Chromium speaks QUIC to the origin of PAGE_URL from the first request on
// (--origin-to-force-quic-on: no TCP, no Alt-Svc discovery) and trusts the
// test certificate by its public key (--ignore-certificate-errors-spki-list,
// the base64 SHA-256 of CERT_PEM's SubjectPublicKeyInfo), so a QUIC failure
// fails the page rather than falling back to TCP. `localhost` resolves to ::1
// first, and forced QUIC tries no other address (ERR_QUIC_HANDSHAKE_FAILED
// when nothing listens there): a host-resolver rule sends it to 127.0.0.1,
// where Tollgate listens, and every other name to NOTFOUND, so Chromium's own
// background lookups never leave the machine.
//
// usage: node h3_browser.mjs SITE_DIR CERT_PEM PAGE_URL NETLOG_FILE
// prints one JSON object:
//   { spki, result, navigation: {name, nextHopProtocol}, resources: [{name,
//     initiatorType, nextHopProtocol}], responses: [{url, protocol, status}],
//     console, netlog: {quic_sessions, versions, certificates, closed,
//     tcp_connects}, error }
// where responses are what Chromium's network stack reported per response
// (DevTools protocol), netlog sums up Chromium's NetLog (--log-net-log; the
// whole log stays in NETLOG_FILE) and error is set when the page could not be
// loaded or driven (netlog.closed then says why QUIC failed).
import { copyFileSync, readFileSync } from "node:fs";
import { X509Certificate, createHash } from "node:crypto";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { bundle, openPage, watchdog, withChromium } from "./chromium.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const [siteDir, certPem, pageUrl, netlog] = process.argv.slice(2);
const LIMIT_MS = 20000;

const timer = watchdog("h3_browser.mjs", 90000);

await bundle(join(here, "browser/h3_page.js"), join(siteDir, "h3_page.js"));
copyFileSync(join(here, "browser/h3.html"), join(siteDir, "index.html"));

const spkiDer = new X509Certificate(readFileSync(certPem)).publicKey.export({ type: "spki", format: "der" });
const spki = createHash("sha256").update(spkiDer).digest("base64");
const origin = new URL(pageUrl);

const args = [
  "--enable-quic",
  `--origin-to-force-quic-on=${origin.host}`,
  `--ignore-certificate-errors-spki-list=${spki}`,
  `--host-resolver-rules=MAP ${origin.hostname} 127.0.0.1, MAP * ~NOTFOUND`,
  `--log-net-log=${netlog}`,
];
const report = await withChromium(args, LIMIT_MS, async (browser) => {
  const messages = [];
  const responses = [];
  const page = await openPage(browser, messages);
  const cdp = await browser.newCDPSession(page);
  cdp.on("Network.responseReceived", ({ response }) =>
    responses.push({ url: response.url, protocol: response.protocol, status: response.status }),
  );
  await cdp.send("Network.enable");
  const out = { spki, console: messages, responses };
  try {
    await page.goto(pageUrl, { timeout: LIMIT_MS });
    await page.waitForFunction(() => typeof window.runCalls === "function", null, { timeout: LIMIT_MS });
    out.result = await page.evaluate(() => window.runCalls());
    // A fetch's resource-timing entry is queued when its body ends; wait for all three calls.
    await page.waitForFunction(
      () => performance.getEntriesByType("resource").filter((e) => e.initiatorType === "fetch").length >= 3,
      null,
      { timeout: LIMIT_MS },
    );
    Object.assign(
      out,
      await page.evaluate(() => {
        const pick = ({ name, initiatorType, nextHopProtocol }) => ({ name, initiatorType, nextHopProtocol });
        return {
          navigation: pick(performance.getEntriesByType("navigation")[0]),
          resources: performance.getEntriesByType("resource").map(pick),
        };
      }),
    );
  } catch (e) {
    out.error = String(e);
  }
  return out;
});
report.netlog = summarize(netlog);
console.log(JSON.stringify(report));
clearTimeout(timer);

// What the NetLog (complete once Chromium has exited) says about QUIC and TCP.
function summarize(file) {
  let log;
  try {
    log = JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    return { error: `unreadable NetLog: ${e}` };
  }
  const names = Object.fromEntries(Object.entries(log.constants.logEventTypes).map(([k, v]) => [v, k]));
  const params = (name) => log.events.filter((e) => names[e.type] === name && e.params).map((e) => e.params);
  const unique = (values) => [...new Set(values.map((v) => JSON.stringify(v)))].map((v) => JSON.parse(v));
  return {
    quic_sessions: params("QUIC_SESSION").filter((p) => p.host).length,
    versions: unique(params("QUIC_SESSION_VERSION_NEGOTIATED").map((p) => p.version)),
    certificates: unique(params("QUIC_SESSION_CERTIFICATE_VERIFIED").map((p) => p.subjects)),
    closed: unique(params("QUIC_SESSION_CLOSED")),
    tcp_connects: params("TCP_CONNECT_ATTEMPT").map((p) => p.address),
  };
}
