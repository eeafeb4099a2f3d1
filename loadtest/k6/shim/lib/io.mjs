// Main-thread side of the bridge: carries out the VUs' HTTP requests (fetch)
// and owns their WebSockets (the `ws` package), posting replies and socket
// events back to the VU's port and waking the VU through the shared signal.

import { createRequire } from 'node:module';

let WebSocket;
try {
  WebSocket = createRequire(import.meta.url)('ws');
} catch (e) {
  throw new Error(`k6 shim: the 'ws' package is missing; run \`npm ci --prefix loadtest/k6/shim\` (${e.message})`);
}

const CLOSE_WAIT_MS = 3000;
const HANDSHAKE_TIMEOUT_MS = 60000;

async function doFetch(req) {
  const t0 = performance.now();
  try {
    const res = await fetch(req.url, {
      method: req.method,
      headers: req.headers,
      body: req.body === null || req.method === 'GET' || req.method === 'HEAD' ? undefined : req.body,
      signal: AbortSignal.timeout(req.timeoutMs),
      redirect: 'follow',
    });
    const body = await res.text();
    return {
      status: res.status,
      statusText: res.statusText,
      headers: Object.fromEntries(res.headers),
      body,
      url: res.url,
      durationMs: performance.now() - t0,
    };
  } catch (e) {
    const timeout = e && (e.name === 'TimeoutError' || e.name === 'AbortError');
    const cause = e && e.cause ? `: ${e.cause.code || e.cause.message || e.cause}` : '';
    return {
      status: 0,
      body: null,
      headers: {},
      error: `${e && e.message}${cause}`,
      errorCode: timeout ? 1050 : 1000,
      durationMs: performance.now() - t0,
    };
  }
}

/**
 * Serve one VU thread: `port` is our end of its channel, `sab` its wake-up
 * signal; `onCall(msg)` answers its control requests (op 'go').
 */
export function serve(port, sab, onCall) {
  const signal = new Int32Array(sab);
  const sockets = new Map();
  let closed = false;

  function reply(msg) {
    if (closed) return;
    try {
      port.postMessage(msg);
    } catch {
      return;
    }
    Atomics.add(signal, 0, 1);
    Atomics.notify(signal, 0);
  }

  function open(m) {
    const t0 = performance.now();
    let opened = false;
    let settled = false;
    const fail = (status, error, body, headers) => {
      if (settled) return;
      settled = true;
      sockets.delete(m.sid);
      reply({ sid: m.sid, ev: 'fail', status, error, body: body || '', headers: headers || {} });
    };
    let ws;
    try {
      ws = new WebSocket(m.url, { headers: m.headers, perMessageDeflate: false, handshakeTimeout: HANDSHAKE_TIMEOUT_MS });
    } catch (e) {
      fail(0, e.message);
      return;
    }
    const entry = { ws, timer: null };
    sockets.set(m.sid, entry);
    let upgradeHeaders = {};
    ws.on('upgrade', (res) => {
      upgradeHeaders = res.headers;
    });
    ws.on('unexpected-response', (req, res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        fail(res.statusCode, `websocket: bad handshake (status ${res.statusCode})`, Buffer.concat(chunks).toString(), res.headers);
        req.destroy();
      });
      res.on('error', () => fail(res.statusCode, `websocket: bad handshake (status ${res.statusCode})`));
    });
    ws.on('open', () => {
      opened = true;
      settled = true;
      reply({ sid: m.sid, ev: 'open', connectingMs: performance.now() - t0, headers: upgradeHeaders });
    });
    ws.on('message', (data, isBinary) => {
      reply({ sid: m.sid, ev: 'message', data: isBinary ? new Uint8Array(data) : data.toString(), binary: isBinary });
    });
    ws.on('ping', () => reply({ sid: m.sid, ev: 'ping' }));
    ws.on('pong', () => reply({ sid: m.sid, ev: 'pong' }));
    ws.on('error', (e) => {
      if (!opened) fail(0, e.message);
      else reply({ sid: m.sid, ev: 'error', error: e.message });
    });
    ws.on('close', (code) => {
      if (entry.timer) clearTimeout(entry.timer);
      if (!opened) {
        fail(0, `websocket: closed during the handshake (${code})`);
        return;
      }
      sockets.delete(m.sid);
      reply({ sid: m.sid, ev: 'close', code });
    });
  }

  function closeSocket(sid, code) {
    const e = sockets.get(sid);
    if (!e || e.timer) return;
    try {
      e.ws.close(code);
    } catch {
      e.ws.terminate();
    }
    e.timer = setTimeout(() => e.ws.terminate(), CLOSE_WAIT_MS);
  }

  port.on('message', async (m) => {
    switch (m.op) {
      case 'http':
        reply({ id: m.id, res: await doFetch(m.req) });
        break;
      case 'http_batch':
        reply({ id: m.id, res: await Promise.all(m.reqs.map(doFetch)) });
        break;
      case 'ws_open':
        open(m);
        break;
      case 'ws_send': {
        const e = sockets.get(m.sid);
        if (e && e.ws.readyState === WebSocket.OPEN) e.ws.send(m.data, { binary: !!m.binary });
        break;
      }
      case 'ws_ping': {
        const e = sockets.get(m.sid);
        if (e && e.ws.readyState === WebSocket.OPEN) e.ws.ping();
        break;
      }
      case 'ws_close':
        closeSocket(m.sid, m.code);
        break;
      case 'go':
        reply({ id: m.id, ...(onCall ? onCall(m) : { run: true }) });
        break;
      default:
        if (m.id !== undefined) reply({ id: m.id, fatal: `k6 shim: unknown op ${m.op}` });
    }
  });

  /** The VU thread is gone: drop its sockets and the channel. */
  return function shutdown() {
    closed = true;
    for (const e of sockets.values()) e.ws.terminate();
    sockets.clear();
    port.close();
  };
}
