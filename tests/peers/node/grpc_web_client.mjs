// A gRPC-Web client we did not write: connect-web (fetch, HTTP/1.1 in Node)
// or connect-node (HTTP/1.1 or HTTP/2), without generated code — the
// service is described by hand with protobuf-es v1's makeMessageType.
//
// usage: node grpc_web_client.mjs BASE_URL web|node1|node2
// prints one JSON object: unary reply, stream replies with arrival times, the error of Fail.
import { createPromiseClient, ConnectError } from "@connectrpc/connect";
import * as web from "@connectrpc/connect-web";
import * as node from "@connectrpc/connect-node";
import { proto3, MethodKind } from "@bufbuild/protobuf";

const Msg = proto3.makeMessageType("test.Msg", [{ no: 1, name: "text", kind: "scalar", T: 9 }]);
const Echo = {
  typeName: "test.Echo",
  methods: {
    proto: { name: "Proto", I: Msg, O: Msg, kind: MethodKind.Unary },
    protoStream: { name: "ProtoStream", I: Msg, O: Msg, kind: MethodKind.ServerStreaming },
    fail: { name: "Fail", I: Msg, O: Msg, kind: MethodKind.Unary },
  },
};

const [baseUrl, kind] = process.argv.slice(2);
const transport =
  kind === "web"
    ? web.createGrpcWebTransport({ baseUrl, useBinaryFormat: true })
    : node.createGrpcWebTransport({ baseUrl, httpVersion: kind === "node2" ? "2" : "1.1" });
const client = createPromiseClient(Echo, transport);

const out = {};
const headers = {};
const trailers = {};
out.unary = (
  await client.proto(
    { text: "hello" },
    {
      onHeader: (h) => h.forEach((v, k) => (headers[k] = v)),
      onTrailer: (t) => t.forEach((v, k) => (trailers[k] = v)),
    },
  )
).text;
out.trailers = trailers;
out.stream = [];
out.times = [];
const start = Date.now();
for await (const m of client.protoStream({ text: "s" })) {
  out.stream.push(m.text);
  out.times.push(Date.now() - start);
}
try {
  await client.fail({});
  out.fail = "no error";
} catch (e) {
  const err = ConnectError.from(e);
  out.fail = { code: err.code, message: err.rawMessage };
}
console.log(JSON.stringify(out));
// connect-node keeps HTTP/2 sessions open; end the process once done.
process.exit(0);
