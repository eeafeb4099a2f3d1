#!/usr/bin/env python3
"""End-to-end 1:1 latency (sender WebSocket -> recipient WebSocket) at a fixed
open-loop rate, against a running GoChat (embedded or cluster).

    deploy/local-cluster up
    python3 bench/e2e-latency.py --send-url ws://127.0.0.1:18080 --recv-url ws://127.0.0.1:18081 --rate 200 --seconds 20

Latency is measured from each message's *scheduled* send time (so a stalled
sender cannot hide queueing: coordinated omission corrected) to its arrival
at the recipient. Stdlib only; loopback; bounded; stops by itself. The
load-test suite (loadtest/) supersedes this small probe.
"""
import argparse
import asyncio
import base64
import json
import os
import struct
import time
import urllib.request


def post(base, path, body, token=None):
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        if e.code == 409:
            return None
        raise


def user(base, name):
    post(base, "/api/v1/auth/register", {"username": name, "password": "latency-pass"})
    r = post(base, "/api/v1/auth/login", {"username": name, "password": "latency-pass"})
    return r["user_id"], r["token"]


class Ws:
    def __init__(self, reader, writer):
        self.r, self.w = reader, writer

    @classmethod
    async def connect(cls, url, token):
        hostport = url.split("://", 1)[1].rstrip("/")
        host, port = hostport.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET /ws?token={token} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    def send(self, obj):
        payload = json.dumps(obj).encode()
        mask = os.urandom(4)
        n = len(payload)
        hdr = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
        self.w.write(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    async def recv(self):
        while True:
            b0, b1 = await self.r.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", await self.r.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", await self.r.readexactly(8))[0]
            data = await self.r.readexactly(n)
            if b0 & 0x0F == 1:
                return json.loads(data)


def pct(sorted_ms, p):
    return sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * p / 100))]


async def run(args):
    sbase = "http" + args.send_url[2:]
    rbase = "http" + args.recv_url[2:]
    tag = str(int(time.time()))
    _, stok = user(sbase, f"lat_s_{tag}")
    rid, rtok = user(rbase, f"lat_r_{tag}")
    sender = await Ws.connect(args.send_url, stok)
    receiver = await Ws.connect(args.recv_url, rtok)
    await asyncio.sleep(1.0)  # let logic register both sessions
    total = int(args.rate * args.seconds)
    scheduled = {}
    latencies = []
    acks = 0

    async def receive():
        while len(latencies) < total:
            m = await receiver.recv()
            if m.get("type") == "new-message":
                i = int(m["client_msg_id"].split("-")[-1])
                latencies.append((time.perf_counter() - scheduled[i]) * 1000)

    async def drain_acks():
        nonlocal acks
        while acks < total:
            m = await sender.recv()
            if m.get("type") == "message-ack":
                acks += 1

    rx = asyncio.create_task(receive())
    ax = asyncio.create_task(drain_acks())
    t0 = time.perf_counter() + 0.1
    for i in range(total):
        at = t0 + i / args.rate
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        scheduled[i] = at
        sender.send({"type": "send-message", "client_msg_id": f"lat-{tag}-{i}", "to_user_id": rid,
                     "content_type": "text", "content": {"text": f"m{i}"}})
    await asyncio.wait_for(asyncio.gather(rx, ax), timeout=args.seconds + 60)
    lat = sorted(latencies)
    print(json.dumps({
        "messages": total, "rate_per_s": args.rate,
        "p50_ms": round(pct(lat, 50), 2), "p90_ms": round(pct(lat, 90), 2), "p99_ms": round(pct(lat, 99), 2),
        "max_ms": round(lat[-1], 2),
    }, indent=2))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--send-url", default="ws://127.0.0.1:18080")
    ap.add_argument("--recv-url", default="ws://127.0.0.1:18081")
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--seconds", type=float, default=20)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
