// The browser side of p2pd, served by the rendezvous: the same protocol as the daemon
// (docs/PROTOCOL.md §2 and §3) — SPAKE2 over the rendezvous, sealed signaling, one data
// channel labelled p2pd/3, the channel proof, then the file protocol — so a page talks to
// a daemon or to another page. Cryptography and the QR encoder come from lib.mjs.

import * as lib from '/lib.mjs';

const $ = (id) => document.getElementById(id);
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const LABEL = 'p2pd/3';
const CHUNK_BYTES = 64 * 1024;
const HIGH_WATER = 8 * 1024 * 1024;
const LOW_WATER = 1024 * 1024;
const CONNECT_LIMIT_MS = 30000;
const STEP_LIMIT_MS = 10000;
// Offer parts stay well under the receiver's 192 KiB control message limit.
const OFFER_PART_FILES = 500;

const HINT = {
  sender: 'reload this page for a new code',
  receiver: 'ask the sender for a new code',
};
const MESSAGES = {
  unknown_nameplate: () => 'no transfer is waiting for that code: check it, or ask the sender for a new one',
  expired: () => 'the code expired before anyone used it: ask the sender for a new code',
  crowded: () => 'that code is already in use by two other parties: ask the sender for a new one',
  burned: (role) => `wrong code, or someone tried to guess it: ${HINT[role]}`,
  abandoned: (role) =>
    `someone took the code without completing the key exchange (a guess, or an attempt to block the transfer): ${HINT[role]}`,
  busy: () => 'the rendezvous is busy: try again in a moment',
  peer_gone: () => 'the other side went away before the transfer started',
  closed: () => 'the rendezvous closed the connection',
};
const NO_ROUTE =
  'no network route to the other side was found: if either side is behind a strict NAT or firewall, configure a TURN server';
const UNPROVEN =
  "the other side could not prove it holds the code's key for this connection (possible interception): transfer refused";
const TAMPERED =
  'a signaling message failed authentication, so it was altered on the way or did not come from the other side (possible tampering at the rendezvous or on the network): try again';

class Failure extends Error {}

function showError(message) {
  $('error').textContent = `error: ${message}`;
  document.body.dataset.state = 'failed';
}

function status(message) {
  $('status').textContent = message;
}

function humanBytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${n.toFixed(2)} ${units[i]}`;
}

function base64(bytes) {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

function unbase64(s) {
  return Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
}

function withTimeout(promise, ms, message) {
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Failure(message)), ms);
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

// ---- the rendezvous (§2) ----

class Rendezvous {
  constructor(role) {
    this.role = role;
    this.url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/`;
    this.queue = [];
    this.waiting = [];
    this.closed = false;
  }

  open() {
    return new Promise((resolve, reject) => {
      this.ws = new WebSocket(this.url);
      this.ws.onopen = () => resolve();
      this.ws.onerror = () =>
        reject(new Failure(`cannot reach the rendezvous at ${this.url}: check that it runs and the address is right`));
      this.ws.onmessage = (event) => {
        let message;
        try {
          message = JSON.parse(event.data);
        } catch {
          message = { type: 'error', kind: 'protocol', message: 'not JSON' };
        }
        this.deliver(message);
      };
      this.ws.onclose = () => {
        this.closed = true;
        this.deliver({ type: 'closed' });
      };
    });
  }

  deliver(message) {
    const waiter = this.waiting.shift();
    if (waiter) waiter(message);
    else this.queue.push(message);
  }

  next() {
    if (this.queue.length) return Promise.resolve(this.queue.shift());
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  send(message) {
    if (!this.closed) this.ws.send(JSON.stringify(message));
  }

  failure(message) {
    const kind = message.type === 'error' ? message.kind : message.type;
    const make = MESSAGES[kind];
    return new Failure(make ? make(this.role) : `the rendezvous said: ${message.message || kind}`);
  }

  // The next message, which must be `type`.
  async expect(type) {
    const message = await this.next();
    if (message.type !== type) throw this.failure(message);
    return message;
  }

  relay(bytes) {
    this.send({ type: 'relay', body: base64(bytes) });
  }

  async recvRelay() {
    return unbase64((await this.expect('relay')).body);
  }

  close() {
    this.closed = true;
    this.ws.close();
  }
}

// SPAKE2 and key confirmation, then sealed JSON messages both ways.
async function establish(rv, role, code) {
  const { state, message } = lib.pakeStart(role, code, crypto.getRandomValues(new Uint8Array(64)));
  rv.relay(message);
  const wrong = new Failure(MESSAGES.burned(role));
  let keys;
  try {
    keys = lib.sessionKeys(lib.pakeFinish(state, await rv.recvRelay()), role);
  } catch (error) {
    if (error instanceof Failure) throw error;
    rv.send({ type: 'burn' });
    throw wrong;
  }
  rv.relay(keys.ourConfirmation());
  if (!keys.checkConfirmation(await rv.recvRelay())) {
    rv.send({ type: 'burn' });
    throw wrong;
  }
  let sent = 0;
  let received = 0;
  return {
    keys,
    send: (value) => rv.relay(lib.seal(keys.sealKey, sent++, encoder.encode(JSON.stringify(value)))),
    recv: async () => {
      const blob = await rv.recvRelay();
      try {
        return JSON.parse(decoder.decode(lib.open(keys.openKey, received++, blob)));
      } catch {
        throw new Failure(TAMPERED);
      }
    },
  };
}

// ---- the peer connection ----

function maxMessage(sdp) {
  const line = sdp.split(/\r?\n/).find((l) => l.startsWith('a=max-message-size:'));
  if (!line) return 65535;
  const n = Number(line.split(':')[1]);
  if (!Number.isFinite(n)) return 65535;
  return n === 0 ? Infinity : n;
}

// Offer/answer/candidates over the sealed session until the one channel opens.
async function connect(session, role, iceServers) {
  const pc = new RTCPeerConnection({ iceServers });
  const attempt = 0;
  pc.onicecandidate = (event) => {
    if (event.candidate && event.candidate.candidate) {
      session.send({ type: 'candidate', candidate: event.candidate.toJSON(), attempt });
    }
  };
  let channel;
  if (role === 'sender') {
    channel = Promise.resolve(pc.createDataChannel(LABEL, { ordered: true }));
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    session.send({ type: 'offer', sdp: offer.sdp, attempt });
  } else {
    channel = new Promise((resolve) => {
      let taken = false;
      pc.ondatachannel = (event) => {
        if (taken || event.channel.label !== LABEL) {
          event.channel.close();
          return;
        }
        taken = true;
        resolve(event.channel);
      };
    });
  }
  let open = false;
  const signaling = (async () => {
    while (!open) {
      let message;
      try {
        message = await session.recv();
      } catch (error) {
        // The other side hangs up the rendezvous once its channel is open.
        if (error instanceof Failure && error.message === TAMPERED) throw error;
        return;
      }
      if ((message.attempt || 0) !== attempt) continue;
      if (message.type === 'offer' && role === 'receiver') {
        await pc.setRemoteDescription({ type: 'offer', sdp: message.sdp });
        const answer = await pc.createAnswer();
        await pc.setLocalDescription(answer);
        session.send({ type: 'answer', sdp: answer.sdp, attempt });
      } else if (message.type === 'answer' && role === 'sender') {
        await pc.setRemoteDescription({ type: 'answer', sdp: message.sdp });
      } else if (message.type === 'candidate') {
        pc.addIceCandidate(message.candidate).catch(() => {});
      }
    }
  })();
  const opened = channel.then(
    (dc) =>
      new Promise((resolve, reject) => {
        dc.binaryType = 'arraybuffer';
        if (dc.readyState === 'open') resolve(dc);
        dc.onopen = () => resolve(dc);
        dc.onclose = () => reject(new Failure('the data channel closed before the transfer started'));
      }),
  );
  const dc = await withTimeout(Promise.race([opened, signaling.then(() => opened)]), CONNECT_LIMIT_MS, NO_ROUTE);
  open = true;
  return { pc, channel: new Channel(dc, maxMessage(pc.remoteDescription.sdp)) };
}

// One data channel as a queue of messages, with backpressure on its buffered amount.
class Channel {
  constructor(dc, peerMax) {
    this.dc = dc;
    this.max = Math.min(CHUNK_BYTES, peerMax);
    this.queue = [];
    this.waiting = [];
    this.closed = false;
    dc.bufferedAmountLowThreshold = LOW_WATER;
    dc.onmessage = (event) => {
      if (typeof event.data === 'string') {
        let value;
        try {
          value = JSON.parse(event.data);
        } catch {
          value = { type: 'malformed' };
        }
        this.deliver({ control: value });
      } else {
        this.deliver({ binary: new Uint8Array(event.data) });
      }
    };
    dc.onclose = () => {
      this.closed = true;
      this.deliver({ control: { type: 'closed' } });
    };
  }

  deliver(message) {
    const waiter = this.waiting.shift();
    if (waiter) waiter(message);
    else this.queue.push(message);
  }

  next() {
    if (this.queue.length) return Promise.resolve(this.queue.shift());
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  // The next control message (binary is a protocol error here).
  async control(limitMs) {
    const next = limitMs ? withTimeout(this.next(), limitMs, UNPROVEN) : this.next();
    const message = await next;
    if (!message.control) throw new Failure('the other side broke the protocol: unexpected binary message');
    return message.control;
  }

  sendJSON(value) {
    this.dc.send(JSON.stringify(value));
  }

  async sendBinary(bytes) {
    if (this.dc.bufferedAmount > HIGH_WATER) {
      await new Promise((resolve) => {
        this.dc.onbufferedamountlow = () => {
          this.dc.onbufferedamountlow = null;
          resolve();
        };
      });
    }
    if (this.closed) throw new Failure('the other side went away mid-transfer: run the transfer again');
    this.dc.send(bytes);
  }

  async drained() {
    while (this.dc.bufferedAmount > 0 && !this.closed) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}

async function certificates(pc) {
  const stats = await pc.getStats();
  let transport;
  stats.forEach((s) => {
    if (s.type === 'transport' && s.localCertificateId && s.remoteCertificateId) transport = s;
  });
  const fingerprint = (id) => stats.get(id) && stats.get(id).fingerprint;
  if (!transport) throw new Failure(UNPROVEN);
  return [fingerprint(transport.localCertificateId), fingerprint(transport.remoteCertificateId)];
}

// The channel proof (§3): both sides prove the PAKE key over the certificates they see.
async function prove(link, keys, role) {
  const [own, peer] = await certificates(link.pc);
  link.channel.sendJSON({ type: 'hello', proof: lib.hex(lib.channelProof(keys.bindingKey, role, own, peer)) });
  const reply = await link.channel.control(STEP_LIMIT_MS * 2);
  const other = role === 'sender' ? 'receiver' : 'sender';
  const expected = lib.channelProof(keys.bindingKey, other, peer, own);
  let proof;
  try {
    proof = lib.unhex(reply.proof || '');
  } catch {
    proof = new Uint8Array(0);
  }
  if (reply.type !== 'hello' || !lib.equal(proof, expected)) throw new Failure(UNPROVEN);
}

// ---- progress ----

class Progress {
  constructor(total) {
    this.total = total;
    this.samples = [];
    $('progress-box').hidden = false;
  }

  show(done) {
    const now = performance.now();
    this.samples.push([now, done]);
    while (this.samples.length > 2 && now - this.samples[0][0] > 5000) this.samples.shift();
    const [t0, b0] = this.samples[0];
    const rate = now > t0 ? ((done - b0) * 1000) / (now - t0) : 0;
    $('progress').value = this.total ? done / this.total : 1;
    const left = rate > 0 ? Math.ceil((this.total - done) / rate) : null;
    $('rate').textContent = `${humanBytes(done)} of ${humanBytes(this.total)}` +
      (rate > 0 ? ` — ${humanBytes(rate)}/s, ${left} s left` : '');
  }
}

// " in 1.2 s (12.00 MiB/s)": from acceptance to the last verified file.
function took(started, bytes) {
  const seconds = (performance.now() - started) / 1000;
  return ` in ${seconds.toFixed(1)} s (${humanBytes(seconds > 0 ? bytes / seconds : 0)}/s)`;
}

// ---- sending ----

async function startSend(entries) {
  if (!entries.length) return;
  $('send-box').querySelectorAll('input').forEach((i) => (i.disabled = true));
  $('receive-box').hidden = true;
  const rv = new Rendezvous('sender');
  try {
    await rv.open();
    rv.send({ type: 'allocate' });
    const { nameplate } = await rv.expect('allocated');
    const words = await (await fetch('/words.json')).json();
    const pick = () => words[crypto.getRandomValues(new Uint32Array(1))[0] % words.length];
    const code = `${nameplate}-${pick()}-${pick()}`;
    showCode(code);
    status('Waiting for the receiver…');
    const paired = await rv.expect('paired');
    status('Connecting…');
    const session = await establish(rv, 'sender', code);
    const link = await connect(session, 'sender', paired.ice_servers || []);
    rv.close();
    await prove(link, session.keys, 'sender');
    await send(link, entries);
  } catch (error) {
    showError(error.message);
  } finally {
    rv.close();
  }
}

function showCode(code) {
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

async function send(link, entries) {
  const { channel } = link;
  const files = entries.map((e) => ({
    name: e.name,
    size: e.file.size,
    mtime: Math.floor(e.file.lastModified / 1000),
  }));
  for (let i = 0; i < files.length || i === 0; i += OFFER_PART_FILES) {
    const part = files.slice(i, i + OFFER_PART_FILES);
    const more = i + OFFER_PART_FILES < files.length;
    channel.sendJSON(more ? { type: 'offer', files: part, more } : { type: 'offer', files: part });
    if (!more) break;
  }
  status('Waiting for the receiver to accept…');
  const answer = await channel.control();
  if (answer.type === 'reject') throw new Failure(`the receiver refused the offer: ${answer.reason}`);
  if (answer.type === 'cancel') throw new Failure(`the other side cancelled: ${answer.reason}`);
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
        failure = new Failure(
          c.mismatch
            ? `${files[c.index] ? files[c.index].name : 'a file'} arrived damaged (SHA-256 mismatch): run the transfer again`
            : `the receiver could not save ${files[c.index] ? files[c.index].name : 'a file'}: ${c.reason}`,
        );
        allVerified();
        return;
      } else if (c.type === 'cancel' || c.type === 'closed') {
        failure = new Failure(c.type === 'cancel' ? `the other side cancelled: ${c.reason}` : 'the other side went away mid-transfer: run the transfer again');
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

// ---- receiving ----

function validName(name) {
  if (typeof name !== 'string' || !name || name.length > 2048) return false;
  if (name.startsWith('/') || name.includes('\\') || /[\u0000-\u001f\u007f]/.test(name)) return false;
  return name.split('/').every((part) => part && part !== '.' && part !== '..');
}

async function startReceive(code) {
  $('send-box').hidden = true;
  $('receive').disabled = true;
  const rv = new Rendezvous('receiver');
  try {
    const nameplate = Number.parseInt(code, 10);
    if (!Number.isInteger(nameplate)) throw new Failure('the code must start with a number, like 7-orbit-lantern');
    const canonical = code.trim().toLowerCase().split(/[-\s]+/).filter(Boolean).join('-');
    await rv.open();
    rv.send({ type: 'claim', nameplate });
    const paired = await rv.expect('paired');
    status('Connecting…');
    const session = await establish(rv, 'receiver', canonical);
    const link = await connect(session, 'receiver', paired.ice_servers || []);
    rv.close();
    await prove(link, session.keys, 'receiver');
    await receive(link);
  } catch (error) {
    showError(error.message);
  } finally {
    rv.close();
  }
}

async function receive(link) {
  const { channel } = link;
  const files = [];
  for (;;) {
    const c = await channel.control();
    if (c.type === 'text') {
      status(`The sender says: ${c.text}`);
      channel.sendJSON({ type: 'complete' });
      document.body.dataset.state = 'done';
      return;
    }
    if (c.type === 'cancel') throw new Failure(`the other side cancelled: ${c.reason}`);
    if (c.type !== 'offer') throw new Failure(`the other side broke the protocol: unexpected ${c.type} message`);
    files.push(...(c.files || []));
    if (!c.more) break;
  }
  if (!files.every((f) => validName(f.name) && Number.isSafeInteger(f.size) && f.size >= 0)) {
    channel.sendJSON({ type: 'cancel', reason: 'the offer holds a name or size this page cannot save' });
    throw new Failure('the offer holds a name or size this page cannot save: nothing was saved');
  }
  const total = files.reduce((n, f) => n + f.size, 0);
  const folder = await ask(files, total);
  if (folder === null) {
    channel.sendJSON({ type: 'reject', reason: 'declined' });
    status('Declined: nothing was saved');
    document.body.dataset.state = 'declined';
    return;
  }
  channel.sendJSON({ type: 'accept' });
  const progress = new Progress(total);
  const started = performance.now();
  let received = 0;
  let lastReport = 0;
  let current = null;
  let saved = 0;
  status(`Receiving ${files.length} file(s)…`);
  for (;;) {
    const message = await channel.next();
    if (message.binary) {
      if (!current || current.written + message.binary.length > current.size) {
        throw await breakOff(channel, current, 'bytes outside a file, or more than announced');
      }
      current.hasher.update(message.binary);
      await current.sink.write(message.binary);
      current.written += message.binary.length;
      received += message.binary.length;
      const now = performance.now();
      if (now - lastReport > 200) {
        lastReport = now;
        channel.sendJSON({ type: 'progress', bytes: received });
        progress.show(received);
      }
      continue;
    }
    const c = message.control;
    if (c.type === 'file_start') {
      if (current || c.index !== saved || (c.offset || 0) !== 0 || !files[c.index]) {
        throw await breakOff(channel, current, 'files out of order');
      }
      const file = files[c.index];
      current = { index: c.index, size: file.size, written: 0, hasher: lib.fileHasher(), sink: await openSink(folder, file.name) };
    } else if (c.type === 'file_end') {
      if (!current || c.index !== current.index || current.written !== current.size) {
        throw await breakOff(channel, current, 'a file ended early or late');
      }
      if (current.hasher.hexDigest() !== String(c.sha256).toLowerCase()) {
        await current.sink.abort();
        channel.sendJSON({
          type: 'file_failed',
          index: c.index,
          reason: "the received bytes did not match the sender's SHA-256",
          mismatch: true,
        });
        throw new Failure(`${files[c.index].name} arrived damaged (SHA-256 mismatch): nothing was saved under its name`);
      }
      await current.sink.commit();
      channel.sendJSON({ type: 'file_verified', index: c.index });
      saved++;
      current = null;
    } else if (c.type === 'done') {
      channel.sendJSON({ type: 'progress', bytes: received });
      progress.show(received);
      status(`Received ${saved} file(s), ${humanBytes(received)}${took(started, received)}, every one verified`);
      document.body.dataset.state = 'done';
      link.pc.close();
      return;
    } else if (c.type === 'cancel') {
      if (current) await current.sink.abort();
      throw new Failure(`the sender cancelled the transfer: ${c.reason}`);
    } else if (c.type === 'closed') {
      if (current) await current.sink.abort();
      throw new Failure('the other side went away mid-transfer: run the transfer again');
    } else {
      throw await breakOff(channel, current, `unexpected ${c.type} message`);
    }
  }
}

async function breakOff(channel, current, reason) {
  if (current) await current.sink.abort();
  channel.sendJSON({ type: 'cancel', reason });
  return new Failure(`the other side broke the protocol: ${reason}`);
}

// Shows the offer; resolves to a folder handle (File System Access), undefined (downloads)
// or null (declined).
function ask(files, total) {
  $('offer').hidden = false;
  $('offer-line').textContent = `The sender offers ${files.length} file(s), ${humanBytes(total)} in all:`;
  const list = $('offer-list');
  list.replaceChildren(
    ...files.slice(0, 20).map((f) => {
      const li = document.createElement('li');
      li.textContent = `${f.name}  ${humanBytes(f.size)}`;
      return li;
    }),
  );
  if (files.length > 20) {
    const li = document.createElement('li');
    li.textContent = `… and ${files.length - 20} more`;
    list.append(li);
  }
  document.body.dataset.state = 'asking';
  return new Promise((resolve) => {
    $('accept').onclick = async () => {
      $('offer').hidden = true;
      if ($('use-fs').checked && window.showDirectoryPicker) {
        try {
          resolve(await window.showDirectoryPicker({ mode: 'readwrite' }));
        } catch {
          resolve(null);
        }
      } else {
        resolve(undefined);
      }
    };
    $('decline').onclick = () => {
      $('offer').hidden = true;
      resolve(null);
    };
  });
}

// Where a file's bytes go until it is verified: a File System Access writable (whose
// swap file only becomes the file on commit), or memory, offered as a download once
// verified. Either way nothing carries the file's name before its digest matched.
async function openSink(folder, name) {
  const parts = name.split('/');
  const base = parts.pop();
  if (folder) {
    document.body.dataset.saving = 'folder';
    let dir = folder;
    for (const part of parts) dir = await dir.getDirectoryHandle(part, { create: true });
    const free = await freeName(dir, base);
    const handle = await dir.getFileHandle(free, { create: true });
    const writable = await handle.createWritable();
    return {
      write: (bytes) => writable.write(bytes),
      commit: async () => {
        await writable.close();
        addSaved(`${parts.concat(free).join('/')} (in the chosen folder)`);
      },
      abort: async () => {
        await writable.abort();
        await dir.removeEntry(free).catch(() => {});
      },
    };
  }
  if (navigator.serviceWorker && navigator.serviceWorker.controller) {
    document.body.dataset.saving = 'stream';
    return streamedSink(name, base);
  }
  document.body.dataset.saving = 'memory';
  // No service worker (a private window may have none): kept in memory, offered once
  // verified.
  const chunks = [];
  return {
    write: async (bytes) => chunks.push(bytes.slice()),
    commit: async () => {
      const url = URL.createObjectURL(new Blob(chunks));
      const a = document.createElement('a');
      a.href = url;
      a.download = base;
      a.textContent = `Save ${name} again`;
      $('downloads').append(a, document.createElement('br'));
      a.click();
      addSaved(name);
    },
    abort: async () => {
      chunks.length = 0;
    },
  };
}

// A download streamed through the service worker (sw.js): bytes go to disk as they
// arrive, under the browser's temporary name until the stream is closed after the digest
// matched.
async function streamedSink(name, base) {
  const id = crypto.randomUUID();
  const { port1: port, port2 } = new MessageChannel();
  let credits = 0;
  let waiting = null;
  let cancelled = false;
  const ready = new Promise((resolve) => {
    port.onmessage = ({ data }) => {
      if (data.ready) resolve();
      if (data.want) credits += data.want;
      if (data.cancelled) cancelled = true;
      if (waiting && (credits > 0 || cancelled)) {
        const wake = waiting;
        waiting = null;
        wake();
      }
    };
  });
  navigator.serviceWorker.controller.postMessage({ id, name: base }, [port2]);
  await ready;
  const frame = document.createElement('iframe');
  frame.hidden = true;
  frame.src = `/download/${id}`;
  document.body.append(frame);
  return {
    write: async (bytes) => {
      while (credits === 0 && !cancelled) await new Promise((resolve) => (waiting = resolve));
      if (cancelled) throw new Failure(`the download of ${name} was cancelled in the browser: nothing more was saved`);
      credits--;
      const copy = bytes.slice();
      port.postMessage({ chunk: copy.buffer }, [copy.buffer]);
    },
    commit: async () => {
      port.postMessage({ done: true });
      addSaved(name);
    },
    abort: async () => {
      port.postMessage({ abort: true });
    },
  };
}

async function freeName(dir, base) {
  const dot = base.lastIndexOf('.');
  const [stem, ext] = dot > 0 ? [base.slice(0, dot), base.slice(dot)] : [base, ''];
  for (let n = 0; ; n++) {
    const candidate = n === 0 ? base : `${stem} (${n})${ext}`;
    try {
      await dir.getFileHandle(candidate);
    } catch {
      return candidate;
    }
  }
}

function addSaved(name) {
  const line = document.createElement('div');
  line.className = 'saved';
  line.textContent = `Saved ${name}`;
  $('downloads').append(line);
}

// ---- picking files ----

async function walk(entry, prefix, out) {
  if (entry.isFile) {
    const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
    out.push({ file, name: prefix + entry.name });
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {
      const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
      if (!batch.length) break;
      for (const child of batch) await walk(child, `${prefix}${entry.name}/`, out);
    }
  }
}

async function setUp() {
  $('fs-choice').hidden = !window.showDirectoryPicker;
  if (navigator.serviceWorker) {
    // Streamed downloads need the worker in control of this page (at once on a first
    // visit too: it claims its clients); a browser without one falls back to memory.
    try {
      await navigator.serviceWorker.register('/sw.js');
      if (!navigator.serviceWorker.controller) {
        await withTimeout(
          new Promise((resolve) => navigator.serviceWorker.addEventListener('controllerchange', resolve, { once: true })),
          3000,
          'no service worker',
        );
      }
    } catch {
      // Downloads then go through memory.
    }
  }
  $('files').onchange = () => startSend(Array.from($('files').files, (file) => ({ file, name: file.name })));
  $('folder').onchange = () =>
    startSend(Array.from($('folder').files, (file) => ({ file, name: file.webkitRelativePath || file.name })));
  const drop = $('drop');
  drop.ondragover = (event) => {
    event.preventDefault();
    drop.classList.add('over');
  };
  drop.ondragleave = () => drop.classList.remove('over');
  drop.ondrop = async (event) => {
    event.preventDefault();
    drop.classList.remove('over');
    const entries = [];
    for (const item of event.dataTransfer.items) {
      const entry = item.webkitGetAsEntry && item.webkitGetAsEntry();
      if (entry) await walk(entry, '', entries);
    }
    startSend(entries);
  };
  $('receive-form').onsubmit = (event) => {
    event.preventDefault();
    startReceive($('code-input').value);
  };
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get('receive')) $('code-input').value = fragment.get('receive');
  document.body.dataset.state = 'ready';
}

setUp();
