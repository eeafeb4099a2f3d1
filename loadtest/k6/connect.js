// connect/hold: CONNECTIONS WebSockets (one per VU) over USERS accounts, opened
// at RATE per second, each held for HOLD seconds with {"type":"ping"} every
// PING_INTERVAL seconds; at the end one last ping must be answered within
// PONG_TIMEOUT seconds, then the socket is closed.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e CONNECTIONS=1000 -e RATE=200 -e HOLD=30 connect.js
//
// See README.md for every variable and threshold.

import ws from 'k6/ws';
import { check, sleep } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';
import * as P from './lib/protocol.js';

const BASE = P.baseUrl();
const WS_URL = P.wsUrl(BASE);
const CONNECTIONS = P.envInt('CONNECTIONS', 100);
const USERS = P.envInt('USERS', Math.min(CONNECTIONS, 100)); // connections are devices of USERS accounts
const RATE = P.envFloat('RATE', 50); // new connections per second
const HOLD = P.envFloat('HOLD', 30); // seconds each connection is held
const PING_INTERVAL = P.envFloat('PING_INTERVAL', 20);
const PONG_TIMEOUT = P.envFloat('PONG_TIMEOUT', 5);
const PREFIX = `${P.env('USER_PREFIX', 'k6')}_cn`;
const PASSWORD = P.env('PASSWORD', 'k6-load-test-password');
const CONNECT_P95_MS = P.envFloat('CONNECT_P95_MS', 1000);

if (CONNECTIONS < 1 || USERS < 1 || RATE <= 0 || PING_INTERVAL <= 0) {
  throw new Error('CONNECTIONS, USERS, RATE and PING_INTERVAL must be positive');
}

const RAMP_S = (CONNECTIONS - 1) / RATE;

export const options = {
  setupTimeout: P.secs(60 + USERS / 5),
  scenarios: {
    connect: {
      executor: 'per-vu-iterations',
      vus: CONNECTIONS,
      iterations: 1,
      maxDuration: P.secs(RAMP_S + HOLD + PONG_TIMEOUT + 60),
    },
  },
  thresholds: {
    checks: ['rate>0.99'],
    ws_connecting: [`p(95)<${CONNECT_P95_MS}`],
    gochat_held_ok: ['rate>0.99'],
    gochat_pong_latency: ['p(99)<500'],
    gochat_ws_errors: ['count==0'],
  },
};

const heldOk = new Rate('gochat_held_ok');
const pongs = new Counter('gochat_pongs');
const pongLatency = new Trend('gochat_pong_latency', true);
const wsErrors = new Counter('gochat_ws_errors');

export function setup() {
  return { users: P.provisionUsers(BASE, PREFIX, USERS, PASSWORD) };
}

export default function (data) {
  const j = __VU - 1;
  if (j >= CONNECTIONS) return;
  const u = data.users[j % data.users.length];
  wsErrors.add(0);
  pongs.add(0);
  // Connection j starts at j / RATE s: a ramp, as every VU starts together.
  sleep(j / RATE);
  let settled = false;
  const res = ws.connect(WS_URL, P.authParams(u.token), function (socket) {
    const pings = []; // send times of unanswered pings, oldest first
    let final = false;

    function settle(ok) {
      if (settled) return;
      settled = true;
      heldOk.add(ok);
      socket.close();
    }

    function ping() {
      pings.push(Date.now());
      socket.send(P.PING_FRAME);
    }

    socket.on('open', function () {
      check(socket, { 'connect: ws open': () => true });
      socket.setInterval(function () {
        if (!final) ping();
      }, PING_INTERVAL * 1000);
      socket.setTimeout(function () {
        final = true;
        ping();
        socket.setTimeout(function () {
          check(pings, { 'connect: last ping answered in time': (p) => p.length === 0 });
          settle(false);
        }, PONG_TIMEOUT * 1000);
      }, HOLD * 1000);
    });

    socket.on('message', function (data) {
      const now = Date.now();
      const p = P.parseFrame(data);
      if (!check(p, { 'frame is valid': (x) => x.problem === null })) return;
      const f = p.frame;
      if (f.type === 'pong') {
        if (pings.length > 0) pongLatency.add(now - pings.shift());
        pongs.add(1);
        if (final && pings.length === 0) {
          check(pings, { 'connect: last ping answered in time': () => true });
          settle(true);
        }
      } else if (f.type === 'error') {
        wsErrors.add(1, { code: f.code });
        check(f, { 'no error frame': () => false });
      }
    });

    socket.on('error', function (e) {
      wsErrors.add(1, { code: 'socket' });
      check(e, { 'no socket error': () => false });
    });

    socket.on('close', function () {
      if (!settled) {
        settled = true;
        heldOk.add(false);
        check(false, { 'connect: held until the end': (v) => v });
      }
    });
  });
  // A refused handshake (e.g. 503 over_capacity) never runs the callback in k6.
  if (!check(res, { 'ws handshake 101': (r) => r !== undefined && r !== null && r.status === 101 }) && !settled) {
    settled = true;
    heldOk.add(false);
  }
}
