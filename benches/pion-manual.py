#!/usr/bin/env python3
"""p2pd and the Go peer of tests/pion, signaled by hand (--manual), both directions
(docs/PERFORMANCE.md, "Other stacks"). Needs a release build and the peer, which
`cargo test --test it pion -- --include-ignored` builds into target/tmp/pion/peer.
Usage: benches/pion-manual.py [MIB] [RUNS]"""
import os, subprocess, sys, tempfile, time

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
R = os.path.join(root, 'target/release')
PEER = os.path.join(root, 'target/tmp/pion/peer')
mib = int(sys.argv[1]) if len(sys.argv) > 1 else 64
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 2
d = tempfile.mkdtemp()
for sub in ('a/dl', 'b/dl', 'in'):
    os.makedirs(os.path.join(d, sub))
daemons = [subprocess.Popen([R + '/p2pd', '--socket', f'{d}/{x}/s', '--download-dir', f'{d}/{x}/dl',
                             '--rendezvous-listen', '127.0.0.1:0', '--ice-bind', '127.0.0.1:0'],
                            stderr=subprocess.DEVNULL) for x in ('a', 'b')]
time.sleep(1)
src = os.path.join(d, 'pion.bin')
with open(src, 'wb') as f:
    f.write(os.urandom(mib << 20))

def pipe(cmd):
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

def exchange(offerer, answerer, confirm):
    offer = offerer.stdout.readline()
    answerer.stdin.write(offer); answerer.stdin.flush()
    offerer.stdin.write(answerer.stdout.readline())
    if confirm:
        offerer.stdin.write('y\n')  # the sender's person: both screens show the same string
    offerer.stdin.flush()
    return answerer.communicate()[1], offerer.communicate()[1]

try:
    for run in range(runs):
        t0 = time.time()
        b_err, a_err = exchange(pipe([R + '/p2p', '--socket', f'{d}/a/s', 'send', '--manual', src]),
                                pipe([PEER, '-loopback', 'receive', f'{d}/in']), True)
        same = open(src, 'rb').read() == open(f'{d}/in/pion.bin', 'rb').read()
        print(f'p2pd -> pion {mib} MiB: wall {time.time() - t0:.1f} s, verified: {same}')
        os.remove(f'{d}/in/pion.bin')
        t0 = time.time()
        b_err, a_err = exchange(pipe([PEER, '-loopback', 'send', src]),
                                pipe([R + '/p2p', '--socket', f'{d}/b/s', 'receive', '--manual', '--yes', '-o', f'{d}/b/dl']), False)
        print('pion -> p2pd:', [l for l in b_err.splitlines() if l.startswith('Received')], f'wall {time.time() - t0:.1f} s')
        os.remove(f'{d}/b/dl/pion.bin')
finally:
    for p in daemons:
        p.kill()
