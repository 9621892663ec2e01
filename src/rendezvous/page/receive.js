// The page as a receiver: the offer checked and shown, then each file hashed as it
// arrives and committed (a chosen folder, or a streamed download) only once it verified.

import * as lib from '/lib.mjs';
import { $, Failure, showError, status, humanBytes, base64, unbase64, withTimeout, Progress, took } from './ui.js';
import { HINT, MESSAGES, TAMPERED, Rendezvous, establish } from './rendezvous.js';
import { offerProblem, parseCode } from './names.js';
import { LABEL, CHUNK_BYTES, HIGH_WATER, LOW_WATER, CONNECT_LIMIT_MS, STEP_LIMIT_MS, NO_ROUTE, UNPROVEN, maxMessage, connect, Channel, certificates, prove } from './link.js';

// ---- receiving ----

export async function startReceive(code) {
  $('send-box').hidden = true;
  $('receive').disabled = true;
  const rv = new Rendezvous('receiver');
  let link = null;
  try {
    const words = await (await fetch('/words.json')).json();
    const { nameplate, canonical } = parseCode(code, words);
    await rv.open();
    rv.send({ type: 'claim', nameplate });
    await rv.expect('paired');
    status('Connecting…');
    const session = await establish(rv, 'receiver', canonical);
    link = await connect(session, 'receiver', session.iceServers);
    rv.close();
    await prove(link, session.keys, 'receiver');
    await receive(link);
  } catch (error) {
    showError(error.message);
    if (link) {
      // Whatever went wrong here, the sender hears of it and stops.
      if (!error.fromPeer) link.channel.cancel(error.message);
      setTimeout(() => link.pc.close(), 1000);
    }
    $('receive').disabled = false;
  } finally {
    rv.close();
  }
}

export async function receive(link) {
  const { channel } = link;
  const files = [];
  const folders = [];
  for (;;) {
    const c = await channel.control();
    if (c.type === 'text') {
      status(`The sender says: ${c.text}`);
      channel.sendJSON({ type: 'complete' });
      document.body.dataset.state = 'done';
      return;
    }
    if (c.type === 'cancel') throw peerFailure(`the other side cancelled: ${c.reason}`);
    if (c.type !== 'offer') throw new Failure(`the other side broke the protocol: unexpected ${c.type} message`);
    files.push(...(c.files || []));
    folders.push(...(c.folders || []).map((f) => f && f.name));
    if (!c.more) break;
  }
  const problem = offerProblem(files, folders);
  if (problem) throw new Failure(`${problem}: nothing was saved`);
  const total = files.reduce((n, f) => n + f.size, 0);
  const folder = await ask(files, total);
  // Folders the offer names (empty ones included) exist before their files arrive; a
  // download cannot make folders, so downloads skip them.
  if (folder) {
    for (const name of folders) {
      let dir = folder;
      for (const part of name.split('/')) dir = await dir.getDirectoryHandle(part, { create: true });
    }
  }
  if (folder === null) {
    channel.sendJSON({ type: 'reject', reason: 'declined' });
    status('Declined: nothing was saved');
    document.body.dataset.state = 'declined';
    return;
  }
  channel.sendJSON({ type: 'accept' });
  if (files.length === 0) {
    // Folders only: they are in place; the sender waits for this.
    channel.sendJSON({ type: 'complete' });
    status(`Received ${folders.length} folder(s)`);
    document.body.dataset.state = 'done';
    setTimeout(() => link.pc.close(), 2000);
    return;
  }
  const progress = new Progress(total);
  const started = performance.now();
  let received = 0;
  let lastReport = 0;
  let current = null;
  let saved = 0;
  status(`Receiving ${files.length} file(s)…`);
  try {
    for (;;) {
      if (await step()) return;
    }
  } catch (error) {
    // Nothing half-written keeps a name.
    if (current) await current.sink.abort().catch(() => {});
    throw error;
  }

  // One message; true once the transfer is done.
  async function step() {
    const message = await channel.next();
    if (message.binary) {
      if (!current || current.written + message.binary.length > current.size) {
        throw breakOff('bytes outside a file, or more than announced');
      }
      // Counted before the write: a streamed download takes the buffer over.
      const length = message.binary.length;
      current.hasher.update(message.binary);
      await current.sink.write(message.binary);
      current.written += length;
      received += length;
      const now = performance.now();
      if (now - lastReport > 200) {
        lastReport = now;
        channel.sendJSON({ type: 'progress', bytes: received });
        progress.show(received);
      }
      return false;
    }
    const c = message.control;
    if (c.type === 'file_start') {
      if (current || c.index !== saved || (c.offset || 0) !== 0 || !files[c.index]) {
        throw breakOff('files out of order');
      }
      const file = files[c.index];
      current = { index: c.index, size: file.size, written: 0, hasher: lib.fileHasher(), sink: await openSink(folder, file.name) };
    } else if (c.type === 'file_end') {
      if (!current || c.index !== current.index || current.written !== current.size) {
        throw breakOff('a file ended early or late');
      }
      if (current.hasher.hexDigest() !== String(c.sha256).toLowerCase()) {
        await current.sink.abort();
        current = null;
        channel.sendJSON({
          type: 'file_failed',
          index: c.index,
          reason: "the received bytes did not match the sender's SHA-256",
          mismatch: true,
        });
        throw peerFailure(`${files[c.index].name} arrived damaged (SHA-256 mismatch): nothing was saved under its name`);
      }
      await current.sink.commit();
      channel.sendJSON({ type: 'file_verified', index: c.index });
      saved++;
      current = null;
    } else if (c.type === 'done') {
      if (current || saved !== files.length) throw breakOff('done before every file was verified');
      channel.sendJSON({ type: 'progress', bytes: received });
      progress.show(received);
      status(`Received ${saved} file(s), ${humanBytes(received)}${took(started, received)}, every one verified`);
      document.body.dataset.state = 'done';
      link.pc.close();
      return true;
    } else if (c.type === 'cancel') {
      throw peerFailure(`the sender cancelled the transfer: ${c.reason}`);
    } else if (c.type === 'closed') {
      throw peerFailure('the other side went away mid-transfer: run the transfer again');
    } else {
      throw breakOff(`unexpected ${c.type} message`);
    }
    return false;
  }
}

// A failure the peer already knows of (it said so, it left, or it was told): no cancel.
function peerFailure(message) {
  const failure = new Failure(message);
  failure.fromPeer = true;
  return failure;
}

function breakOff(reason) {
  return new Failure(`the other side broke the protocol: ${reason}`);
}

// Shows the offer; resolves to a folder handle (File System Access), undefined (downloads)
// or null (declined).
export function ask(files, total) {
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
export async function openSink(folder, name) {
  const parts = name.split('/');
  const base = parts.pop();
  if (folder) {
    document.body.dataset.saving = 'folder';
    let dir = folder;
    for (const part of parts) dir = await dir.getDirectoryHandle(part, { create: true });
    // Written under a partial name, given its own only once verified (where the browser
    // can rename a handle; Chromium can).
    const free = await freeName(dir, base);
    const partial = `${free}.p2pd-part`;
    const handle = await dir.getFileHandle(typeof FileSystemHandle.prototype.move === 'function' ? partial : free, {
      create: true,
    });
    const writable = await handle.createWritable();
    return {
      write: (bytes) => writable.write(bytes),
      commit: async () => {
        await writable.close();
        if (handle.name !== free) await handle.move(free);
        addSaved(`${parts.concat(free).join('/')} (in the chosen folder)`);
      },
      abort: async () => {
        await writable.abort().catch(() => {});
        await dir.removeEntry(handle.name).catch(() => {});
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
    // Each message arrives in a buffer of its own, which nothing else reuses: kept as is.
    write: async (bytes) => chunks.push(bytes),
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
export async function streamedSink(name, base) {
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
      // The message's own buffer, hashed already: handed to the worker, not copied (a view
      // into a larger buffer, which the channel never makes, would be copied).
      const whole = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength;
      const buffer = whole ? bytes.buffer : bytes.slice().buffer;
      port.postMessage({ chunk: buffer }, [buffer]);
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

export async function freeName(dir, base) {
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

export function addSaved(name) {
  const line = document.createElement('div');
  line.className = 'saved';
  line.textContent = `Saved ${name}`;
  $('downloads').append(line);
}
