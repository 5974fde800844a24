#!/usr/bin/env python3
"""A socktop_agent client in Python: polls metrics, disks and processes at the
recommended intervals over one WebSocket, decodes every answer (JSON text, or
protobuf gzipped when it starts 1f 8b), and reconnects with exponential backoff.

    pip install -r requirements.txt
    python socktop_client.py ws://HOST:3000/ws [--token T] [--duration SECONDS]

The processes schema is the agent's own proto/processes.proto, compiled when the
client starts (grpcio-tools bundles protoc), so there is no second copy to drift.
"""

import argparse
import asyncio
import collections
import gzip
import importlib
import json
import pathlib
import sys
import tempfile
import urllib.parse

import websockets
from grpc_tools import protoc

# The intervals the agent's guide recommends (the socktop TUI polls as often).
INTERVALS = {"metrics": 0.5, "disks": 5.0, "processes": 2.0}
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
GZIP_MAGIC = b"\x1f\x8b"
DEFAULT_PROTO = pathlib.Path(__file__).resolve().parents[2] / "proto" / "processes.proto"


def load_schema(proto):
    """Compiles processes.proto into a module in a temporary folder and imports it."""
    out = tempfile.mkdtemp(prefix="socktop-proto-")
    args = ["protoc", f"-I{proto.parent}", f"--python_out={out}", str(proto)]
    if protoc.main(args) != 0:
        sys.exit(f"protoc could not compile {proto}")
    sys.path.insert(0, out)
    return importlib.import_module(proto.stem + "_pb2")


def decode(frame, kind, schema):
    """One answer: a text frame is JSON; a binary frame is gunzipped when it starts
    1f 8b, then protobuf for processes and JSON otherwise."""
    if isinstance(frame, str):
        return json.loads(frame)
    data = gzip.decompress(frame) if frame[:2] == GZIP_MAGIC else frame
    if kind == "processes":
        return schema.ProcessList.FromString(data)
    return json.loads(data)


def show(kind, answer):
    if isinstance(answer, dict) and "error" in answer:
        print(f"error {answer['error']}", flush=True)
    elif kind == "metrics":
        mem = 100.0 * answer["mem_used"] / max(answer["mem_total"], 1)
        print(f"metrics host={answer['hostname']} cpu={answer['cpu_total']:.1f}% "
              f"cores={len(answer['cpu_per_core'])} mem_total={answer['mem_total']} mem_used={mem:.1f}%", flush=True)
    elif kind == "disks":
        listed = " ".join(f"{d['name']}:{d['available']}/{d['total']}" for d in answer)
        print(f"disks count={len(answer)} {listed}", flush=True)
    else:
        top = sorted(answer.processes, key=lambda p: p.cpu_usage, reverse=True)[:3]
        listed = " ".join(f"{p.pid}:{p.name}:{p.cpu_usage:.1f}%" for p in top)
        print(f"processes count={answer.process_count} rows={len(answer.processes)} top={listed}", flush=True)


async def poll(ws, kind, pending):
    """Asks for `kind` every INTERVALS[kind] seconds. Answers come back in request
    order and carry no id: the queue says what each one answers."""
    while True:
        pending.append(kind)
        await ws.send(json.dumps({"type": kind}))
        await asyncio.sleep(INTERVALS[kind])


async def session(url, schema):
    async with websockets.connect(url, max_size=None) as ws:
        print(f"connected {url}", flush=True)
        pending = collections.deque()
        pollers = [asyncio.create_task(poll(ws, kind, pending)) for kind in INTERVALS]
        try:
            async for frame in ws:
                kind = pending.popleft()
                show(kind, decode(frame, kind, schema))
        finally:
            for task in pollers:
                task.cancel()


async def run(url, schema):
    delay = BACKOFF_FIRST
    while True:
        try:
            await session(url, schema)
            delay = BACKOFF_FIRST
            print("disconnected", flush=True)
        except (OSError, websockets.exceptions.WebSocketException) as error:
            print(f"connection failed: {error}", flush=True)
        print(f"reconnecting in {delay:.1f}s", flush=True)
        await asyncio.sleep(delay)
        delay = min(delay * 2, BACKOFF_MAX)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default="ws://localhost:3000/ws")
    parser.add_argument("--token", help="the agent's SOCKTOP_TOKEN")
    parser.add_argument("--proto", type=pathlib.Path, default=DEFAULT_PROTO, help="path of processes.proto")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")
    args = parser.parse_args()
    url = args.url
    if args.token:
        url += ("&" if "?" in url else "?") + "token=" + urllib.parse.quote(args.token)
    schema = load_schema(args.proto)
    try:
        asyncio.run(asyncio.wait_for(run(url, schema), args.duration))
    except (TimeoutError, asyncio.TimeoutError):
        pass
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
