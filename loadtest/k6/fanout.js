// fanout: MEMBERS users in one group (created in setup()), one VU and one
// connection each. The first SENDERS members send into the group at RATE
// messages/s in total for DURATION seconds, then an end marker each. Every
// member receives every message but its own: the delivery latency (arrival -
// content.sent_ms) and missing / duplicate deliveries are what this measures.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e MEMBERS=200 -e SENDERS=2 -e RATE=10 fanout.js
//
// See README.md for every variable and threshold.

import ws from 'k6/ws';
import { check } from 'k6';
import * as P from './lib/protocol.js';

const BASE = P.baseUrl();
const WS_URL = P.wsUrl(BASE);
const MEMBERS = P.envInt('MEMBERS', 50);
const SENDERS = P.envInt('SENDERS', 2);
const RATE = P.envFloat('RATE', 10); // messages/s into the group, all senders together
const DURATION = P.envFloat('DURATION', 30);
const GRACE = P.envFloat('GRACE', 5);
const ONLINE_TIMEOUT = P.envFloat('ONLINE_TIMEOUT', 60); // seconds for every member to connect
const PING_INTERVAL = P.envFloat('PING_INTERVAL', 20);
const PREFIX = `${P.env('USER_PREFIX', 'k6')}_fo`;
const PASSWORD = P.env('PASSWORD', 'k6-load-test-password');
const P99_MS = P.envFloat('P99_MS', 1000);

if (MEMBERS < 2 || SENDERS < 1 || SENDERS > MEMBERS || RATE <= 0 || DURATION <= 0) {
  throw new Error('need MEMBERS >= 2, 1 <= SENDERS <= MEMBERS, RATE > 0, DURATION > 0');
}

// Each sender sends exactly N probes, one every INTERVAL_MS.
const N = Math.max(1, Math.round((RATE * DURATION) / SENDERS));
const INTERVAL_MS = (1000 * SENDERS) / RATE;
const SESSION_S = ONLINE_TIMEOUT + DURATION + 2 * GRACE + 5;

export const options = {
  setupTimeout: P.secs(60 + MEMBERS / 5),
  scenarios: {
    fanout: {
      executor: 'per-vu-iterations',
      vus: MEMBERS,
      iterations: 1,
      maxDuration: P.secs(SESSION_S + 30),
    },
  },
  thresholds: {
    checks: ['rate>0.99'],
    ws_connecting: ['p(95)<2000'],
    gochat_delivery_latency: [`p(99)<${P99_MS}`, `avg<${P99_MS}`],
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
  const users = P.provisionUsers(BASE, PREFIX, MEMBERS, PASSWORD);
  const others = users.slice(1).map((u) => u.user_id);
  const g = P.createGroup(BASE, users[0], `k6 fanout ${MEMBERS}`, others);
  return { run: P.newRunId(), users: users, conversation_id: g.conversation_id };
}

export default function (data) {
  const i = __VU - 1;
  if (i >= MEMBERS) return;
  P.touchCounters(M);
  const me = data.users[i];
  const senders = data.users.slice(0, SENDERS).map((u) => u.user_id);
  const res = member(data, me, i < SENDERS, senders);
  // In k6 a refused handshake never runs the callback: only visible here.
  const ok = check(res, { 'ws handshake 101': (r) => r !== undefined && r !== null && r.status === 101 });
  if (!ok) M.sessionOk.add(false);
}

function member(data, me, isSender, senders) {
  const run = data.run;
  const conv = { conversation_id: data.conversation_id };
  const from = senders.filter((id) => id !== me.user_id); // whose probes we must receive
  const acks = new P.AckTracker();
  const tracker = new P.DeliveryTracker(run);
  return ws.connect(WS_URL, P.authParams(me.token), function (socket) {
    let offline = data.users.map((u) => u.user_id).filter((id) => id !== me.user_id);
    let t0 = 0;
    let k = 0;
    let endSent = false;
    let sendDone = !isSender;
    let lingering = false;
    let done = false;

    function finish(ok) {
      if (done) return;
      done = true;
      const missing = tracker.missing(from, N);
      M.missing.add(missing);
      M.duplicates.add(tracker.duplicates);
      M.seqGaps.add(tracker.gaps());
      check(tracker, {
        'member: end marker of every other sender received': (t) => t.endedAll(from),
        'member: no missing delivery': () => missing === 0,
        'member: no duplicate delivery': (t) => t.duplicates === 0,
      });
      if (isSender) check(acks, { 'sender: every message acked': (a) => a.acked === a.sent });
      M.sessionOk.add(ok && missing === 0 && tracker.duplicates === 0 && acks.acked === acks.sent);
      socket.close();
    }

    // Close once our own sending is over and every other sender's end marker
    // (and all its probes, or GRACE more seconds) arrived.
    function maybeFinish() {
      if (done || !sendDone || !tracker.endedAll(from)) return;
      if (tracker.completeAll(from, N)) {
        finish(true);
      } else if (!lingering) {
        lingering = true;
        socket.setTimeout(function () {
          finish(true);
        }, GRACE * 1000);
      }
    }

    function sendEnd() {
      endSent = true;
      const id = `${run}-${__VU}-end`;
      acks.onSend(id, Date.now());
      socket.send(P.sendTextFrame(conv, id, P.endContent(run, k)));
    }

    function progress() {
      if (done || !isSender || acks.pendingCount > 0) return;
      if (endSent) {
        sendDone = true;
        maybeFinish();
      } else if (k === N) {
        sendEnd();
      }
    }

    function tick() {
      if (done || endSent) return;
      if (t0 === 0) {
        // Every member must be registered before the first send (protocol §4.5).
        offline = P.stillOffline(BASE, me.token, offline);
        if (offline.length > 0) return;
        check(offline, { 'sender: every member online before sending': (o) => o.length === 0 });
        t0 = Date.now();
      }
      const now = Date.now();
      while (k < N && t0 + k * INTERVAL_MS <= now) {
        const id = `${run}-${__VU}-${k}`;
        acks.onSend(id, Date.now());
        socket.send(P.sendTextFrame(conv, id, P.probeContent(run, k)));
        M.sent.add(1);
        k++;
      }
      progress();
    }

    socket.on('open', function () {
      socket.setInterval(function () {
        socket.send(P.PING_FRAME);
      }, PING_INTERVAL * 1000);
      if (isSender) {
        socket.setInterval(tick, Math.min(INTERVAL_MS, 100));
        socket.setTimeout(function () {
          if (t0 === 0) check(offline, { 'sender: every member online before sending': (o) => o.length === 0 });
        }, ONLINE_TIMEOUT * 1000);
      }
      socket.setTimeout(function () {
        if (isSender && !endSent && t0 !== 0) sendEnd(); // let the others stop waiting
        socket.setTimeout(function () {
          finish(false);
        }, 1000);
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
        maybeFinish();
      } else if (f.type === 'message-ack') {
        const ms = acks.onAck(f, now);
        if (ms >= 0) tracker.noteOwn(f.conversation_id, f.seq);
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
        M.missing.add(tracker.missing(from, N));
        M.sessionOk.add(false);
        check(false, { 'member: socket stayed open': (v) => v });
      }
    });
  });
}
