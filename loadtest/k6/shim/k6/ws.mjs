// Shim of the classic `k6/ws` API. As in k6, ws.connect() blocks the VU until
// the socket is closed: the VU thread runs its own little event loop here,
// dispatching the socket's events (forwarded by the main thread, which owns
// the real `ws` WebSocket) and its setTimeout/setInterval timers. Emits
// ws_connecting, ws_sessions, ws_session_duration, ws_msgs_sent and
// ws_msgs_received like k6.
import * as bridge from '../lib/bridge.mjs';
import { sample, state } from '../lib/state.mjs';

let nextSid = 0;
let active = false;
const MAX_TIMER_RUNS = 100; // per loop turn, so that events are not starved

class Socket {
  constructor(sid) {
    this.sid = sid;
    this.handlers = {};
    this.timers = [];
    this.closing = false;
    this.closed = false;
  }

  on(event, fn) {
    if (typeof fn !== 'function') throw new Error(`socket.on('${event}'): handler is not a function`);
    (this.handlers[event] ||= []).push(fn);
  }

  emit(event, ...args) {
    for (const fn of this.handlers[event] || []) fn.apply(this, args);
  }

  send(data) {
    if (this.closing || this.closed) return;
    bridge.post({ op: 'ws_send', sid: this.sid, data: String(data) });
    sample('ws_msgs_sent', 'counter', 1);
  }

  sendBinary(buf) {
    if (this.closing || this.closed) return;
    bridge.post({ op: 'ws_send', sid: this.sid, data: Buffer.from(buf), binary: true });
    sample('ws_msgs_sent', 'counter', 1);
  }

  ping() {
    if (this.closing || this.closed) return;
    bridge.post({ op: 'ws_ping', sid: this.sid });
  }

  setTimeout(fn, ms) {
    this.timers.push({ due: Date.now() + Number(ms), every: 0, fn });
  }

  setInterval(fn, ms) {
    const every = Number(ms);
    if (!(every > 0)) throw new Error(`socket.setInterval: interval must be > 0, got ${ms}`);
    this.timers.push({ due: Date.now() + every, every, fn });
  }

  close(code) {
    if (this.closing || this.closed) return;
    this.closing = true;
    bridge.post({ op: 'ws_close', sid: this.sid, code: code === undefined ? 1000 : Number(code) });
  }

  dispatch(m) {
    switch (m.ev) {
      case 'message':
        sample('ws_msgs_received', 'counter', 1);
        if (m.binary) this.emit('binaryMessage', m.data);
        else this.emit('message', m.data);
        break;
      case 'ping':
        this.emit('ping');
        break;
      case 'pong':
        this.emit('pong');
        break;
      case 'error': {
        const msg = m.error;
        this.emit('error', { error: () => msg, toString: () => msg });
        break;
      }
      case 'close':
        this.closed = true;
        this.timers = [];
        this.emit('close', m.code);
        break;
      default:
        break;
    }
  }

  runTimers() {
    for (let n = 0; n < MAX_TIMER_RUNS && !this.closed; n++) {
      const now = Date.now();
      let t = null;
      for (const x of this.timers) if (x.due <= now && (t === null || x.due < t.due)) t = x;
      if (t === null) return;
      if (t.every > 0) t.due = Math.max(t.due + t.every, now);
      else this.timers.splice(this.timers.indexOf(t), 1);
      t.fn.call(this);
    }
  }

  loop() {
    while (!this.closed) {
      for (const m of bridge.take(this.sid)) {
        this.dispatch(m);
        if (this.closed) return;
      }
      this.runTimers();
      if (this.closed) return;
      let wait = 1000;
      for (const t of this.timers) wait = Math.min(wait, t.due - Date.now());
      if (!bridge.hasEvents(this.sid)) bridge.pump(Math.max(0, wait));
    }
  }
}

export function connect(url, params, callback) {
  if (typeof params === 'function') {
    callback = params;
    params = undefined;
  }
  if (state.phase === 'init') throw new Error('ws.connect is not allowed in the init context');
  if (active) throw new Error('k6 shim: ws.connect inside a socket handler is not supported');
  if (typeof callback !== 'function') throw new Error('ws.connect: the last argument must be a function');
  const p = params || {};
  const sid = ++nextSid;
  bridge.post({ op: 'ws_open', sid, url: String(url), headers: { ...(p.headers || {}) } });
  const first = bridge.waitFor((m) => m.sid === sid && (m.ev === 'open' || m.ev === 'fail'));
  if (first.ev === 'fail') {
    process.stderr.write(`WARN[k6 shim] VU ${globalThis.__VU}: ws.connect ${url}: ${first.error}\n`);
    return { status: first.status, url: String(url), headers: first.headers || {}, body: first.body || '', error: first.error };
  }
  sample('ws_connecting', 'trend', first.connectingMs, true);
  sample('ws_sessions', 'counter', 1);
  const started = Date.now();
  const socket = new Socket(sid);
  active = true;
  try {
    callback(socket);
    socket.emit('open');
    socket.loop();
  } finally {
    active = false;
    if (!socket.closed) {
      // A handler threw: close the socket before the error propagates.
      bridge.post({ op: 'ws_close', sid, code: 1000 });
      bridge.waitFor((m) => m.sid === sid && m.ev === 'close');
    }
    bridge.take(sid);
    sample('ws_session_duration', 'trend', Date.now() - started, true);
  }
  return { status: 101, url: String(url), headers: first.headers || {}, body: '', error: '' };
}

export default { connect };
