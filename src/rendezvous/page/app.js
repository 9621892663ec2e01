// The browser side of p2pd, served by the rendezvous: the same protocol as the daemon
// (docs/PROTOCOL.md §2 and §3) — SPAKE2 over the rendezvous, sealed signaling, one data
// channel labelled p2pd/3, the channel proof, then the file protocol — so a page talks to
// a daemon or to another page. This module wires the page up; ui.js, rendezvous.js,
// link.js, send.js and receive.js do the rest, and lib.mjs brings the cryptography and
// the QR encoder.

import { $, withTimeout } from './ui.js';
import { startSend } from './send.js';
import { startReceive } from './receive.js';

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
    // Every entry first: the browser empties the list once this handler awaits.
    const dropped = Array.from(event.dataTransfer.items, (item) => item.webkitGetAsEntry && item.webkitGetAsEntry());
    const entries = [];
    for (const entry of dropped) if (entry) await walk(entry, '', entries);
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
