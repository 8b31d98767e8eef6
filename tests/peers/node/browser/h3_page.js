// Runs in headless Chromium on a page loaded over HTTP/3: connect-web's
// gRPC-Web transport (fetch) calls test.Echo on tests/peers/grpc_backend.py
// through Tollgate on the page's own origin. h3_browser.mjs bundles this file
// with esbuild and calls window.runCalls(); the result goes back as JSON.
import { createPromiseClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { Echo, asObject, failure } from "./echo.js";

// Each call bounded (connect-web also sends it as grpc-timeout).
const call = { timeoutMs: 10000 };

window.runCalls = async () => {
  const transport = createGrpcWebTransport({ baseUrl: location.origin, useBinaryFormat: true });
  const echo = createPromiseClient(Echo, transport);
  const out = {};

  try {
    let headers = {};
    let trailers = {};
    const reply = await echo.proto(
      { text: "over quic" },
      { ...call, onHeader: (h) => (headers = asObject(h)), onTrailer: (t) => (trailers = asObject(t)) },
    );
    out.unary = { text: reply.text, headers, trailers };
  } catch (e) {
    out.unary = failure(e);
  }

  // The backend spaces its three messages 300 ms apart: arrival times show
  // whether they reached the page one by one or all at the end.
  try {
    let trailers = {};
    const messages = [];
    const arrivals = [];
    for await (const m of echo.protoStream({ text: "h3" }, { ...call, onTrailer: (t) => (trailers = asObject(t)) })) {
      messages.push(m.text);
      arrivals.push(performance.now());
    }
    out.stream = { messages, trailers, arrivals_ms: arrivals };
  } catch (e) {
    out.stream = failure(e);
  }

  try {
    await echo.fail({}, call);
    out.fail = "no error";
  } catch (e) {
    out.fail = failure(e);
  }
  return out;
};
