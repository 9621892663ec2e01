// The page's small helpers: elements, messages to the person, progress with rate and
// ETA, base64, timeouts.

export const $ = (id) => document.getElementById(id);

export class Failure extends Error {}

export function showError(message) {
  $('error').textContent = `error: ${message}`;
  document.body.dataset.state = 'failed';
}

export function status(message) {
  $('status').textContent = message;
}

export function humanBytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return i === 0 ? `${Math.round(n)} B` : `${n.toFixed(2)} ${units[i]}`;
}

export function base64(bytes) {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

export function unbase64(s) {
  return Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
}

export function withTimeout(promise, ms, message) {
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Failure(message)), ms);
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

// ---- progress ----

export class Progress {
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
export function took(started, bytes) {
  const seconds = (performance.now() - started) / 1000;
  return ` in ${seconds.toFixed(1)} s (${humanBytes(seconds > 0 ? bytes / seconds : 0)}/s)`;
}

// Messages that arrive before anyone asks, and askers that wait for the next one.
export class Inbox {
  constructor() {
    this.queue = [];
    this.waiting = [];
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
}
