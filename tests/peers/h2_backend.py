"""HTTP/2 (h2c) echo backend built on hyper-h2 (a peer we did not write), for
the frames our gRPC upstream client must take from a backend that grpcio
never sends: padded DATA, response heads continued over CONTINUATION frames,
a zero initial window raised later by SETTINGS (RFC 9113 §6.9.2).

Usage: h2_backend.py OPTIONS_JSON

OPTIONS_JSON: {"pad": N,                 # padding bytes on every DATA frame we send
               "chunk": N,               # at most N bytes of data per DATA frame (default 16384)
               "initial_window_size": N, # our SETTINGS, sent with the preface
               "raise_window_after_ms": M,  # then INITIAL_WINDOW_SIZE = 65535, M ms into the connection
               "big_header": N,          # an `x-big` response field of N bytes
               "header_table_size": N,   # our SETTINGS_HEADER_TABLE_SIZE (0: no dynamic HPACK table)
               "reset_paths": {PATH: CODE},  # RST_STREAM with CODE for requests to PATH, unanswered
               "refuse_first": N,        # RST_STREAM(REFUSED_STREAM) for the first N requests (all connections)
               "goaway_first": true,     # the first request: GOAWAY refusing it (last stream 0), then close
               "max_concurrent_streams": N,  # our SETTINGS_MAX_CONCURRENT_STREAMS
               "hold_ms": M}             # answer each request M ms after it ended

Prints "PORT N" once listening on 127.0.0.1. Every request is read whole,
then answered (after `hold_ms`): `:status 200`, the request's content-type,
`x-concurrent` (streams open on the connection when it arrived), `x-echo-id` (the
request's `x-id`, if any: hyper-h2 indexes it in its HPACK table), `x-body-len`,
`x-body-sha256`, `x-data-before-raise` (request DATA bytes that arrived
before the window was raised), the body echoed back in DATA frames, and
trailers `grpc-status: 0`, `x-echoed: N`.
"""

import hashlib
import json
import select
import socket
import sys
import threading
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings


class Stream:
    def __init__(self, headers):
        self.headers = dict(headers)
        self.body = bytearray()
        self.ended = False
        self.to_send = None
        self.sent = 0
        self.done = False
        self.data_before_raise = 0
        self.answer_at = None
        self.concurrent = 0


def answer(conn, sid, s, options):
    """Sends the head of the echo; its body goes out as windows allow."""
    headers = [
        (":status", "200"),
        ("content-type", s.headers.get("content-type", "application/grpc")),
        ("x-body-len", str(len(s.body))),
        ("x-body-sha256", hashlib.sha256(s.body).hexdigest()),
        ("x-data-before-raise", str(s.data_before_raise)),
        ("x-concurrent", str(s.concurrent)),
    ]
    if "x-id" in s.headers:
        headers.append(("x-echo-id", s.headers["x-id"]))
    if options.get("big_header"):
        headers.append(("x-big", "b" * options["big_header"]))
    conn.send_headers(sid, headers)
    s.to_send = s.body


# Requests seen by every connection, for "refuse_first" and "goaway_first".
SEEN = {"requests": 0}
SEEN_LOCK = threading.Lock()


def serve(sock, options):
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    # In the SETTINGS of our preface, so that no stream opens under the defaults.
    codes = {
        "initial_window_size": h2.settings.SettingCodes.INITIAL_WINDOW_SIZE,
        "header_table_size": h2.settings.SettingCodes.HEADER_TABLE_SIZE,
        "max_concurrent_streams": h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS,
    }
    initial = {code: options[name] for name, code in codes.items() if name in options}
    conn.local_settings = h2.settings.Settings(client=False, initial_values=initial)
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    started = time.monotonic()
    raise_at = options.get("raise_window_after_ms")
    raised = raise_at is None
    pad = options.get("pad", 0)
    chunk = options.get("chunk", 16384)
    streams = {}
    while True:
        if not raised and (time.monotonic() - started) * 1000 >= raise_at:
            conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535})
            raised = True
        now = time.monotonic()
        for sid, s in list(streams.items()):
            if s.to_send is None and s.answer_at is not None and now >= s.answer_at:
                answer(conn, sid, s, options)
            if s.to_send is None or s.done:
                continue
            while s.sent < len(s.to_send):
                window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                size = min(window - (pad + 1 if pad else 0), chunk, len(s.to_send) - s.sent)
                if size <= 0:
                    break
                conn.send_data(sid, bytes(s.to_send[s.sent:s.sent + size]), pad_length=pad or None)
                s.sent += size
            if s.sent == len(s.to_send):
                conn.send_headers(sid, [("grpc-status", "0"), ("x-echoed", str(s.sent))], end_stream=True)
                s.done = True
                del streams[sid]
        out = conn.data_to_send()
        if out:
            sock.sendall(out)
        readable, _, _ = select.select([sock], [], [], 0.02)
        if not readable:
            continue
        try:
            data = sock.recv(1 << 16)
        except ConnectionError:
            return
        if not data:
            return
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                with SEEN_LOCK:
                    SEEN["requests"] += 1
                    nth = SEEN["requests"]
                if nth == 1 and options.get("goaway_first"):
                    # A graceful shutdown racing the request: nothing on this connection was processed.
                    conn.close_connection(error_code=0, last_stream_id=0)
                    sock.sendall(conn.data_to_send())
                    sock.close()
                    return
                if nth <= options.get("refuse_first", 0):
                    conn.reset_stream(event.stream_id, error_code=h2.errors.ErrorCodes.REFUSED_STREAM)
                    continue
                code = options.get("reset_paths", {}).get(dict(event.headers).get(":path"))
                if code is not None:
                    conn.reset_stream(event.stream_id, error_code=code)
                    continue
                streams[event.stream_id] = Stream(event.headers)
                # Streams open at once, this one included: never past our limit.
                streams[event.stream_id].concurrent = len(streams)
            elif isinstance(event, h2.events.DataReceived):
                s = streams.get(event.stream_id)
                if s is not None:
                    s.body += event.data
                    if not raised:
                        s.data_before_raise += len(event.data)
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                s = streams.get(event.stream_id)
                if s is None:
                    continue
                s.answer_at = time.monotonic() + options.get("hold_ms", 0) / 1000
            elif isinstance(event, h2.events.StreamReset):
                streams.pop(event.stream_id, None)
            elif isinstance(event, h2.events.ConnectionTerminated):
                sock.sendall(conn.data_to_send())
                return
        out = conn.data_to_send()
        if out:
            sock.sendall(out)


def main():
    options = json.loads(sys.argv[1])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    print(f"PORT {listener.getsockname()[1]}", flush=True)
    while True:
        sock, _ = listener.accept()
        threading.Thread(target=serve, args=(sock, options), daemon=True).start()


if __name__ == "__main__":
    main()
