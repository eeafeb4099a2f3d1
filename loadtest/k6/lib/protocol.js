// Shared GoChat protocol v1 logic for the k6 scripts (docs/protocol.md):
// configuration from __ENV, user provisioning over REST, frame builders,
// frame parsing/validation, and the trackers that detect missing, duplicate
// and out-of-sequence deliveries.
//
// Plain ES2015+ without optional chaining or class fields, so that every k6
// release with ES module support runs it. Ids are JSON strings holding u64
// values larger than 2^53: they are never turned into numbers here.

import http from 'k6/http';
import { sleep } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';

// ---------------------------------------------------------------- config ---

export function env(name, def) {
  const v = __ENV[name];
  return v === undefined || v === '' ? def : v;
}

export function envFloat(name, def) {
  const v = env(name, undefined);
  if (v === undefined) return def;
  const n = Number(v);
  if (!isFinite(n) || n < 0) throw new Error(`${name}=${v}: expected a non-negative number`);
  return n;
}

export function envInt(name, def) {
  const n = envFloat(name, def);
  if (!Number.isInteger(n)) throw new Error(`${name}=${n}: expected a non-negative integer`);
  return n;
}

export function envBool(name) {
  const v = String(env(name, '')).toLowerCase();
  return v === '1' || v === 'true' || v === 'yes';
}

/** REST base URL, without a trailing slash. */
export function baseUrl() {
  const b = env('BASE_URL', 'http://127.0.0.1:8080').replace(/\/+$/, '');
  if (!/^https?:\/\/[^/]+$/.test(b)) throw new Error(`BASE_URL=${b}: expected http(s)://host:port`);
  return b;
}

/** The WebSocket endpoint of a REST base URL: http -> ws, https -> wss, path /ws. */
export function wsUrl(base) {
  return base.replace(/^http/, 'ws') + '/ws';
}

/** Seconds as a k6 duration string, rounded up. */
export function secs(s) {
  return `${Math.ceil(s)}s`;
}

// ------------------------------------------------------------------ REST ---

const JSON_HEADERS = { 'Content-Type': 'application/json' };

export function authParams(token, extra) {
  const p = { headers: { Authorization: `Bearer ${token}` } };
  if (extra) {
    Object.keys(extra).forEach(function (k) {
      p[k] = extra[k];
    });
  }
  return p;
}

/** `PREFIX_000042`: usernames are 3–32 bytes of [A-Za-z0-9_.-]. */
export function userName(prefix, i) {
  const name = `${prefix}_${String(i).padStart(6, '0')}`;
  if (!/^[A-Za-z0-9_.-]{3,32}$/.test(name)) throw new Error(`bad username ${name}: check USER_PREFIX`);
  return name;
}

function bodyOf(res) {
  return res.body === null || res.body === undefined ? '' : String(res.body).slice(0, 300);
}

/**
 * Register (201, or 409 when the user exists from an earlier run) and log in
 * `count` users named userName(prefix, i), `parallel` requests at a time.
 * Returns [{username, user_id, token}] in index order. Throws on anything else,
 * so that a misconfigured run stops in setup() instead of measuring nothing.
 */
export function provisionUsers(base, prefix, count, password, parallel) {
  const step = parallel || 16;
  const users = [];
  for (let lo = 0; lo < count; lo += step) {
    const hi = Math.min(count, lo + step);
    const reg = [];
    const login = [];
    for (let i = lo; i < hi; i++) {
      const username = userName(prefix, i);
      reg.push({
        method: 'POST',
        url: `${base}/api/v1/auth/register`,
        body: JSON.stringify({ username: username, password: password }),
        params: { headers: JSON_HEADERS, responseCallback: http.expectedStatuses(201, 409), tags: { name: 'register' } },
      });
      login.push({
        method: 'POST',
        url: `${base}/api/v1/auth/login`,
        body: JSON.stringify({ username: username, password: password }),
        params: { headers: JSON_HEADERS, tags: { name: 'login' } },
      });
    }
    http.batch(reg).forEach(function (r, j) {
      if (r.status !== 201 && r.status !== 409) {
        throw new Error(`register ${userName(prefix, lo + j)}: status ${r.status} ${r.error || ''} ${bodyOf(r)}`);
      }
    });
    http.batch(login).forEach(function (r, j) {
      const username = userName(prefix, lo + j);
      if (r.status !== 200) {
        throw new Error(
          `login ${username}: status ${r.status} ${bodyOf(r)} ` +
            '(a user of that name exists with another password? set USER_PREFIX or PASSWORD)',
        );
      }
      const b = r.json();
      if (!isId(b.user_id) || typeof b.token !== 'string') throw new Error(`login ${username}: bad body ${bodyOf(r)}`);
      users.push({ username: username, user_id: b.user_id, token: b.token });
    });
  }
  return users;
}

/** POST /api/v1/groups: `owner` creates a group holding every id in memberIds. */
export function createGroup(base, owner, name, memberIds) {
  const r = http.post(`${base}/api/v1/groups`, JSON.stringify({ name: name, member_ids: memberIds }), {
    headers: { Authorization: `Bearer ${owner.token}`, 'Content-Type': 'application/json' },
    tags: { name: 'create_group' },
  });
  if (r.status !== 201) throw new Error(`create group: status ${r.status} ${bodyOf(r)}`);
  const g = r.json();
  if (!isId(g.group_id) || g.conversation_id !== `g_${g.group_id}`) throw new Error(`create group: bad body ${bodyOf(r)}`);
  if (g.members.length !== memberIds.length + 1) {
    throw new Error(`create group: ${g.members.length} members, expected ${memberIds.length + 1}`);
  }
  return g;
}

/**
 * One presence round: asks GET /users/{id}/presence for every id of `pending`
 * (in parallel) and returns the ids that are not online yet. Senders call it
 * from a socket timer until it returns [] (protocol §4.5: a connection is
 * registered a few ms after its 101; pushes before that are not delivered).
 * `token` must be allowed to see each id's presence (protocol §2.4): the
 * user's own, or one of a user sharing a conversation with them (a group
 * co-member); anyone else gets 403 and the id stays pending.
 */
export function stillOffline(base, token, pending) {
  if (pending.length === 0) return [];
  const reqs = pending.map(function (id) {
    return {
      method: 'GET',
      url: `${base}/api/v1/users/${id}/presence`,
      params: authParams(token, { tags: { name: 'presence' } }),
    };
  });
  const out = [];
  http.batch(reqs).forEach(function (r, j) {
    let online = false;
    if (r.status === 200) {
      const b = r.json();
      online = b.online === true && b.connections >= 1;
    }
    if (!online) out.push(pending[j]);
  });
  return out;
}

/** Blocking variant of stillOffline (for use outside socket handlers). */
export function waitOnline(base, token, ids, timeoutS) {
  const end = Date.now() + timeoutS * 1000;
  let pending = ids.slice();
  while (pending.length > 0 && Date.now() < end) {
    pending = stillOffline(base, token, pending);
    if (pending.length > 0) sleep(0.05);
  }
  return pending.length === 0;
}

/** A fresh id for this run: client_msg_ids and contents carry it. */
export function newRunId() {
  return `${Date.now().toString(36)}${Math.floor(Math.random() * 1e9).toString(36)}`;
}

// ---------------------------------------------------------------- frames ---

export const PING_FRAME = JSON.stringify({ type: 'ping' });

/** send-message with content_type text. `target` is {to_user_id} or {conversation_id}. */
export function sendTextFrame(target, clientMsgId, content) {
  const f = { type: 'send-message', client_msg_id: clientMsgId, content_type: 'text', content: content };
  if (target.to_user_id !== undefined) f.to_user_id = target.to_user_id;
  else f.conversation_id = target.conversation_id;
  return JSON.stringify(f);
}

export function syncFrame(conversationId, afterSeq, limit) {
  return JSON.stringify({ type: 'sync', conversation_id: conversationId, after_seq: afterSeq || 0, limit: limit || 0 });
}

/** Content of a probe message; `sent_ms` is the sender's clock at sending. */
export function probeContent(run, k) {
  return { text: 'k6', run: run, k: k, sent_ms: Date.now() };
}

/** Content of the last message of a sender: `end` = how many probes it sent. */
export function endContent(run, count) {
  return { text: 'k6 end', run: run, end: count, sent_ms: Date.now() };
}

export function isId(s) {
  return typeof s === 'string' && /^(0|[1-9][0-9]{0,19})$/.test(s);
}

function cmpIds(a, b) {
  if (a.length !== b.length) return a.length < b.length ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

/** s_{lo}_{hi}, the ids compared numerically (as decimal strings: no Number). */
export function directConversationId(a, b) {
  return cmpIds(a, b) < 0 ? `s_${a}_${b}` : `s_${b}_${a}`;
}

function isSeq(n) {
  return typeof n === 'number' && Number.isInteger(n) && n >= 1;
}

function isObj(o) {
  return o !== null && typeof o === 'object' && !Array.isArray(o);
}

function messageProblem(m) {
  if (!isId(m.msg_id)) return 'msg_id';
  if (typeof m.conversation_id !== 'string' || !/^(s_\d+_\d+|g_\d+)$/.test(m.conversation_id)) return 'conversation_id';
  if (!isSeq(m.seq)) return 'seq';
  if (!isId(m.sender_id)) return 'sender_id';
  if (typeof m.client_msg_id !== 'string') return 'client_msg_id';
  if (typeof m.content_type !== 'string') return 'content_type';
  if (!isObj(m.content)) return 'content';
  if (typeof m.ts !== 'number') return 'ts';
  return null;
}

/**
 * Parse and validate one server text frame. Returns {frame, problem}: problem
 * is null for a well-formed frame (frames of unknown type are well-formed:
 * protocol v1 is additive), else a short description.
 */
export function parseFrame(data) {
  let f;
  try {
    f = JSON.parse(data);
  } catch (e) {
    return { frame: null, problem: 'not JSON' };
  }
  if (!isObj(f) || typeof f.type !== 'string') return { frame: null, problem: 'no type' };
  let p = null;
  switch (f.type) {
    case 'new-message':
      p = messageProblem(f);
      break;
    case 'message-ack':
      if (typeof f.client_msg_id !== 'string') p = 'client_msg_id';
      else if (!isId(f.msg_id)) p = 'msg_id';
      else if (typeof f.conversation_id !== 'string') p = 'conversation_id';
      else if (!isSeq(f.seq)) p = 'seq';
      else if (typeof f.ts !== 'number') p = 'ts';
      break;
    case 'error':
      if (typeof f.code !== 'string' || typeof f.message !== 'string') p = 'code/message';
      break;
    case 'sync-result':
      if (typeof f.conversation_id !== 'string' || !Array.isArray(f.messages) || typeof f.has_more !== 'boolean') {
        p = 'sync-result fields';
      } else {
        for (let i = 0; i < f.messages.length && p === null; i++) p = messageProblem(f.messages[i]);
      }
      break;
    case 'resync':
      if (typeof f.reason !== 'string') p = 'reason';
      break;
    default:
      break;
  }
  return { frame: f, problem: p === null ? null : `${f.type}: bad ${p}` };
}

// --------------------------------------------------------------- metrics ---

/** Custom metrics of the messaging scenarios (call once, in the init context). */
export function messagingMetrics() {
  return {
    sent: new Counter('gochat_sent'),
    acked: new Counter('gochat_acked'),
    deliveries: new Counter('gochat_deliveries'),
    missing: new Counter('gochat_missing'),
    duplicates: new Counter('gochat_duplicates'),
    seqGaps: new Counter('gochat_seq_gaps'),
    wsErrors: new Counter('gochat_ws_errors'),
    resyncs: new Counter('gochat_resyncs'),
    deliveryLatency: new Trend('gochat_delivery_latency', true),
    ackLatency: new Trend('gochat_ack_latency', true),
    sessionOk: new Rate('gochat_session_ok'),
  };
}

/** Counters get a 0 at the start of a session so that their thresholds always have data. */
export function touchCounters(m) {
  [m.sent, m.acked, m.deliveries, m.missing, m.duplicates, m.seqGaps, m.wsErrors, m.resyncs].forEach(function (c) {
    c.add(0);
  });
}

// -------------------------------------------------------------- trackers ---

/**
 * Sender side: send times of outstanding messages, acks, errors.
 */
export class AckTracker {
  constructor() {
    this.pending = {};
    this.pendingCount = 0;
    this.sent = 0;
    this.acked = 0;
    this.errors = 0;
    this.errorCodes = {};
  }

  onSend(clientMsgId, nowMs) {
    this.pending[clientMsgId] = nowMs;
    this.pendingCount++;
    this.sent++;
  }

  /** Returns the ack latency in ms, or -1 for an ack of nothing outstanding. */
  onAck(f, nowMs) {
    const t = this.pending[f.client_msg_id];
    if (t === undefined) return -1;
    delete this.pending[f.client_msg_id];
    this.pendingCount--;
    this.acked++;
    return nowMs - t;
  }

  /** Returns true when the error answers an outstanding message (by ref). */
  onError(f) {
    this.errorCodes[f.code] = (this.errorCodes[f.code] || 0) + 1;
    if (f.ref !== undefined && this.pending[f.ref] !== undefined) {
      delete this.pending[f.ref];
      this.pendingCount--;
      this.errors++;
      return true;
    }
    return false;
  }
}

const INJECT_MISSING = envBool('K6_INJECT_MISSING');

/**
 * Receiver side. Tracks, per conversation, every seq seen (deliveries, plus
 * the seqs of this connection's own acked messages, which are never pushed
 * back to it) for duplicate and gap detection; and, per sender, which probe
 * indexes `k` of this run arrived and whether its end marker came.
 *
 * K6_INJECT_MISSING=1 (a test hook) drops the first probe delivery after its
 * seq was recorded, so the run must report one missing delivery per receiver.
 */
export class DeliveryTracker {
  constructor(run) {
    this.run = run;
    this.convs = {};
    this.senders = {};
    this.duplicates = 0;
    this.delivered = 0;
    this.foreign = 0;
    this.dropped = 0;
  }

  _seqs(conv) {
    if (!this.convs[conv]) this.convs[conv] = { seen: {}, n: 0, min: Infinity, max: -Infinity };
    return this.convs[conv];
  }

  _sender(id) {
    if (!this.senders[id]) this.senders[id] = { ks: {}, n: 0, end: -1 };
    return this.senders[id];
  }

  /** Record a seq; false when it was seen before. */
  _note(conv, seq) {
    const c = this._seqs(conv);
    if (c.seen[seq]) return false;
    c.seen[seq] = true;
    c.n++;
    if (seq < c.min) c.min = seq;
    if (seq > c.max) c.max = seq;
    return true;
  }

  /** This connection's own message was acked with `seq` (it is not pushed back to us). */
  noteOwn(conv, seq) {
    this._note(conv, seq);
  }

  /**
   * A new-message (already validated). Returns {kind, latencyMs}: kind is
   * 'probe' (latencyMs set), 'end', 'duplicate', 'system', 'foreign' (not
   * this run's) or 'dropped' (fault injection).
   */
  onMessage(f, nowMs) {
    if (!this._note(f.conversation_id, f.seq)) {
      this.duplicates++;
      return { kind: 'duplicate' };
    }
    if (f.content_type === 'system') return { kind: 'system' };
    const c = f.content;
    if (c.run !== this.run) {
      this.foreign++;
      return { kind: 'foreign' };
    }
    const s = this._sender(f.sender_id);
    if (typeof c.end === 'number') {
      s.end = c.end;
      return { kind: 'end' };
    }
    if (INJECT_MISSING && this.dropped === 0) {
      this.dropped++;
      return { kind: 'dropped' };
    }
    if (s.ks[c.k]) {
      this.duplicates++;
      return { kind: 'duplicate' };
    }
    s.ks[c.k] = true;
    s.n++;
    this.delivered++;
    return { kind: 'probe', latencyMs: nowMs - c.sent_ms };
  }

  /** True when every sender of `ids` sent its end marker. */
  endedAll(ids) {
    const self = this;
    return ids.every(function (id) {
      return self.senders[id] !== undefined && self.senders[id].end >= 0;
    });
  }

  /** True when every sender of `ids` delivered all `perSender` probes. */
  completeAll(ids, perSender) {
    const self = this;
    return ids.every(function (id) {
      return self.senders[id] !== undefined && self.senders[id].n >= perSender;
    });
  }

  /** Probes of `ids` (each expected to send `perSender`) that never arrived. */
  missing(ids, perSender) {
    const self = this;
    let m = 0;
    ids.forEach(function (id) {
      const s = self.senders[id];
      let got = 0;
      if (s) {
        for (let k = 0; k < perSender; k++) if (s.ks[k]) got++;
      }
      m += perSender - got;
    });
    return m;
  }

  /** Seqs absent between the lowest and highest seq seen, over all conversations. */
  gaps() {
    const self = this;
    let g = 0;
    Object.keys(this.convs).forEach(function (k) {
      const c = self.convs[k];
      if (c.n > 0) g += c.max - c.min + 1 - c.n;
    });
    return g;
  }
}
