// The rendezvous (docs/PROTOCOL.md §2): the WebSocket client, then SPAKE2, key
// confirmation and sealed JSON messages over it. Errors use the CLI's words.

import * as lib from '/lib.mjs';
import { $, Failure, showError, status, humanBytes, base64, unbase64, withTimeout, Progress, took, Inbox } from './ui.js';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export const HINT = {
  sender: 'reload this page for a new code',
  receiver: 'ask the sender for a new code',
};
export const MESSAGES = {
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
export const TAMPERED =
  'a signaling message failed authentication, so it was altered on the way or did not come from the other side (possible tampering at the rendezvous or on the network): try again';

// ---- the rendezvous (§2) ----

export class Rendezvous extends Inbox {
  constructor(role) {
    super();
    this.role = role;
    this.url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/`;
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

  // The pair's STUN and TURN, which the rendezvous gives only once both sides relayed
  // their key exchange (\`paired\` carries STUN only). The peer may already be sending:
  // what it sends meanwhile stays queued, in order, for recvRelay.
  async iceServers() {
    this.send({ type: 'ice' });
    const early = [];
    for (;;) {
      const message = await this.next();
      if (message.type === 'relay') {
        early.push(message);
        continue;
      }
      this.queue.unshift(...early);
      if (message.type !== 'ice') throw this.failure(message);
      return message.ice_servers || [];
    }
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
export async function establish(rv, role, code) {
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
  const iceServers = await rv.iceServers();
  let sent = 0;
  let received = 0;
  return {
    keys,
    iceServers,
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
