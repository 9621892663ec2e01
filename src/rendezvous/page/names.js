// What the page accepts from the network and from people, by the daemon's rules: names
// and paths in an offer (src/transfer/names.rs) and codes (src/rendezvous/code.rs), with
// the CLI's words for a code that is not one.

import { Failure } from './ui.js';

const MAX_NAME_BYTES = 200;
const MAX_DEPTH = 64;
const MAX_PATH_BYTES = 2048;
const PARTIAL_SUFFIX = '.p2pd-part';
const CODE_WORDS = 2;
// Controls (C0, DEL, C1) and the invisible, bidi and tag characters that make a name
// read as something it is not, and blank fillers (src/terminal.rs is_dangerous_char).
const DANGEROUS =
  /[\u0000-\u001f\u007f-\u009f\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u2028-\u202e\u2060-\u206f\u2800\u3164\ufeff\uffa0\ufff9-\ufffb\u{e0000}-\u{e007f}]/u;

const byteLength = (s) => new TextEncoder().encode(s).length;

export function validName(name) {
  return (
    typeof name === 'string' &&
    name.length > 0 &&
    byteLength(name) <= MAX_NAME_BYTES &&
    name !== '.' &&
    name !== '..' &&
    !name.endsWith(PARTIAL_SUFFIX) &&
    name.trim() === name &&
    !/[/\\:]/.test(name) &&
    !DANGEROUS.test(name)
  );
}

export function validPath(path) {
  return (
    typeof path === 'string' &&
    byteLength(path) <= MAX_PATH_BYTES &&
    path.split('/').length <= MAX_DEPTH &&
    path.split('/').every(validName)
  );
}

// Why an offer cannot be saved, or null: every path valid, sizes whole and non-negative,
// no two names equal but for case, no path both a file and a folder.
export function offerProblem(files, folders) {
  if (files.length === 0 && folders.length === 0) return 'the offer is empty';
  const folded = new Set();
  for (const name of folders) {
    if (!validPath(name)) return 'the offer holds a folder name this page will not save';
    if (folded.has(name.toLowerCase())) return 'the offer names a folder twice';
    folded.add(name.toLowerCase());
  }
  const seen = new Set();
  for (const file of files) {
    if (!file || !validPath(file.name)) return 'the offer holds a file name this page will not save';
    if (!Number.isSafeInteger(file.size) || file.size < 0) return 'the offer holds an impossible size';
    const name = file.name.toLowerCase();
    if (folded.has(name)) return 'the offer names a path as both a file and a folder';
    if (seen.has(name)) return 'the offer names a file twice';
    seen.add(name);
  }
  return null;
}

// Edits (insertions, deletions, substitutions) from a to b.
function editDistance(a, b) {
  let row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i += 1) {
    const next = [i];
    for (let j = 1; j <= b.length; j += 1) {
      next.push(Math.min(row[j] + 1, next[j - 1] + 1, row[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1)));
    }
    row = next;
  }
  return row[b.length];
}

// The list's word closest to a typo, at most two edits away; the first on a tie
// (src/rendezvous/code.rs nearest_word).
function nearestWord(typed, words) {
  let best = null;
  let bestDistance = 3;
  for (const word of words) {
    const distance = editDistance(typed, word);
    if (distance < bestDistance) {
      best = word;
      bestDistance = distance;
    }
  }
  return best;
}

// The nameplate and the canonical code (the SPAKE2 password), or a Failure in the CLI's
// words, before anything is sent: a typo must not spend the code.
export function parseCode(text, words) {
  const trimmed = text.trim();
  if (!trimmed) throw new Failure("the code is empty: give the code the sender's p2p printed, like 7-orbit-lantern");
  const parts = trimmed.split(/[-\s]+/).filter(Boolean);
  const first = parts.shift();
  if (!/^\d+$/.test(first) || Number(first) > 0xffffffff) {
    throw new Failure('the code must start with a number, like 7-orbit-lantern');
  }
  if (parts.length !== CODE_WORDS) {
    throw new Failure(
      `the code has ${parts.length} word(s) after the number but needs ${CODE_WORDS}: check it, like 7-orbit-lantern`,
    );
  }
  const chosen = parts.map((word) => {
    const lower = word.toLowerCase();
    if (!words.includes(lower)) {
      const nearest = nearestWord(lower, words);
      const hint = nearest
        ? `did you mean '${nearest}'? (p2p words lists them all)`
        : 'check the spelling of the code (p2p words lists them all)';
      throw new Failure(`'${word.slice(0, 40)}' is not one of p2pd's code words: ${hint}`);
    }
    return lower;
  });
  const nameplate = Number(first);
  return { nameplate, canonical: [String(nameplate), ...chosen].join('-') };
}
