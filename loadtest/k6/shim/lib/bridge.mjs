// VU-thread side of the synchronous bridge to the main thread, which does all
// network I/O (fetch for k6/http, the `ws` package for k6/ws). Requests are
// posted on a MessagePort; the main thread posts replies and events back and
// bumps a shared Int32 so that a blocked VU wakes up (Atomics.wait), then the
// VU reads them with receiveMessageOnPort. So a VU blocks exactly where k6
// blocks (http.*, sleep, ws.connect until the socket closes) while the main
// thread's event loop keeps every socket of every VU going.

import { receiveMessageOnPort } from 'node:worker_threads';

let port = null;
let signal = null;
let nextId = 0;
const inbox = [];

export function init(p, sab) {
  port = p;
  signal = new Int32Array(sab);
}

export function post(msg) {
  port.postMessage(msg);
}

function drain() {
  let n = 0;
  for (;;) {
    const m = receiveMessageOnPort(port);
    if (m === undefined) return n;
    inbox.push(m.message);
    n++;
  }
}

/** Move arrived messages to the inbox; if none, block up to timeoutMs for one. */
export function pump(timeoutMs) {
  const seen = Atomics.load(signal, 0);
  if (drain() > 0) return;
  if (timeoutMs > 0) Atomics.wait(signal, 0, seen, timeoutMs);
  drain();
}

/** Block until a message matching `pred` arrives; remove and return it. */
export function waitFor(pred) {
  for (;;) {
    const i = inbox.findIndex(pred);
    if (i >= 0) return inbox.splice(i, 1)[0];
    pump(1000);
  }
}

/** Request/response: blocks until the main thread answers. */
export function call(msg) {
  const id = ++nextId;
  post({ ...msg, id });
  const r = waitFor((m) => m.id === id);
  if (r.fatal) throw new Error(r.fatal);
  return r;
}

/** Remove and return the queued events of socket `sid`, oldest first. */
export function take(sid) {
  drain();
  const out = [];
  for (let i = 0; i < inbox.length; ) {
    if (inbox[i].sid === sid && inbox[i].id === undefined) out.push(inbox.splice(i, 1)[0]);
    else i++;
  }
  return out;
}

export function hasEvents(sid) {
  return inbox.some((m) => m.sid === sid && m.id === undefined);
}
