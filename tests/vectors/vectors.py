# The test vectors of docs/PROTOCOL.md §5, computed independently of the Rust code:
# python-spake2 0.9 (pip install spake2), hashlib, hmac and cryptography (pip install
# cryptography). `python3 tests/vectors/vectors.py` prints them; the Rust test
# rendezvous::vectors::the_published_vectors_hold asserts the same values.
import hashlib, hmac, struct
from spake2 import SPAKE2_A, SPAKE2_B
from spake2.parameters.ed25519 import ParamsEd25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

L = 2**252 + 27742317777372353535851937790883648493
code = b"7-orbit-lantern"
xa = int.from_bytes(b"\x01"*64, "little") % L
xb = int.from_bytes(b"\x02"*64, "little") % L
a = SPAKE2_A(code, idA=b"p2pd/1 sender", idB=b"p2pd/1 receiver")
b = SPAKE2_B(code, idA=b"p2pd/1 sender", idB=b"p2pd/1 receiver")
ga = a.params.group
vals = iter([xa, xb])
type(ga).random_scalar = lambda self, e: next(vals)
ma = a.start(); mb = b.start()
ka = a.finish(mb); kb = b.finish(ma)
assert ka == kb
print("msg_a", ma.hex()); print("msg_b", mb.hex()); print("key", ka.hex())

def extract(salt, ikm):
    return hmac.new(salt, ikm, hashlib.sha256).digest()
def expand(prk, info):
    return HKDFExpand(hashes.SHA256(), 32, info).derive(prk)
prk = extract(b"p2pd/1 signaling", ka)
derive = lambda purpose, role: expand(prk, purpose + b" " + role)
for p in [b"confirm", b"seal"]:
    for r in [b"sender", b"receiver"]:
        print(p.decode(), r.decode(), derive(p, r).hex())
binding = derive(b"channel binding", b"sender"); print("binding", binding.hex())
resume = derive(b"resume", b"sender"); print("resume", resume.hex())
for r in [b"sender", b"receiver"]:
    print("tag", r.decode(), hmac.new(derive(b"confirm", r), b"key confirmation", hashlib.sha256).hexdigest())
seal = ChaCha20Poly1305(derive(b"seal", b"sender"))
msg = b'{"type":"offer","sdp":"v=0","attempt":0}'
for seq in [0, 1]:
    aad = struct.pack(">Q", seq)
    nonce = b"\0"*4 + aad
    print("sealed", seq, (aad + seal.encrypt(nonce, msg, aad)).hex())
own = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89".lower()
peer = "10:32:54:76:98:ba:dc:fe:10:32:54:76:98:ba:dc:fe:10:32:54:76:98:ba:dc:fe:10:32:54:76:98:ba:dc:fe"
m = hmac.new(binding, digestmod=hashlib.sha256)
m.update(b"p2pd/1 channel binding\0"); m.update(b"sender")
for f in [own, peer]:
    m.update(struct.pack(">Q", len(f))); m.update(f.encode())
print("proof sender", m.hexdigest())
rej = HKDF(hashes.SHA256(), 32, b"p2pd/1 rejoin", b"rendezvous channel").derive(resume)
print("rejoin", rej.hex())
