// Drives Debian's Chromium (headless, through playwright-core) on the page a rendezvous
// serves, as a person would: for tests/it/browser.rs.
//
//   node drive.mjs send URL FILE...       picks the files; prints "code CODE", then the result
//   node drive.mjs send-folder URL DIR    picks a folder (its files go with relative paths)
//   node drive.mjs receive URL CODE DIR   types the code, accepts, saves downloads into DIR
//   node drive.mjs receive-fs URL CODE    the same into a folder through the File System
//                                         Access API: the folder picker (a person's choice,
//                                         which a headless browser cannot make) answers with
//                                         the origin's private file system, a real directory
//                                         handle; "files" then maps each path to its SHA-256
//
// The last line is JSON: {"state": "done"|"failed"|"declined", "status", "error", "saved",
// "saving": how the page saved — "stream" (service worker), "memory" or "folder"}.

import { chromium } from 'playwright-core';
import path from 'node:path';

const [mode, url, ...rest] = process.argv.slice(2);
const LIMIT_MS = 120000;

// Types the code, accepts the offer, and waits for the end.
async function receiveWith(page, code) {
  await page.fill('#code-input', code);
  await page.click('#receive');
  await page.waitForFunction(() => ['asking', 'failed'].includes(document.body.dataset.state), null, {
    timeout: LIMIT_MS,
  });
  if ((await page.getAttribute('body', 'data-state')) === 'asking') await page.click('#accept');
  await page.waitForFunction(() => ['done', 'failed', 'declined'].includes(document.body.dataset.state), null, {
    timeout: LIMIT_MS,
  });
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});
const result = { state: 'unknown', status: '', error: '', saved: [], saving: null, files: {} };
try {
  const context = await browser.newContext({ acceptDownloads: true });
  const page = await context.newPage();
  page.on('console', (message) => process.stderr.write(`page: ${message.text()}\n`));
  page.on('pageerror', (error) => process.stderr.write(`page error: ${error.message}\n`));
  if (mode === 'receive-fs') {
    await page.addInitScript(() => {
      window.showDirectoryPicker = () => navigator.storage.getDirectory();
    });
  }
  await page.goto(url);
  await page.waitForSelector('body[data-state="ready"]');
  if (mode === 'send' || mode === 'send-folder') {
    await page.setInputFiles(mode === 'send' ? '#files' : '#folder', rest);
    await page.waitForFunction(() => document.getElementById('code').textContent || document.body.dataset.state === 'failed');
    const code = await page.textContent('#code');
    if (code) console.log(`code ${code}`);
  } else if (mode === 'receive-fs') {
    const [code] = rest;
    await page.check('#use-fs');
    await receiveWith(page, code);
    result.files = await page.evaluate(async () => {
      const out = {};
      const walk = async (dir, prefix) => {
        for await (const [name, handle] of dir.entries()) {
          if (handle.kind === 'directory') {
            const before = Object.keys(out).length;
            await walk(handle, `${prefix}${name}/`);
            // An empty folder is listed as itself.
            if (Object.keys(out).length === before) out[`${prefix}${name}/`] = 'folder';
          }
          else {
            const bytes = await (await handle.getFile()).arrayBuffer();
            const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
            out[prefix + name] = Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
          }
        }
      };
      await walk(await navigator.storage.getDirectory(), '');
      return out;
    });
  } else if (mode === 'receive') {
    const [code, dir] = rest;
    const downloads = [];
    page.on('download', (download) => {
      downloads.push(
        download.saveAs(path.join(dir, download.suggestedFilename())).then(() => download.suggestedFilename()),
      );
    });
    // Downloads, not the File System Access picker: a headless browser has no one to
    // answer a picker.
    if (await page.isVisible('#use-fs')) await page.uncheck('#use-fs');
    await receiveWith(page, code);
    result.saved = await Promise.all(downloads);
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
  await page.waitForFunction(() => ['done', 'failed', 'declined'].includes(document.body.dataset.state), null, {
    timeout: LIMIT_MS,
  });
  result.state = await page.getAttribute('body', 'data-state');
  result.status = await page.textContent('#status');
  result.error = await page.textContent('#error');
  result.saving = await page.getAttribute('body', 'data-saving');
} catch (error) {
  result.error = `driver: ${error.message}`;
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
