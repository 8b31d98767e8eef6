"""A gRPC client for Tollgate's tests: grpcio on raw bytes (no generated
code). Runs one scenario against ADDRESS and prints one JSON object.

usage: grpc_client.py ADDRESS SCENARIO
"""
import json
import sys
import time

import grpc

ADDRESS, SCENARIO = sys.argv[1], sys.argv[2]
channel = grpc.insecure_channel(ADDRESS)


def call(kind, method):
    return getattr(channel, kind)("/test.Echo/" + method)


def error(e):
    return {"code": e.code().name, "details": e.details(),
            "trailers": {k: (v.hex() if isinstance(v, bytes) else v) for k, v in (e.trailing_metadata() or ())}}


def run():
    if SCENARIO == "unary":
        return {"reply": call("unary_unary", "Unary")(b"hello", timeout=10).decode()}
    if SCENARIO == "server_stream":
        out, times = [], []
        start = time.time()
        for m in call("unary_stream", "ServerStream")(b"4,300", timeout=10):
            out.append(m.decode())
            times.append(round(time.time() - start, 3))
        return {"replies": out, "times": times}
    if SCENARIO == "client_stream":
        return {"reply": call("stream_unary", "ClientStream")(iter([b"a", b"bb", b"ccc"]), timeout=10).decode()}
    if SCENARIO == "bidi":
        return {"replies": [m.decode() for m in call("stream_stream", "Bidi")(iter([b"x", b"y", b"z"]), timeout=10)]}
    if SCENARIO == "big":
        # 3 MiB each way: more than the HTTP/2 windows, so flow control must move it.
        blob = bytes(range(256)) * (3 * 4096)
        reply = call("unary_unary", "Unary")(blob, timeout=20)
        return {"ok": reply == b"echo:" + blob, "len": len(reply)}
    if SCENARIO == "fail":
        try:
            call("unary_unary", "Fail")(b"", timeout=10)
            return {"code": "OK"}
        except grpc.RpcError as e:
            return error(e)
    if SCENARIO == "metadata":
        reply, c = call("unary_unary", "Metadata").with_call(
            b"", timeout=10,
            metadata=(("x-plain", "hello"), ("x-blob-bin", b"\x00\xff\x10"), ("x-multi", "one")))
        return {"seen": json.loads(reply),
                "initial": {k: (v.hex() if isinstance(v, bytes) else v) for k, v in c.initial_metadata()},
                "trailers": {k: (v.hex() if isinstance(v, bytes) else v) for k, v in c.trailing_metadata()}}
    if SCENARIO == "deadline":
        start = time.time()
        try:
            call("unary_unary", "Slow")(b"", timeout=0.5)
            return {"code": "OK"}
        except grpc.RpcError as e:
            return dict(error(e), elapsed=round(time.time() - start, 3))
    if SCENARIO == "cancel":
        future = call("unary_unary", "Slow").future(b"", timeout=30)
        time.sleep(0.5)
        future.cancel()
        time.sleep(0.5)
        return {"cancelled": future.cancelled()}
    if SCENARIO == "whoami":
        return {"names": [call("unary_unary", "WhoAmI")(b"", timeout=10).decode() for _ in range(8)]}
    if SCENARIO.startswith("status:"):
        # status:/pkg.Svc/Method — just the outcome of one unary call.
        try:
            channel.unary_unary(SCENARIO[len("status:"):])(b"x", timeout=10)
            return {"code": "OK"}
        except grpc.RpcError as e:
            return error(e)
    raise SystemExit("unknown scenario " + SCENARIO)


print(json.dumps(run()), flush=True)
