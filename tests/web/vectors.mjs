// Prints what the page's crypto module (src/rendezvous/page/lib.mjs, given as the
// argument) computes for the inputs of docs/PROTOCOL.md §4 and §5, as JSON;
// tests/it/page.rs compares it with the published vectors.
const c = await import(process.argv[2]);
const code = '7-orbit-lantern';
const a = c.pakeStart('sender', code, new Uint8Array(64).fill(1));
const b = c.pakeStart('receiver', code, new Uint8Array(64).fill(2));
const ka = c.pakeFinish(a.state, b.message), kb = c.pakeFinish(b.state, a.message);
const s = c.sessionKeys(ka, 'sender'), r = c.sessionKeys(kb, 'receiver');
const offer = new TextEncoder().encode('{"type":"offer","sdp":"v=0","attempt":0}');
const fo = 'AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89';
const fa = '10:32:54:76:98:ba:dc:fe:10:32:54:76:98:ba:dc:fe:10:32:54:76:98:ba:dc:fe:10:32:54:76:98:ba:dc:fe';
const out = {
  msg_a: c.hex(a.message), msg_b: c.hex(b.message), key: c.hex(ka), same_key: c.hex(ka) === c.hex(kb),
  tag_sender: c.hex(s.ourConfirmation()), tag_receiver: c.hex(r.ourConfirmation()),
  confirms: s.checkConfirmation(r.ourConfirmation()) && r.checkConfirmation(s.ourConfirmation()),
  binding: c.hex(s.bindingKey), resume: c.hex(s.resumeSecret),
  sealed0: c.hex(c.seal(s.sealKey, 0, offer)), sealed1: c.hex(c.seal(s.sealKey, 1, offer)),
  opens: new TextDecoder().decode(c.open(r.openKey, 0, c.seal(s.sealKey, 0, offer))),
  proof: c.hex(c.channelProof(s.bindingKey, 'sender', fo, fa)),
  rejoin: c.rejoinChannel(s.resumeSecret),
  commit: c.hex(c.sasCommitment(new Uint8Array(32).fill(0x11))),
  sas: c.sas(fo, fa, new Uint8Array(32).fill(0x11), new Uint8Array(32).fill(0x22)),
};
console.log(JSON.stringify(out, null, 1));
