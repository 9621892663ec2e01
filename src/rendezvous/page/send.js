// The page as a sender: a code (and a QR code of a link that carries it), then the
// offer, the files with their SHA-256, and the receiver's verdicts.

import * as lib from '/lib.mjs';
import { $, Failure, showError, status, humanBytes, base64, unbase64, withTimeout, Progress, took } from './ui.js';
import { HINT, MESSAGES, TAMPERED, Rendezvous, establish } from './rendezvous.js';
import { LABEL, CHUNK_BYTES, HIGH_WATER, LOW_WATER, CONNECT_LIMIT_MS, STEP_LIMIT_MS, NO_ROUTE, UNPROVEN, maxMessage, connect, Channel, certificates, prove } from './link.js';

// Offer parts stay well under the receiver's 192 KiB control message limit, however
// long the names (as the daemon's offer_parts does).
export const OFFER_PART_BYTES = 32 * 1024;

// ---- sending ----

export async function startSend(entries) {
  if (!entries.length) return;
  $('send-box').querySelectorAll('input').forEach((i) => (i.disabled = true));
  $('receive-box').hidden = true;
  const rv = new Rendezvous('sender');
  let link = null;
  try {
    await rv.open();
    rv.send({ type: 'allocate' });
    const { nameplate } = await rv.expect('allocated');
    const words = await (await fetch('/words.json')).json();
    const pick = () => words[crypto.getRandomValues(new Uint32Array(1))[0] % words.length];
    const code = `${nameplate}-${pick()}-${pick()}`;
    showCode(code);
    status('Waiting for the receiver…');
    await rv.expect('paired');
    status('Connecting…');
    const session = await establish(rv, 'sender', code);
    link = await connect(session, 'sender', session.iceServers);
    rv.close();
    await prove(link, session.keys, 'sender');
    await send(link, entries);
  } catch (error) {
    showError(error.message);
    if (link) {
      // A file that cannot be read, a page error: the receiver hears of it and stops.
      if (!error.fromPeer) link.channel.cancel(error.message);
      setTimeout(() => link.pc.close(), 1000);
    }
  } finally {
    rv.close();
  }
}

export function showCode(code) {
  $('sharing').hidden = false;
  $('code').textContent = code;
  $('code-again').textContent = code;
  const link = `${location.origin}/#receive=${encodeURIComponent(code)}`;
  $('link').href = link;
  $('link').textContent = link;
  const qr = lib.qrcode(0, 'M');
  qr.addData(link);
  qr.make();
  const img = document.createElement('img');
  img.alt = 'QR code of the link';
  img.src = qr.createDataURL(4, 2);
  $('qr').replaceChildren(img);
}

export async function send(link, entries) {
  const { channel } = link;
  const files = entries.map((e) => ({
    name: e.name,
    size: e.file.size,
    mtime: Math.floor(e.file.lastModified / 1000),
  }));
  let part = [];
  let bytes = 0;
  for (const file of files) {
    const cost = JSON.stringify(file).length * 6 + 16;
    if (part.length && bytes + cost > OFFER_PART_BYTES) {
      channel.sendJSON({ type: 'offer', files: part, more: true });
      part = [];
      bytes = 0;
    }
    part.push(file);
    bytes += cost;
  }
  channel.sendJSON({ type: 'offer', files: part });
  status('Waiting for the receiver to accept…');
  const answer = await channel.control();
  if (answer.type === 'reject') throw peerFailure(`the receiver refused the offer: ${answer.reason}`);
  if (answer.type === 'cancel') throw peerFailure(`the other side cancelled: ${answer.reason}`);
  if (answer.type !== 'accept') throw new Failure(`the other side broke the protocol: unexpected ${answer.type} message`);
  const total = files.reduce((n, f) => n + f.size, 0);
  const progress = new Progress(total);
  const started = performance.now();
  let verified = 0;
  let failure = null;
  let allVerified;
  const everyone = new Promise((resolve) => (allVerified = resolve));
  // The receiver's reports arrive while we send.
  (async () => {
    for (;;) {
      const message = await channel.next();
      const c = message.control || {};
      if (c.type === 'progress') progress.show(c.bytes);
      else if (c.type === 'file_verified') {
        verified++;
        if (verified === files.length) allVerified();
      } else if (c.type === 'file_failed') {
        failure = peerFailure(
          c.mismatch
            ? `${files[c.index] ? files[c.index].name : 'a file'} arrived damaged (SHA-256 mismatch): run the transfer again`
            : `the receiver could not save ${files[c.index] ? files[c.index].name : 'a file'}: ${c.reason}`,
        );
        allVerified();
        return;
      } else if (c.type === 'cancel' || c.type === 'closed') {
        failure = peerFailure(c.type === 'cancel' ? `the other side cancelled: ${c.reason}` : 'the other side went away mid-transfer: run the transfer again');
        allVerified();
        return;
      }
    }
  })();
  status(`Sending ${files.length} file(s)…`);
  for (let index = 0; index < entries.length; index++) {
    if (failure) throw failure;
    channel.sendJSON({ type: 'file_start', index });
    const hasher = lib.fileHasher();
    const reader = entries[index].file.stream().getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      for (let at = 0; at < value.length; at += channel.max) {
        const piece = value.subarray(at, Math.min(value.length, at + channel.max));
        hasher.update(piece);
        await channel.sendBinary(piece);
      }
    }
    channel.sendJSON({ type: 'file_end', index, sha256: hasher.hexDigest() });
  }
  if (files.length === 0) allVerified();
  await everyone;
  if (failure) throw failure;
  channel.sendJSON({ type: 'done' });
  await channel.drained();
  progress.show(total);
  status(`Sent ${files.length} file(s), ${humanBytes(total)}${took(started, total)}, every one verified by the receiver`);
  document.body.dataset.state = 'done';
  setTimeout(() => link.pc.close(), 2000);
}

// A failure the peer already knows of (it said so, or it left): no cancel.
function peerFailure(message) {
  const failure = new Failure(message);
  failure.fromPeer = true;
  return failure;
}
