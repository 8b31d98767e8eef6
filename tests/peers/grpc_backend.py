"""A gRPC backend for Tollgate's tests: grpcio with raw-bytes handlers (no
generated code), service `test.Echo`. Prints `PORT <n>` once serving; prints
`START Slow` when a `Slow` call begins and `CANCELLED <method>` when a call it
was serving is cancelled.

usage: grpc_backend.py NAME [CERT KEY]
  NAME is echoed so tests can tell backends apart; CERT and KEY (PEM) serve TLS.
"""
import json
import os
import sys
import time
from concurrent import futures

import grpc

NAME = sys.argv[1].encode() if len(sys.argv) > 1 else b"backend"


def say(line):
    print(line, flush=True)


def unary(request, context):
    return b"echo:" + request


def whoami(request, context):
    return NAME


def server_stream(request, context):
    # request: b"COUNT" or b"COUNT,DELAY_MS"
    parts = request.decode().split(",")
    count = int(parts[0])
    delay = int(parts[1]) / 1000 if len(parts) > 1 else 0
    for i in range(count):
        if i and delay:
            time.sleep(delay)
        yield b"msg-%d" % i


def client_stream(request_iterator, context):
    seen = [r for r in request_iterator]
    return b"got %d: " % len(seen) + b",".join(seen)


def bidi(request_iterator, context):
    for r in request_iterator:
        yield b"bidi:" + r


def fail(request, context):
    context.set_trailing_metadata((("grpc-status-details-bin", b"\x08\x09\x12\x04oops"),))
    context.set_code(grpc.StatusCode.FAILED_PRECONDITION)
    context.set_details("precondition failed: 100% broken")
    return b""


def slow(request, context):
    say("START Slow")
    context.add_callback(lambda: say("DONE Slow active=%s" % context.is_active()))
    deadline = time.time() + 10
    while time.time() < deadline:
        if not context.is_active():
            say("CANCELLED Slow")
            return b""
        time.sleep(0.02)
    return b"slow done"


def metadata(request, context):
    seen = {}
    for key, value in context.invocation_metadata():
        seen[key] = value.hex() if isinstance(value, bytes) else value
    echo = [("echo-" + k, v) for k, v in context.invocation_metadata() if k.startswith("x-")]
    context.send_initial_metadata(tuple(echo))
    context.set_trailing_metadata((("x-trailer-bin", b"\x00\x01\xfe"), ("x-trailer", "done")))
    return json.dumps(seen, sort_keys=True).encode()


def varint(n):
    out = b""
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out += bytes([byte | 0x80])
        else:
            return out + bytes([byte])


def text_field(message):
    """Field 1 (string) of a protobuf message, read by hand: no generated code."""
    i, text = 0, b""
    while i < len(message):
        tag = message[i]
        i += 1
        length, shift = 0, 0
        while True:
            b = message[i]
            i += 1
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        if tag == 0x0A:
            text = message[i:i + length]
        i += length
    return text


def msg(text):
    return b"\x0a" + varint(len(text)) + text


def proto(request, context):
    return msg(b"echo:" + text_field(request))


def proto_stream(request, context):
    for i in range(3):
        if i:
            time.sleep(0.3)
        yield msg(b"%d:" % i + text_field(request))


def main():
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "WhoAmI": grpc.unary_unary_rpc_method_handler(whoami),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "Metadata": grpc.unary_unary_rpc_method_handler(metadata),
        "Proto": grpc.unary_unary_rpc_method_handler(proto),
        "ProtoStream": grpc.unary_stream_rpc_method_handler(proto_stream),
    }
    # GRPC_BACKEND_MAX_AGE_MS: connections are ended (GOAWAY) after this long.
    max_age = os.environ.get("GRPC_BACKEND_MAX_AGE_MS")
    options = [("grpc.max_connection_age_ms", int(max_age)), ("grpc.max_connection_age_grace_ms", 5000)] if max_age else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=options)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    if len(sys.argv) > 3:
        with open(sys.argv[2], "rb") as cert, open(sys.argv[3], "rb") as key:
            credentials = grpc.ssl_server_credentials(((key.read(), cert.read()),))
        port = server.add_secure_port("127.0.0.1:0", credentials)
    else:
        # GRPC_BACKEND_PORT: a fixed port, for a backend restarted where the old one was.
        port = server.add_insecure_port("127.0.0.1:%d" % int(os.environ.get("GRPC_BACKEND_PORT", "0")))
    server.start()
    say("PORT %d" % port)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
