// What the headless-Chromium drivers (grpc_web_browser.mjs, h3_browser.mjs)
// share: the esbuild step that bundles a page script, a watchdog that bounds
// the whole run, and a fresh Chromium (Debian's /usr/bin/chromium driven by
// playwright-core; no downloaded browser) on a throw-away profile.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as esbuild from "esbuild";
import { chromium } from "playwright-core";

// Flags every run uses: no sandbox (containers), nothing that phones home.
export const BASE_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

// Exits the process with code 3 after `ms`, whatever is still pending, so a
// driver never outlives the test's patience. Returns the timer to clear.
export function watchdog(name, ms) {
  return setTimeout(() => {
    console.error(`${name}: gave up after ${ms / 1000} s`);
    process.exit(3);
  }, ms);
}

// Bundles the browser script `entry` (and what it imports) into `outfile`.
// Built on every run rather than committed: it is generated code, esbuild
// takes well under a second, and the lockfile pins its inputs.
export async function bundle(entry, outfile) {
  await esbuild.build({
    entryPoints: [entry],
    bundle: true,
    format: "esm",
    target: "es2022",
    outfile,
    logLevel: "error",
  });
}

// Runs `use(context)` in a Chromium launched with BASE_ARGS + `args` on a
// fresh profile (no cached preflights, alt-svc or sessions from other runs),
// then closes it and removes the profile.
export async function withChromium(args, timeoutMs, use) {
  const profile = mkdtempSync(join(tmpdir(), "tollgate-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    timeout: timeoutMs,
    args: [...BASE_ARGS, ...args],
  });
  try {
    return await use(context);
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

// Opens a page that records its console (and uncaught errors) into `messages`.
export async function openPage(context, messages) {
  const page = await context.newPage();
  page.on("console", (m) => messages.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => messages.push(`pageerror: ${e.message}`));
  return page;
}
