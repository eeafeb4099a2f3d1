#!/usr/bin/env python3
"""Gateway memory per idle WebSocket connection.

Starts `gochat dev` (release build), registers one user, then opens N
authenticated WebSocket connections that stay idle, and reports the server's
resident-set growth per connection (user-space memory: what the process
allocated) apart from the kernel's socket memory (/proc/net/sockstat, which
counts both ends on loopback).

    python3 bench/idle-conn-memory.py --connections 15000

Stdlib only. Stays on loopback, bounded in count and time, stops by itself.
"""
import argparse
import asyncio
import base64
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def tcp_mem_pages():
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                parts = line.split()
                return int(parts[parts.index("mem") + 1])
    return 0


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


async def open_ws(host, port, token, sink):
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (f"GET /ws?token={token} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n").encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head.split(b"\r\n")[0].decode())
    sink.append(writer)


async def open_many(host, port, token, n, sink, concurrency=200):
    sem = asyncio.Semaphore(concurrency)
    failures = 0

    async def one():
        nonlocal failures
        async with sem:
            try:
                await open_ws(host, port, token, sink)
            except Exception:
                failures += 1

    await asyncio.gather(*(one() for _ in range(n)))
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=15000)
    ap.add_argument("--warmup", type=int, default=500, help="connections opened before the baseline is taken")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "gochat"))
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.connections + args.warmup + 100 > hard:
        sys.exit(f"need {args.connections + args.warmup + 100} fds in this process, nofile hard limit is {hard}")

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    data = tempfile.mkdtemp(prefix="gochat-mem-")
    server = subprocess.Popen(
        [args.binary, "dev", "--listen", f"127.0.0.1:{port}", "--data-dir", data, "--shards", str(args.shards), "--log-format", "json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        # Every connection comes from 127.0.0.1 with one account: lift the
        # per-address cap and the per-user cap (default 16), and keep the
        # token valid however long the measurement takes.
        env=dict(
            os.environ,
            GOCHAT_GATEWAY__MAX_CONNECTIONS_PER_IP="0",
            GOCHAT_LOGIC__MAX_CONNECTIONS_PER_USER="0",
            GOCHAT_AUTH__TOKEN_TTL_SECS="86400",
        ),
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1)
                break
            except Exception:
                time.sleep(0.1)
        post(base + "/api/v1/auth/register", {"username": "memuser", "password": "memory-pass"})
        token = post(base + "/api/v1/auth/login", {"username": "memuser", "password": "memory-pass"})["token"]

        async def run():
            sink = []
            fails = await open_many("127.0.0.1", port, token, args.warmup, sink)
            await asyncio.sleep(1.0)
            rss0, tcp0 = rss_kib(server.pid), tcp_mem_pages()
            t0 = time.time()
            fails += await open_many("127.0.0.1", port, token, args.connections, sink)
            elapsed = time.time() - t0
            await asyncio.sleep(2.0)
            rss1, tcp1 = rss_kib(server.pid), tcp_mem_pages()
            opened = len(sink) - args.warmup
            result = {
                "connections": opened,
                "failures": fails,
                "open_seconds": round(elapsed, 2),
                "server_rss_before_kib": rss0,
                "server_rss_after_kib": rss1,
                "user_space_bytes_per_connection": round((rss1 - rss0) * 1024 / max(opened, 1), 1),
                "kernel_tcp_bytes_per_connection_both_ends": round((tcp1 - tcp0) * 4096 / max(opened, 1), 1),
                "shards": args.shards,
            }
            for w in sink:
                w.close()
            return result

        print(json.dumps(asyncio.run(run()), indent=2))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
