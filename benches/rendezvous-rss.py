#!/usr/bin/env python3
# RSS of a `p2pd rendezvous` holding N WebSockets from 32 loopback addresses
# (127.0.0.2 … 127.0.0.33), idle, each after `allocate`, or as N/2 pairs whose claimer
# relays its two PAKE-sized bodies and then never reads while its allocator relays 24
# bodies of 60 KiB (`stuck`: the server's queues toward the claimer fill up; the worst
# case). docs/SECURITY.md quotes it:
#
#   target/debug/p2pd rendezvous --listen 127.0.0.1:19309 & \
#     python3 benches/rendezvous-rss.py 19309 $! 1000 idle    # or: alloc, stuck
#
# Reads VmRSS from /proc/PID/status before connecting and 1.5 s after all connected
# (inside the server's 10 s deadline for a first request). Loopback only.
import asyncio, base64, os, sys, json, struct

PORT = int(sys.argv[1]); PID = int(sys.argv[2]); N = int(sys.argv[3]); MODE = sys.argv[4]
ALLOC = MODE == "alloc"

def rss_kib():
    for line in open(f"/proc/{PID}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])

def frame(text):
    data = text.encode(); mask = os.urandom(4)
    head = bytes([0x81]); n = len(data)
    if n < 126: head += bytes([0x80 | n])
    elif n < 65536: head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else: head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))

async def connect(i):
    src = f"127.0.0.{2 + i % 32}"
    r, w = await asyncio.open_connection("127.0.0.1", PORT, local_addr=(src, 0))
    key = base64.b64encode(os.urandom(16)).decode()
    w.write(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{PORT}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    await r.readuntil(b"\r\n\r\n")
    return r, w

async def read_json(r):
    hdr = await r.readexactly(2)
    n = hdr[1] & 0x7f
    if n == 126: n = struct.unpack(">H", await r.readexactly(2))[0]
    elif n == 127: n = struct.unpack(">Q", await r.readexactly(8))[0]
    return json.loads(await r.readexactly(n))

async def one(i, held, answers):
    r, w = await connect(i)
    if ALLOC:
        w.write(frame(json.dumps({"type": "allocate"})))
        answers.append((await read_json(r))["type"])
    held.append((r, w))

async def pair(i, held, answers):
    ar, aw = await connect(2 * i)
    aw.write(frame(json.dumps({"type": "allocate"})))
    allocated = await read_json(ar)
    answers.append(allocated["type"])
    if allocated["type"] != "allocated":
        return
    cr, cw = await connect(2 * i + 1)
    cw.write(frame(json.dumps({"type": "claim", "nameplate": allocated["nameplate"]})))
    answers.append((await read_json(cr))["type"])
    await read_json(ar)  # paired
    for _ in range(2):  # passes the server's PAKE watch
        cw.write(frame(json.dumps({"type": "relay", "body": base64.b64encode(b"x" * 32).decode()})))
    big = base64.b64encode(os.urandom(45 * 1024)).decode()
    for _ in range(24):
        aw.write(frame(json.dumps({"type": "relay", "body": big})))
    held.extend([(ar, aw), (cr, cw)])

async def main():
    before = rss_kib()
    held, answers = [], []
    if MODE == "stuck":
        await asyncio.gather(*(pair(i, held, answers) for i in range(N // 2)), return_exceptions=True)
        await asyncio.sleep(3)  # let the relays reach the server's queues
    else:
        await asyncio.gather(*(one(i, held, answers) for i in range(N)), return_exceptions=True)
    await asyncio.sleep(1.5)
    during = rss_kib()
    print(f"connections held: {len(held)}; answers: { {a: answers.count(a) for a in set(answers)} }")
    print(f"server RSS before: {before} KiB, with them: {during} KiB, per connection: {(during - before) / max(len(held), 1):.1f} KiB")

asyncio.run(main())
