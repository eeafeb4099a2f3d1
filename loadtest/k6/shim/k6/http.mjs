// Shim of `k6/http`: synchronous requests (the VU blocks, as in k6) carried
// out by the main thread with fetch. Emits http_reqs, http_req_duration and
// http_req_failed like k6 (failed = status outside the expected statuses,
// 200-399 unless params.responseCallback = http.expectedStatuses(...)).
import * as bridge from '../lib/bridge.mjs';
import { sample, state } from '../lib/state.mjs';
import { parseDuration } from '../lib/duration.mjs';

const DEFAULT_EXPECTED = { expectedStatuses: [{ min: 200, max: 399 }] };

export function expectedStatuses(...codes) {
  const list = codes.map((c) => {
    if (typeof c === 'number') return { min: c, max: c };
    if (c && typeof c.min === 'number' && typeof c.max === 'number') return { min: c.min, max: c.max };
    throw new Error(`expectedStatuses: bad argument ${JSON.stringify(c)}`);
  });
  return { expectedStatuses: list };
}

let defaultCallback = DEFAULT_EXPECTED;
export function setResponseCallback(cb) {
  defaultCallback = cb;
}

function isExpected(cb, status) {
  if (cb === null) return true;
  return cb.expectedStatuses.some((r) => status >= r.min && status <= r.max);
}

class Response {
  constructor(r, req) {
    this.status = r.status;
    this.status_text = r.statusText || '';
    this.body = r.body;
    this.headers = r.headers || {};
    this.url = r.url || req.url;
    this.error = r.error || '';
    this.error_code = r.errorCode || 0;
    this.timings = { duration: r.durationMs, waiting: r.durationMs };
    this.request = { method: req.method, url: req.url, body: req.body, headers: req.headers };
  }

  json(selector) {
    const v = JSON.parse(this.body);
    if (selector === undefined) return v;
    // Minimal gjson-like path: a.b.0.c
    return String(selector)
      .split('.')
      .reduce((o, k) => (o === null || o === undefined ? undefined : o[k]), v);
  }
}

function encodeBody(body, headers) {
  if (body === undefined || body === null) return null;
  if (typeof body === 'string') return body;
  if (body instanceof ArrayBuffer) return Buffer.from(body).toString();
  if (typeof body === 'object') {
    if (!Object.keys(headers).some((h) => h.toLowerCase() === 'content-type')) {
      headers['Content-Type'] = 'application/x-www-form-urlencoded';
    }
    return new URLSearchParams(body).toString();
  }
  return String(body);
}

function prepare(method, url, body, params) {
  if (state.phase === 'init') throw new Error('http requests are not allowed in the init context');
  const p = params || {};
  const headers = { ...(p.headers || {}) };
  return {
    method: String(method).toUpperCase(),
    url: String(url),
    body: encodeBody(body, headers),
    headers,
    timeoutMs: parseDuration(p.timeout === undefined ? '60s' : p.timeout, 'params.timeout'),
    callback: p.responseCallback === undefined ? defaultCallback : p.responseCallback,
  };
}

function finish(req, r) {
  sample('http_reqs', 'counter', 1);
  sample('http_req_duration', 'trend', r.durationMs, true);
  sample('http_req_failed', 'rate', isExpected(req.callback, r.status) ? 0 : 1);
  return new Response(r, req);
}

function wire(req) {
  return { method: req.method, url: req.url, body: req.body, headers: req.headers, timeoutMs: req.timeoutMs };
}

export function request(method, url, body, params) {
  const req = prepare(method, url, body, params);
  const r = bridge.call({ op: 'http', req: wire(req) });
  return finish(req, r.res);
}

export const get = (url, params) => request('GET', url, null, params);
export const head = (url, params) => request('HEAD', url, null, params);
export const post = (url, body, params) => request('POST', url, body, params);
export const put = (url, body, params) => request('PUT', url, body, params);
export const patch = (url, body, params) => request('PATCH', url, body, params);
export const del = (url, body, params) => request('DELETE', url, body, params);
export const options = (url, body, params) => request('OPTIONS', url, body, params);

/** Parallel requests: array (or object) of url strings, [method, url, body, params] or {method, url, body, params}. */
export function batch(requests) {
  const keys = Array.isArray(requests) ? null : Object.keys(requests);
  const list = keys === null ? requests : keys.map((k) => requests[k]);
  const reqs = list.map((q) => {
    if (typeof q === 'string') return prepare('GET', q, null, undefined);
    if (Array.isArray(q)) return prepare(q[0], q[1], q[2], q[3]);
    return prepare(q.method || 'GET', q.url, q.body, q.params);
  });
  const r = bridge.call({ op: 'http_batch', reqs: reqs.map(wire) });
  const out = r.res.map((x, i) => finish(reqs[i], x));
  if (keys === null) return out;
  return Object.fromEntries(keys.map((k, i) => [k, out[i]]));
}

export default { request, get, head, post, put, patch, del, options, batch, expectedStatuses, setResponseCallback };
