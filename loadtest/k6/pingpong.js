// pingpong: PAIRS user pairs a -> b. VU 2p+1 is the sender of pair p, VU 2p+2
// its receiver. The sender sends RATE 1:1 messages/s (to_user_id) for DURATION
// seconds, then an end marker; the receiver measures the delivery latency
// (arrival - content.sent_ms) and checks that every probe arrived exactly once.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e PAIRS=10 -e RATE=10 -e DURATION=30 pingpong.js
//
// See README.md for every variable and threshold.

import ws from 'k6/ws';
import { check } from 'k6';
import * as P from './lib/protocol.js';

const BASE = P.baseUrl();
const WS_URL = P.wsUrl(BASE);
const PAIRS = P.envInt('PAIRS', 10);
const RATE = P.envFloat('RATE', 10); // messages/s per pair
const DURATION = P.envFloat('DURATION', 30); // seconds of sending
const GRACE = P.envFloat('GRACE', 5); // seconds to wait for late acks / deliveries
const ONLINE_TIMEOUT = P.envFloat('ONLINE_TIMEOUT', 30); // seconds for the receiver to show up
const PING_INTERVAL = P.envFloat('PING_INTERVAL', 20);
const PREFIX = `${P.env('USER_PREFIX', 'k6')}_pp`;
const PASSWORD = P.env('PASSWORD', 'k6-load-test-password');
const P99_MS = P.envFloat('P99_MS', 500);

if (PAIRS < 1 || RATE <= 0 || DURATION <= 0) throw new Error('PAIRS, RATE and DURATION must be positive');

// Every sender sends exactly N probes, one every 1000/RATE ms.
const N = Math.max(1, Math.round(RATE * DURATION));
const INTERVAL_MS = 1000 / RATE;
const SESSION_S = ONLINE_TIMEOUT + DURATION + 2 * GRACE + 5;

export const options = {
  setupTimeout: P.secs(60 + PAIRS),
  scenarios: {
    pingpong: {
      executor: 'per-vu-iterations',
      vus: 2 * PAIRS,
      iterations: 1,
      maxDuration: P.secs(SESSION_S + 30),
    },
  },
  thresholds: {
    checks: ['rate>0.99'],
    ws_connecting: ['p(95)<1000'],
    gochat_delivery_latency: [`p(99)<${P99_MS}`],
    gochat_ack_latency: [`p(99)<${P99_MS}`],
    gochat_deliveries: ['count>0'],
    gochat_missing: ['count==0'],
    gochat_duplicates: ['count==0'],
    gochat_seq_gaps: ['count==0'],
    gochat_ws_errors: ['count==0'],
    gochat_session_ok: ['rate==1'],
  },
};

const M = P.messagingMetrics();

export function setup() {
  const users = P.provisionUsers(BASE, PREFIX, 2 * PAIRS, PASSWORD);
  return { run: P.newRunId(), users: users };
}

export default function (data) {
  const pair = Math.floor((__VU - 1) / 2);
  if (pair >= PAIRS) return;
  const a = data.users[2 * pair];
  const b = data.users[2 * pair + 1];
  P.touchCounters(M);
  const res = (__VU - 1) % 2 === 0 ? sender(data.run, pair, a, b) : receiver(data.run, a, b);
  // In k6 a refused handshake (e.g. 503 over_capacity) never runs the callback,
  // so it is only visible here. ws.connect returns when the socket closed.
  const ok = check(res, { 'ws handshake 101': (r) => r !== undefined && r !== null && r.status === 101 });
  if (!ok) M.sessionOk.add(false);
}

function sender(run, pair, me, peer) {
  const acks = new P.AckTracker();
  return ws.connect(WS_URL, P.authParams(me.token), function (socket) {
    let offline = [peer.user_id];
    let t0 = 0; // when sending started
    let k = 0; // probes sent
    let endSent = false;
    let done = false;

    function finish(ok) {
      if (done) return;
      done = true;
      M.sessionOk.add(ok);
      socket.close();
    }

    function sendEnd() {
      endSent = true;
      const id = `${run}-${pair}-end`;
      acks.onSend(id, Date.now());
      socket.send(P.sendTextFrame({ to_user_id: peer.user_id }, id, P.endContent(run, k)));
    }

    // After an ack or error: the end marker goes out once every probe was
    // answered; its ack ends the session.
    function progress() {
      if (done || acks.pendingCount > 0) return;
      if (endSent) {
        check(acks, { 'sender: every message acked': (t) => t.acked === t.sent });
        finish(acks.acked === acks.sent);
      } else if (k === N) {
        sendEnd();
      }
    }

    // Open loop: every probe whose scheduled time has come is sent.
    function tick() {
      if (done || endSent) return;
      if (t0 === 0) {
        // The receiver's own token: the pair shares no conversation before
        // the first probe, so the sender may not see its presence (§2.4).
        offline = P.stillOffline(BASE, peer.token, offline);
        if (offline.length > 0) return;
        check(offline, { 'sender: receiver online before sending': (o) => o.length === 0 });
        t0 = Date.now();
      }
      const now = Date.now();
      while (k < N && t0 + k * INTERVAL_MS <= now) {
        const id = `${run}-${pair}-${k}`;
        acks.onSend(id, Date.now());
        socket.send(P.sendTextFrame({ to_user_id: peer.user_id }, id, P.probeContent(run, k)));
        M.sent.add(1);
        k++;
      }
      progress();
    }

    socket.on('open', function () {
      socket.setInterval(tick, Math.min(INTERVAL_MS, 50));
      socket.setInterval(function () {
        socket.send(P.PING_FRAME);
      }, PING_INTERVAL * 1000);
      socket.setTimeout(function () {
        if (t0 === 0) check(offline, { 'sender: receiver online before sending': (o) => o.length === 0 });
      }, ONLINE_TIMEOUT * 1000);
      socket.setTimeout(function () {
        check(acks, { 'sender: every message answered in time': (t) => t.pendingCount === 0 && endSent });
        if (!endSent && t0 !== 0) {
          sendEnd(); // let the receiver stop waiting
          socket.setTimeout(function () {
            finish(false);
          }, 1000);
        } else {
          finish(false);
        }
      }, SESSION_S * 1000);
      tick();
    });

    socket.on('message', function (data) {
      const now = Date.now();
      const p = P.parseFrame(data);
      if (!check(p, { 'frame is valid': (x) => x.problem === null })) return;
      const f = p.frame;
      if (f.type === 'message-ack') {
        const ms = acks.onAck(f, now);
        if (ms >= 0 && !f.client_msg_id.endsWith('-end')) {
          M.acked.add(1);
          M.ackLatency.add(ms);
        }
        progress();
      } else if (f.type === 'error') {
        M.wsErrors.add(1, { code: f.code });
        acks.onError(f);
        check(f, { 'no error frame': () => false });
        progress();
      } else if (f.type === 'resync') {
        M.resyncs.add(1);
      }
    });

    socket.on('error', function (e) {
      M.wsErrors.add(1, { code: 'socket' });
      check(e, { 'no socket error': () => false });
    });

    socket.on('close', function () {
      if (!done) {
        done = true;
        M.sessionOk.add(false);
        check(false, { 'sender: socket stayed open': (v) => v });
      }
    });
  });
}

function receiver(run, peer, me) {
  const tracker = new P.DeliveryTracker(run);
  const from = [peer.user_id];
  return ws.connect(WS_URL, P.authParams(me.token), function (socket) {
    let done = false;
    let lingering = false;

    function finish(ok) {
      if (done) return;
      done = true;
      const missing = tracker.missing(from, N);
      M.missing.add(missing);
      M.duplicates.add(tracker.duplicates);
      M.seqGaps.add(tracker.gaps());
      check(tracker, {
        'receiver: end marker received': (t) => t.endedAll(from),
        'receiver: no missing delivery': () => missing === 0,
        'receiver: no duplicate delivery': (t) => t.duplicates === 0,
      });
      M.sessionOk.add(ok && missing === 0 && tracker.duplicates === 0);
      socket.close();
    }

    socket.on('open', function () {
      socket.setInterval(function () {
        socket.send(P.PING_FRAME);
      }, PING_INTERVAL * 1000);
      socket.setTimeout(function () {
        finish(false);
      }, SESSION_S * 1000);
    });

    socket.on('message', function (data) {
      const now = Date.now();
      const p = P.parseFrame(data);
      if (!check(p, { 'frame is valid': (x) => x.problem === null })) return;
      const f = p.frame;
      if (f.type === 'new-message') {
        const r = tracker.onMessage(f, now);
        if (r.kind === 'probe') {
          M.deliveries.add(1);
          M.deliveryLatency.add(r.latencyMs);
        }
        if (tracker.endedAll(from)) {
          if (tracker.completeAll(from, N)) {
            finish(true);
          } else if (!lingering) {
            // The end marker overtook probes (only on redelivery): wait a little.
            lingering = true;
            socket.setTimeout(function () {
              finish(true);
            }, GRACE * 1000);
          }
        }
      } else if (f.type === 'error') {
        M.wsErrors.add(1, { code: f.code });
        check(f, { 'no error frame': () => false });
      } else if (f.type === 'resync') {
        M.resyncs.add(1);
      }
    });

    socket.on('error', function (e) {
      M.wsErrors.add(1, { code: 'socket' });
      check(e, { 'no socket error': () => false });
    });

    socket.on('close', function () {
      if (!done) {
        done = true;
        M.missing.add(tracker.missing(from, N));
        M.sessionOk.add(false);
        check(false, { 'receiver: socket stayed open': (v) => v });
      }
    });
  });
}
