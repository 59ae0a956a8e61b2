#!/usr/bin/env python3
"""Start-up and memory probes of Portcullis for bench/run.sh (standard library only).

Each probe starts its own Portcullis (the command after `--`, already pinned
with taskset by the caller), measures, and stops it (SIGTERM, then SIGKILL)
before returning. Results are printed as one `RESULT key=value ...` line.

  startup: spawn, then poll (every ~1 ms) until the first 200. Two modes,
           each repeated: `gateway` polls the gateway route only (start to
           first served 200, key fetch included); `ready` polls the admin
           /readyz until 200, then sends one request (ready to first 200).
           Also reports VmRSS one second after ready (idle).
  memory:  spawn, wait for /readyz, read VmRSS (idle); open N keep-alive
           connections, each sending one request and keeping the connection
           open, read VmRSS; stop. Spawn again, wait for /readyz, read VmRSS,
           send the first M tokens of a token file (each once) over 64
           keep-alive connections, read VmRSS (the cache filled); stop.
"""

import argparse
import asyncio
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def request(host, port, path, token=None, timeout=0.5):
    """One HTTP/1.1 request on a fresh connection; the status, or None."""
    head = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall((head + "\r\n").encode())
            data = b""
            while b"\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    return None
                data += chunk
            return int(data.split(b" ", 2)[1])
    except (OSError, ValueError, IndexError):
        return None


def addr(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


class Server:
    def __init__(self, cmd):
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.started = time.monotonic()

    def alive(self):
        if self.proc.poll() is not None:
            err = self.proc.stderr.read().decode(errors="replace")
            raise RuntimeError(f"portcullis exited with {self.proc.returncode}: {err.strip()[-2000:]}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_ready(server, admin, deadline=20.0):
    while request(*admin, "/readyz") != 200:
        server.alive()
        if time.monotonic() - server.started > deadline:
            raise RuntimeError("portcullis not ready within %.0f s" % deadline)
        time.sleep(0.001)
    return time.monotonic()


def startup(args):
    gateway, admin = addr(args.gateway), addr(args.admin)
    to_first, ready_to_first, to_ready, rss = [], [], [], []
    for _ in range(args.repeat):
        server = Server(args.cmd)
        try:
            while request(*gateway, "/", args.token) != 200:
                server.alive()
                if time.monotonic() - server.started > 20:
                    raise RuntimeError("no 200 from the gateway within 20 s")
                time.sleep(0.001)
            to_first.append((time.monotonic() - server.started) * 1000)
        finally:
            server.stop()
        server = Server(args.cmd)
        try:
            ready = wait_ready(server, admin)
            status = request(*gateway, "/", args.token, timeout=5)
            first = time.monotonic()
            if status != 200:
                raise RuntimeError(f"first request after /readyz answered {status}, not 200")
            to_ready.append((ready - server.started) * 1000)
            ready_to_first.append((first - ready) * 1000)
            time.sleep(1)
            rss.append(rss_kib(server.proc.pid))
        finally:
            server.stop()
    print(
        "RESULT start_to_first_ms=%.1f start_to_ready_ms=%.1f ready_to_first_ms=%.1f idle_rss_kib=%d"
        % (
            statistics.median(to_first),
            statistics.median(to_ready),
            statistics.median(ready_to_first),
            statistics.median(rss),
        )
    )


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
        elif name.strip().lower() == b"transfer-encoding":
            raise RuntimeError("chunked responses are not handled here")
    if length:
        await reader.readexactly(length)
    return status


async def hold_connections(host, port, token, count, batch):
    """Opens `count` connections, each sending one request; returns them open."""
    req = f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    conns, bad = [], 0

    async def one():
        nonlocal bad
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(req)
        if await read_response(reader) != 200:
            bad += 1
        conns.append(writer)

    for start in range(0, count, batch):  # batches: stay within the listen backlog
        await asyncio.gather(*(one() for _ in range(min(batch, count - start))))
    if bad:
        raise RuntimeError(f"{bad} of {count} held connections got a non-200 answer")
    return conns


async def send_tokens(host, port, tokens, connections=64):
    bad = 0
    it = iter(tokens)

    async def worker():
        nonlocal bad
        reader, writer = await asyncio.open_connection(host, port)
        for token in it:
            writer.write(f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
            if await read_response(reader) != 200:
                bad += 1
        writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return bad


def memory(args):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.connections + 1000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.connections + 5000), hard))
    gateway, admin = addr(args.gateway), addr(args.admin)
    with open(args.tokens) as file:
        tokens = [line.strip() for _, line in zip(range(args.count), file)]
    if len(tokens) < args.count:
        raise RuntimeError(f"{args.tokens} holds {len(tokens)} tokens, not {args.count}")
    # two processes, so that the memory the connections leave behind (kept
    # by the allocator) does not count as the cache's
    server = Server(args.cmd)
    try:
        wait_ready(server, admin)
        time.sleep(1)
        idle = rss_kib(server.proc.pid)

        async def held():
            conns = await hold_connections(*gateway, args.token, args.connections, args.batch)
            await asyncio.sleep(1)
            server.alive()
            rss = rss_kib(server.proc.pid)
            for writer in conns:
                writer.close()
            return rss

        with_conns = asyncio.run(held())
    finally:
        server.stop()
    server = Server(args.cmd)
    try:
        wait_ready(server, admin)
        time.sleep(1)
        before = rss_kib(server.proc.pid)
        began = time.monotonic()
        bad = asyncio.run(send_tokens(*gateway, tokens))
        took = time.monotonic() - began
        if bad:
            raise RuntimeError(f"{bad} of {len(tokens)} unique-token requests got a non-200 answer")
        time.sleep(1)
        server.alive()
        with_cache = rss_kib(server.proc.pid)
    finally:
        server.stop()
    print(
        "RESULT idle_rss_kib=%d conns=%d conns_rss_kib=%d tokens=%d before_tokens_rss_kib=%d tokens_rss_kib=%d"
        " tokens_seconds=%.1f" % (idle, args.connections, with_conns, len(tokens), before, with_cache, took)
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="probe", required=True)
    for name in ("startup", "memory"):
        p = sub.add_parser(name)
        p.add_argument("--gateway", required=True, help="host:port of the gateway listener")
        p.add_argument("--admin", required=True, help="host:port of the admin listener")
        p.add_argument("--token", required=True, help="a valid token")
        if name == "startup":
            p.add_argument("--repeat", type=int, default=3)
        else:
            p.add_argument("--connections", type=int, default=10_000)
            p.add_argument("--batch", type=int, default=100, help="connections opened (and requests sent) at a time")
            p.add_argument("--tokens", required=True, help="a file of unique tokens, one a line")
            p.add_argument("--count", type=int, default=100_000)
        p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- the command that starts Portcullis")
    args = parser.parse_args()
    if args.cmd and args.cmd[0] == "--":
        args.cmd = args.cmd[1:]
    if not args.cmd:
        parser.error("give the command that starts Portcullis after --")
    try:
        startup(args) if args.probe == "startup" else memory(args)
    except RuntimeError as error:
        print(f"probe: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
