// Runs in headless Chromium: @connectrpc/connect-web's gRPC-Web transport
// (fetch) calls test.Echo on tests/peers/grpc_backend.py through Tollgate.
// grpc_web_browser.mjs bundles this file with esbuild and calls
// window.runCalls(API_BASE_URL); the result goes back as JSON.
import { createPromiseClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { MethodKind } from "@bufbuild/protobuf";
import { Echo, Msg, asObject, failure } from "./echo.js";

// Routed by Tollgate to a backend that is not listening: the error is Tollgate's own.
const Down = {
  typeName: "down.Svc",
  methods: { call: { name: "Call", I: Msg, O: Msg, kind: MethodKind.Unary } },
};

// Each call bounded (also sends grpc-timeout, which the CORS policy must allow).
const call = { timeoutMs: 10000 };

window.runCalls = async (baseUrl) => {
  const transport = createGrpcWebTransport({ baseUrl, useBinaryFormat: true });
  const echo = createPromiseClient(Echo, transport);
  const out = {};

  try {
    let headers = {};
    let trailers = {};
    const reply = await echo.proto(
      { text: "hello" },
      { ...call, onHeader: (h) => (headers = asObject(h)), onTrailer: (t) => (trailers = asObject(t)) },
    );
    out.unary = { text: reply.text, headers, trailers };
  } catch (e) {
    out.unary = failure(e);
  }

  try {
    let trailers = {};
    const messages = [];
    for await (const m of echo.protoStream({ text: "s" }, { ...call, onTrailer: (t) => (trailers = asObject(t)) })) {
      messages.push(m.text);
    }
    out.stream = { messages, trailers };
  } catch (e) {
    out.stream = failure(e);
  }

  try {
    await echo.fail({}, call);
    out.fail = "no error";
  } catch (e) {
    out.fail = failure(e);
  }

  try {
    await createPromiseClient(Down, transport).call({}, call);
    out.down = "no error";
  } catch (e) {
    out.down = failure(e);
  }
  return out;
};
