// A browser gRPC-Web client for helloworld.Greeter behind Tollgate, with
// @connectrpc/connect-web. Browsers need it bundled; from the repository root:
//
//   npm ci --prefix tests/peers/node --include=dev     # connect-web 1.x, esbuild
//   NODE_PATH=tests/peers/node/node_modules tests/peers/node/node_modules/.bin/esbuild \
//     config/examples/grpc-web-page/app.js --bundle --format=esm \
//     --outfile=config/examples/grpc-web-page/app.bundle.js
//   tollgate --config config/examples/grpc-web.toml    # then open http://localhost:3000/
//
// (tests/grpc_web_browser.rs builds this file the same way, and runs a page
// like it in headless Chromium against a real gRPC backend.)
import { ConnectError, createPromiseClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { MethodKind, proto3 } from "@bufbuild/protobuf";

// helloworld.proto described by hand (protobuf-es 1.x); with generated code,
// import Greeter from the file protoc-gen-connect-es writes instead.
const HelloRequest = proto3.makeMessageType("helloworld.HelloRequest", [
  { no: 1, name: "name", kind: "scalar", T: 9 /* string */ },
]);
const HelloReply = proto3.makeMessageType("helloworld.HelloReply", [
  { no: 1, name: "message", kind: "scalar", T: 9 /* string */ },
]);
const Greeter = {
  typeName: "helloworld.Greeter",
  methods: {
    sayHello: { name: "SayHello", I: HelloRequest, O: HelloReply, kind: MethodKind.Unary },
  },
};

// Another origin than this page: the browser sends a CORS preflight first.
// Binary gRPC-Web: content-type application/grpc-web+proto.
const transport = createGrpcWebTransport({ baseUrl: "http://127.0.0.1:8080" });
const greeter = createPromiseClient(Greeter, transport);

const form = document.querySelector("form");
const output = document.querySelector("output");
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    // timeoutMs becomes grpc-timeout: Tollgate enforces it as the call's deadline.
    const reply = await greeter.sayHello({ name: form.elements.name.value }, { timeoutMs: 5000 });
    output.textContent = reply.message;
  } catch (e) {
    // Errors Tollgate makes (UNAVAILABLE, RESOURCE_EXHAUSTED...) carry their
    // status in grpc-status / grpc-message response headers: readable here only
    // because the cors policy lists them in expose_headers.
    const err = ConnectError.from(e);
    output.textContent = `error ${err.code}: ${err.rawMessage}`;
  }
});
