// The libraries of the browser page, bundled into lib.mjs by `npm run build` in this
// folder: the page's half of the p2pd protocol's cryptography (docs/PROTOCOL.md §2–§5):
// SPAKE2 on Ed25519 exactly as the `spake2` crate and python-spake2 define it, the HKDF
// key schedule, key confirmation, sealing, the channel proof and the rejoin channel.
// built on @noble/curves, @noble/hashes and @noble/ciphers, and a QR code encoder
// (qrcode-generator). tests/it/page.rs checks lib.mjs against §5's vectors.

import { ed25519 } from '@noble/curves/ed25519.js';
import { sha256 } from '@noble/hashes/sha2.js';
import { extract, expand } from '@noble/hashes/hkdf.js';
import { hmac } from '@noble/hashes/hmac.js';
import { chacha20poly1305 } from '@noble/ciphers/chacha.js';

export { qrcode } from 'qrcode-generator';

const Point = ed25519.Point;
const ORDER = Point.Fn.ORDER;
const M = Point.fromHex('15cfd18e385952982b6a8f8c7854963b58e34388c8e6dae891db756481a02312');
const N = Point.fromHex('f04f2e7eb734b2a8f8b472eaf9c3c632576ac64aea650b496a8a20ff00e583c3');
const text = (s) => new TextEncoder().encode(s);
const ID_SENDER = text('p2pd/1 sender');
const ID_RECEIVER = text('p2pd/1 receiver');

export function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

export function unhex(s) {
  if (s.length % 2 !== 0 || /[^0-9a-fA-F]/.test(s)) throw new Error('not hex');
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function littleEndian(bytes) {
  let n = 0n;
  for (let i = bytes.length - 1; i >= 0; i--) n = (n << 8n) | BigInt(bytes[i]);
  return n;
}

function bigEndian(bytes) {
  let n = 0n;
  for (const b of bytes) n = (n << 8n) | BigInt(b);
  return n;
}

function u64(n) {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, BigInt(n));
  return out;
}

// The password as a scalar: HKDF-SHA256(salt "", info "SPAKE2 pw", 48 bytes), big-endian,
// mod the group order.
function passwordScalar(password) {
  const okm = expand(sha256, extract(sha256, password, new Uint8Array(0)), text('SPAKE2 pw'), 48);
  return bigEndian(okm) % ORDER;
}

// role: 'sender' (side A) or 'receiver' (side B); random: 64 random bytes.
export function pakeStart(role, code, random) {
  const password = text(code);
  const w = passwordScalar(password);
  const x = littleEndian(random) % ORDER;
  const blind = role === 'sender' ? M : N;
  const element = Point.BASE.multiply(x).add(blind.multiply(w));
  const side = role === 'sender' ? 0x41 : 0x42;
  return {
    state: { role, password, w, x, element: element.toBytes() },
    message: concat(Uint8Array.of(side), element.toBytes()),
  };
}

export function pakeFinish(state, peerMessage) {
  const want = state.role === 'sender' ? 0x42 : 0x41;
  if (peerMessage.length !== 33 || peerMessage[0] !== want) {
    throw new Error("the other side's key-exchange message is malformed");
  }
  const peer = Point.fromBytes(peerMessage.slice(1));
  const unblind = state.role === 'sender' ? N : M;
  const shared = peer.subtract(unblind.multiply(state.w)).multiply(state.x);
  const [a, b] = state.role === 'sender' ? [state.element, peer.toBytes()] : [peer.toBytes(), state.element];
  return sha256(
    concat(sha256(state.password), sha256(ID_SENDER), sha256(ID_RECEIVER), a, b, shared.toBytes()),
  );
}

const other = (role) => (role === 'sender' ? 'receiver' : 'sender');

// Everything derived from the PAKE key, for `role`'s side.
export function sessionKeys(pakeKey, role) {
  const prk = extract(sha256, pakeKey, text('p2pd/1 signaling'));
  const derive = (purpose, who) => expand(sha256, prk, text(`${purpose} ${who}`), 32);
  const confirmation = (who) => hmac(sha256, derive('confirm', who), text('key confirmation'));
  return {
    derive,
    ourConfirmation: () => confirmation(role),
    // True if the peer's tag matches (constant time).
    checkConfirmation: (tag) => equal(tag, confirmation(other(role))),
    sealKey: derive('seal', role),
    openKey: derive('seal', other(role)),
    bindingKey: derive('channel binding', 'sender'),
    resumeSecret: derive('resume', 'sender'),
  };
}

export function equal(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

function nonce(seq) {
  return concat(new Uint8Array(4), u64(seq));
}

// seq (u64 BE) ‖ ChaCha20-Poly1305(key, 0⁴ ‖ seq, aad = seq).
export function seal(key, seq, plaintext) {
  const aad = u64(seq);
  return concat(aad, chacha20poly1305(key, nonce(seq), aad).encrypt(plaintext));
}

// The plaintext of `blob`, which must carry sequence number `seq`; throws otherwise.
export function open(key, seq, blob) {
  if (blob.length < 8) throw new Error('sealed message too short');
  const aad = blob.slice(0, 8);
  if (new DataView(aad.buffer, aad.byteOffset, 8).getBigUint64(0) !== BigInt(seq)) {
    throw new Error('sealed message out of order');
  }
  return chacha20poly1305(key, nonce(seq), aad).decrypt(blob.slice(8));
}

export function channelProof(bindingKey, role, own, peer) {
  const parts = [text('p2pd/1 channel binding\0'), text(role)];
  for (const fingerprint of [own, peer]) {
    const normalized = text(fingerprint.trim().toLowerCase());
    parts.push(u64(normalized.length), normalized);
  }
  return hmac(sha256, bindingKey, concat(...parts));
}

export function rejoinChannel(resumeSecret) {
  return hex(expand(sha256, extract(sha256, resumeSecret, text('p2pd/1 rejoin')), text('rendezvous channel'), 32));
}

export function sasCommitment(nonceBytes) {
  return sha256(concat(text('p2pd/1 sas commit\0'), nonceBytes));
}

export function sas(offerer, answerer, senderNonce, receiverNonce) {
  const parts = [text('p2pd/1 sas\0')];
  for (const fingerprint of [offerer, answerer]) {
    const normalized = text(fingerprint.trim().toLowerCase());
    parts.push(u64(normalized.length), normalized);
  }
  const digest = sha256(concat(...parts, senderNonce, receiverNonce));
  const value = new DataView(digest.buffer, digest.byteOffset, 4).getUint32(0) % 1000000;
  return `${String(Math.floor(value / 1000)).padStart(3, '0')} ${String(value % 1000).padStart(3, '0')}`;
}

// A streaming SHA-256 (WebCrypto has none): .update(bytes), .digest() → hex.
export function fileHasher() {
  const state = sha256.create();
  return {
    update: (bytes) => state.update(bytes),
    hexDigest: () => hex(state.digest()),
  };
}
