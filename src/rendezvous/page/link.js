// The peer connection and its one data channel (§2 step 3, §3): offer/answer and
// trickled candidates over the sealed session, the channel as a message queue with
// backpressure, and the channel proof over the certificates from getStats().

import * as lib from '/lib.mjs';
import { $, Failure, showError, status, humanBytes, base64, unbase64, withTimeout, Progress, took, Inbox } from './ui.js';
import { HINT, MESSAGES, TAMPERED, Rendezvous, establish } from './rendezvous.js';

export const LABEL = 'p2pd/3';
export const CHUNK_BYTES = 64 * 1024;
export const HIGH_WATER = 8 * 1024 * 1024;
export const LOW_WATER = 1024 * 1024;
export const CONNECT_LIMIT_MS = 30000;
export const STEP_LIMIT_MS = 10000;
export const NO_ROUTE =
  'no network route to the other side was found: if either side is behind a strict NAT or firewall, configure a TURN server';
export const UNPROVEN =
  "the other side could not prove it holds the code's key for this connection (possible interception): transfer refused";

// ---- the peer connection ----

export function maxMessage(sdp) {
  const line = sdp.split(/\r?\n/).find((l) => l.startsWith('a=max-message-size:'));
  if (!line) return 65535;
  const n = Number(line.split(':')[1]);
  if (!Number.isFinite(n)) return 65535;
  return n === 0 ? Infinity : n;
}

// Offer/answer/candidates over the sealed session until the one channel opens.
export async function connect(session, role, iceServers) {
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
export class Channel extends Inbox {
  constructor(dc, peerMax) {
    super();
    this.dc = dc;
    this.max = Math.min(CHUNK_BYTES, peerMax);
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
      // A sender waiting for the buffer to drain must not wait for ever.
      if (this.drainWaiter) this.drainWaiter();
      this.deliver({ control: { type: 'closed' } });
    };
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

  // Tells the other side this one stops, if the channel still carries anything.
  cancel(reason) {
    if (this.dc.readyState === 'open') this.dc.send(JSON.stringify({ type: 'cancel', reason }));
  }

  async sendBinary(bytes) {
    if (this.dc.bufferedAmount > HIGH_WATER && !this.closed) {
      await new Promise((resolve) => {
        this.drainWaiter = resolve;
        this.dc.onbufferedamountlow = () => {
          this.dc.onbufferedamountlow = null;
          this.drainWaiter = null;
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

export async function certificates(pc) {
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
export async function prove(link, keys, role) {
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
