// test.Echo of tests/peers/grpc_backend.py as connect-web sees it, shared by
// the browser pages (page.js, h3_page.js). No generated code: the message and
// the service are described with protobuf-es v1.
import { ConnectError } from "@connectrpc/connect";
import { proto3, MethodKind } from "@bufbuild/protobuf";

export const Msg = proto3.makeMessageType("test.Msg", [{ no: 1, name: "text", kind: "scalar", T: 9 }]);
export const Echo = {
  typeName: "test.Echo",
  methods: {
    proto: { name: "Proto", I: Msg, O: Msg, kind: MethodKind.Unary },
    protoStream: { name: "ProtoStream", I: Msg, O: Msg, kind: MethodKind.ServerStreaming },
    fail: { name: "Fail", I: Msg, O: Msg, kind: MethodKind.Unary },
  },
};

export const asObject = (headers) => Object.fromEntries(headers.entries());

// A failed call as JSON: the gRPC code, the raw message, headers + trailers.
export function failure(e) {
  const err = ConnectError.from(e);
  return { code: err.code, message: err.rawMessage, metadata: asObject(err.metadata) };
}
