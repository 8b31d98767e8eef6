// A gRPC-Web client we did not write, in a real browser: bundles
// browser/page.js (@connectrpc/connect-web) with esbuild into SITE_DIR (which
// the test serves from a Tollgate static_dir route), then opens each PAGE_URL
// in headless Chromium (chromium.mjs) and runs window.runCalls(API_BASE_URL)
// there.
//
// usage: node grpc_web_browser.mjs SITE_DIR API_BASE_URL PAGE_URL...
// prints one JSON object: { pages: [{ url, result, console }], example_bundle_bytes },
// where console holds the browser's console messages (CORS refusals show
// there) and example_bundle_bytes is the size of config/examples/grpc-web-page
// built the same way (built only, to prove it still does).
import { copyFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";
import { bundle, openPage, watchdog, withChromium } from "./chromium.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const [siteDir, apiBaseUrl, ...pageUrls] = process.argv.slice(2);
const LIMIT_MS = 20000;

// Whatever happens below, never outlive the test's own patience.
const timer = watchdog("grpc_web_browser.mjs", 90000);

await bundle(join(here, "browser/page.js"), join(siteDir, "page.js"));
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

// HTTP/1.1 and HTTP/2 only here (h3_browser.mjs is the HTTP/3 run).
const pages = await withChromium(["--disable-quic"], LIMIT_MS, async (browser) => {
  const pages = [];
  for (const url of pageUrls) {
    const messages = [];
    const page = await openPage(browser, messages);
    await page.goto(url, { timeout: LIMIT_MS });
    await page.waitForFunction(() => typeof window.runCalls === "function", null, { timeout: LIMIT_MS });
    const result = await page.evaluate((base) => window.runCalls(base), apiBaseUrl);
    pages.push({ url, result, console: messages });
    await page.close();
  }
  return pages;
});
console.log(JSON.stringify({ pages, example_bundle_bytes: example.outputFiles[0].contents.length }));
clearTimeout(timer);
