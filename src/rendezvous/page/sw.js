// The page's service worker: turns a received file into a streamed download. The page
// hands it a MessagePort per file; the worker answers a request for /download/ID with a
// response whose body is fed from that port, one chunk per `want` it asks for (so the
// page never gets far ahead of the disk). The page closes the stream only once the
// file's SHA-256 matched; on a mismatch it errors the stream, and the browser abandons
// the download, which therefore never gets its name.

const pending = new Map();

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

self.addEventListener('message', (event) => {
  const { id, name, size } = event.data || {};
  const port = event.ports[0];
  if (typeof id !== 'string' || typeof name !== 'string' || !port) return;
  let wake = null;
  const stream = new ReadableStream(
    {
      start(controller) {
        port.onmessage = ({ data }) => {
          if (data.chunk) controller.enqueue(new Uint8Array(data.chunk));
          else if (data.done) controller.close();
          else if (data.abort) controller.error(new Error('the file did not verify'));
          if (wake) {
            const resume = wake;
            wake = null;
            resume();
          }
        };
      },
      pull() {
        port.postMessage({ want: 1 });
        return new Promise((resolve) => (wake = resolve));
      },
      cancel() {
        port.postMessage({ cancelled: true });
      },
    },
    { highWaterMark: 16 },
  );
  pending.set(id, { stream, name, size });
  port.postMessage({ ready: true });
});

self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  if (url.origin !== self.location.origin || !url.pathname.startsWith('/download/')) return;
  const entry = pending.get(url.pathname.slice('/download/'.length));
  if (!entry) return;
  pending.delete(url.pathname.slice('/download/'.length));
  const headers = {
    'Content-Type': 'application/octet-stream',
    'Content-Disposition': `attachment; filename*=UTF-8''${encodeURIComponent(entry.name)}`,
    'X-Content-Type-Options': 'nosniff',
  };
  if (Number.isSafeInteger(entry.size)) headers['Content-Length'] = String(entry.size);
  event.respondWith(new Response(entry.stream, { headers }));
});
