#!/usr/bin/env python3
"""What hostile clients cost the hub: resident memory before and after each attack, and how long
a graceful shutdown takes against its timeout. Figures for docs/SECURITY.md and BENCHMARKS.md,
not a test (tests/it/hardening.rs asserts the behaviour).

usage: bench/hostile.py [BINARY]   (default target/release/replay-hub; build it first)

It starts the hub on a free port with a fresh data directory (the generated demo race plus copies
of it under other ids), then:
  1. sends one WebSocket frame header declaring 256 MiB, then three declaring 1 GiB, each followed
     by 1 MiB of payload, and reads the close code;
  2. asks /frames of ten different races (each would load it) under a 2-race memory budget;
  3. stops the hub with SIGTERM while a viewer that never reads is connected, with
     --shutdown-timeout-ms 1500, and times the exit.
Nothing here leaves the machine: every connection is to 127.0.0.1.
"""
import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start(binary, data, *extra):
    proc = subprocess.Popen(
        [binary, "serve", "--bind", "127.0.0.1:0", "--data-dir", data, "--admin-token", "bench",
         "--max-connections-per-ip", "0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if line.startswith("replay-hub listening on http://"):
            addr = line.strip().rsplit("/", 1)[1]
            break
    else:
        sys.exit("the hub did not start")
    # Keep draining stdout so the hub never blocks on it.
    import threading
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    return proc, addr


def upgrade(addr, path="/ws/sessions/demo"):
    host, port = addr.split(":")
    s = socket.create_connection((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def close_code(s, patience=20):
    s.settimeout(patience)
    buf = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return None
            buf += chunk
            while len(buf) >= 2:
                n = buf[1] & 0x7F
                off = 2
                if n == 126:
                    n, off = struct.unpack(">H", buf[2:4])[0], 4
                elif n == 127:
                    n, off = struct.unpack(">Q", buf[2:10])[0], 10
                if len(buf) < off + n:
                    break
                if buf[0] & 0x0F == 8:
                    return struct.unpack(">H", buf[off:off + 2])[0]
                buf = buf[off + n:]
    except (socket.timeout, ConnectionError):
        return None


def oversized(addr, declared):
    s = upgrade(addr)
    header = bytes([0x82, 0x80 | 127]) + struct.pack(">Q", declared) + b"\x01\x02\x03\x04"
    try:
        s.sendall(header + bytes(1 << 20))
    except ConnectionError:
        pass
    code = close_code(s)
    s.close()
    return code


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/replay-hub"
    work = tempfile.mkdtemp(prefix="replay-hub-hostile-")
    try:
        data = os.path.join(work, "data")
        # A first start generates the demo race; copies of it under other ids follow.
        proc, addr = start(binary, data)
        time.sleep(1)
        proc.terminate()
        proc.wait()
        demo = os.path.join(data, "demo.race")
        for n in range(10):
            subprocess.run([binary, "generate", "--laps", "2", "--drivers", "20", "--seed",
                            str(n + 1), "--id", f"r{n}", "--out", os.path.join(data, f"r{n}.race"),
                            "--quiet"], check=True, stdout=subprocess.DEVNULL)
        race_bytes = os.path.getsize(os.path.join(data, "r0.race"))
        budget = race_bytes * 2 + os.path.getsize(demo) + (8 << 20)
        proc, addr = start(binary, data, "--race-memory-budget", str(budget))
        time.sleep(2)
        rows = [("start (demo session playing)", rss_mib(proc.pid), "")]
        code = oversized(addr, 256 << 20)
        time.sleep(0.5)
        rows.append(("after a frame header claiming 256 MiB", rss_mib(proc.pid), f"close {code}"))
        codes = [oversized(addr, 1 << 30) for _ in range(3)]
        time.sleep(0.5)
        rows.append(("after three claiming 1 GiB", rss_mib(proc.pid), f"close {codes}"))
        statuses = []
        for n in range(10):
            with urllib.request.urlopen(f"http://{addr}/api/races/r{n}/frames?from=0&to=2") as r:
                statuses.append(r.status)
        time.sleep(0.5)
        metrics = urllib.request.urlopen(f"http://{addr}/metrics").read().decode()
        loaded = [l for l in metrics.splitlines() if l.startswith("replay_hub_hub_races_loaded")]
        rows.append((f"after /frames of 10 races (budget {budget >> 20} MiB)", rss_mib(proc.pid),
                     f"{statuses.count(200)}x200, {loaded[0] if loaded else '?'}"))
        for what, rss, note in rows:
            print(f"| {what} | {rss:.1f} MiB | {note} |")
        proc.terminate()
        proc.wait()

        # Shutdown against its timeout, with a viewer that never reads.
        proc, addr = start(binary, data, "--shutdown-timeout-ms", "1500")
        time.sleep(1)
        stuck = upgrade(addr)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        time.sleep(3)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        print(f"| SIGTERM to exit, --shutdown-timeout-ms 1500, a viewer that never reads | "
              f"{time.monotonic() - started:.2f} s | exit {proc.returncode} |")
        stuck.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
