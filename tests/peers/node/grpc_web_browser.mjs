// A gRPC-Web client we did not write, in a real browser: bundles
// browser/page.js (@connectrpc/connect-web) with esbuild into SITE_DIR (which
// the test serves from a Tollgate static_dir route), then opens each PAGE_URL
// in headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core;
// no downloaded browser) and runs window.runCalls(API_BASE_URL) there.
//
// The bundle is built on every run rather than committed: it is generated
// code, esbuild takes well under a second, and the lockfile pins its inputs.
//
// usage: node grpc_web_browser.mjs SITE_DIR API_BASE_URL PAGE_URL...
// prints one JSON object: { pages: [{ url, result, console }], example_bundle_bytes },
// where console holds the browser's console messages (CORS refusals show
// there) and example_bundle_bytes is the size of config/examples/grpc-web-page
// built the same way (built only, to prove it still does).
import { copyFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const [siteDir, apiBaseUrl, ...pageUrls] = process.argv.slice(2);
const LIMIT_MS = 20000;

// Whatever happens below, never outlive the test's own patience.
const watchdog = setTimeout(() => {
  console.error("grpc_web_browser.mjs: gave up after 90 s");
  process.exit(3);
}, 90000);

await esbuild.build({
  entryPoints: [join(here, "browser/page.js")],
  bundle: true,
  format: "esm",
  target: "es2022",
  outfile: join(siteDir, "page.js"),
  logLevel: "error",
});
copyFileSync(join(here, "browser/index.html"), join(siteDir, "index.html"));
// The shipped browser example must build against the same pinned packages,
// the way its app.js says to build it (NODE_PATH = these node_modules).
const example = await esbuild.build({
  entryPoints: [join(here, "../../../config/examples/grpc-web-page/app.js")],
  bundle: true,
  format: "esm",
  write: false,
  nodePaths: [join(here, "node_modules")],
  logLevel: "error",
});

// A fresh profile every run: no cached preflights, no state from other runs.
const profile = mkdtempSync(join(tmpdir(), "tollgate-chromium-"));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  timeout: LIMIT_MS,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
  ],
});
const pages = [];
try {
  for (const url of pageUrls) {
    const page = await browser.newPage();
    const messages = [];
    page.on("console", (m) => messages.push(`${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => messages.push(`pageerror: ${e.message}`));
    await page.goto(url, { timeout: LIMIT_MS });
    await page.waitForFunction(() => typeof window.runCalls === "function", null, { timeout: LIMIT_MS });
    const result = await page.evaluate((base) => window.runCalls(base), apiBaseUrl);
    pages.push({ url, result, console: messages });
    await page.close();
  }
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify({ pages, example_bundle_bytes: example.outputFiles[0].contents.length }));
clearTimeout(watchdog);
