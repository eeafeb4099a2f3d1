#!/usr/bin/env node
// k6 shim runner: runs a k6 script under Node.js with the shim's versions of
// the k6 modules (see ../README.md, "Without k6").
//
//   node run.mjs [run] [-e KEY=VALUE]... [--summary-export FILE] SCRIPT.js
//   node run.mjs inspect [-e KEY=VALUE]... SCRIPT.js
//
// Exit status: 0 pass; 99 a threshold failed; 100 setup() timed out;
// 104 bad options (or something the shim does not support); 107 the script
// threw (init, setup, an iteration or teardown); 110 (shim only, stricter
// than k6) a check failed or a VU was cut off by maxDuration; 2 usage.

import { Worker } from 'node:worker_threads';
import { MessageChannel } from 'node:worker_threads';
import { pathToFileURL } from 'node:url';
import { existsSync, writeFileSync } from 'node:fs';
import { resolve as resolvePath } from 'node:path';
import { serve } from './lib/io.mjs';
import { parseDuration } from './lib/duration.mjs';

const EXIT = { thresholds: 99, setupTimeout: 100, config: 104, script: 107, checks: 110, usage: 2 };
const VU_ENTRY = new URL('./lib/vu.mjs', import.meta.url);
const MAX_VUS = Number(process.env.K6_SHIM_MAX_VUS || 300);

class ConfigError extends Error {}

function usage(msg) {
  if (msg) process.stderr.write(`k6 shim: ${msg}\n`);
  process.stderr.write(
    'usage: node run.mjs [run] [-e KEY=VALUE]... [--summary-export FILE] SCRIPT.js\n' +
      '       node run.mjs inspect [-e KEY=VALUE]... SCRIPT.js\n',
  );
  process.exit(EXIT.usage);
}

function parseArgs(argv) {
  const a = { cmd: 'run', env: {}, summaryExport: null, script: null };
  const args = argv.slice();
  if (args[0] === 'run' || args[0] === 'inspect') a.cmd = args.shift();
  while (args.length > 0) {
    const x = args.shift();
    if (x === '-e' || x === '--env') {
      const kv = args.shift();
      const i = kv === undefined ? -1 : kv.indexOf('=');
      if (i <= 0) usage(`${x} expects KEY=VALUE`);
      a.env[kv.slice(0, i)] = kv.slice(i + 1);
    } else if (x === '--summary-export') {
      a.summaryExport = args.shift();
      if (!a.summaryExport) usage('--summary-export expects a file');
    } else if (x.startsWith('--summary-export=')) {
      a.summaryExport = x.slice('--summary-export='.length);
    } else if (x === '-h' || x === '--help') {
      usage();
    } else if (x.startsWith('-')) {
      usage(`unknown flag ${x}`);
    } else if (a.script === null) {
      a.script = x;
    } else {
      usage(`unexpected argument ${x}`);
    }
  }
  if (a.script === null) usage('no script given');
  return a;
}

// ------------------------------------------------------------- workers ---

/**
 * Start a VU thread. Resolves when it exited, with everything it reported.
 * `onMessage(msg, worker)` sees options/setup messages as they come;
 * `onCall(msg)` answers the thread's control requests (op 'go').
 */
function startThread(spec, hooks) {
  const { port1, port2 } = new MessageChannel();
  const sab = new SharedArrayBuffer(4);
  const worker = new Worker(VU_ENTRY, {
    workerData: { ...spec, port: port2, sab },
    transferList: [port2],
  });
  const shutdown = serve(port1, sab, hooks && hooks.onCall);
  const out = { results: [], errors: [], exitCode: null, killed: false };
  let timer = null;
  const done = new Promise((resolve) => {
    worker.on('message', (m) => {
      if (m.type === 'result') out.results.push(m);
      else if (m.type === 'error') out.errors.push(m);
      if (hooks && hooks.onMessage) hooks.onMessage(m);
    });
    worker.on('error', (e) => out.errors.push({ type: 'error', phase: spec.role, message: e && e.stack ? e.stack : String(e) }));
    worker.on('exit', (code) => {
      if (timer) clearTimeout(timer);
      out.exitCode = code;
      shutdown();
      resolve(out);
    });
  });
  return {
    worker,
    done,
    killAfter(ms, why) {
      timer = setTimeout(() => {
        out.killed = why;
        worker.terminate();
      }, ms);
    },
  };
}

// ------------------------------------------------------------ options ---

function scenariosOf(options) {
  if (options.scenarios && Object.keys(options.scenarios).length > 0) return options.scenarios;
  // k6's shortcuts: iterations -> shared-iterations, duration -> constant-vus.
  const vus = options.vus === undefined ? 1 : options.vus;
  if (options.duration !== undefined && options.iterations === undefined) {
    return { default: { executor: 'constant-vus', vus, duration: options.duration } };
  }
  return { default: { executor: 'shared-iterations', vus, iterations: options.iterations === undefined ? 1 : options.iterations } };
}

function posInt(v, what, def) {
  const n = v === undefined ? def : v;
  if (!Number.isInteger(n) || n < 1) throw new ConfigError(`${what}: expected a positive integer, got ${JSON.stringify(v)}`);
  return n;
}

/** VU threads to start: [{scenario, vu, exec, iterations, deadlineAfterMs, startMs, killMs, env}] */
function plan(options, exportsList) {
  const vus = [];
  let nextVu = 1;
  for (const [name, sc] of Object.entries(scenariosOf(options))) {
    const exec = sc.exec || 'default';
    if (!exportsList.includes(exec)) throw new ConfigError(`scenario ${name}: the script exports no function '${exec}'`);
    const startMs = sc.startTime === undefined ? 0 : parseDuration(sc.startTime, `${name}.startTime`);
    const gracefulStop = parseDuration(sc.gracefulStop === undefined ? '30s' : sc.gracefulStop, `${name}.gracefulStop`);
    const n = posInt(sc.vus, `${name}.vus`, 1);
    let per;
    let deadlineAfterMs = 0;
    let killMs;
    switch (sc.executor) {
      case 'per-vu-iterations': {
        const it = posInt(sc.iterations, `${name}.iterations`, 1);
        per = () => it;
        killMs = parseDuration(sc.maxDuration === undefined ? '10m' : sc.maxDuration, `${name}.maxDuration`) + gracefulStop;
        break;
      }
      case 'shared-iterations': {
        // Approximation: k6 hands iterations out dynamically; here they are split evenly.
        const it = posInt(sc.iterations, `${name}.iterations`, 1);
        per = (i) => Math.floor(it / n) + (i < it % n ? 1 : 0);
        killMs = parseDuration(sc.maxDuration === undefined ? '10m' : sc.maxDuration, `${name}.maxDuration`) + gracefulStop;
        break;
      }
      case 'constant-vus': {
        if (sc.duration === undefined) throw new ConfigError(`scenario ${name}: constant-vus needs a duration`);
        deadlineAfterMs = parseDuration(sc.duration, `${name}.duration`);
        per = () => Number.MAX_SAFE_INTEGER;
        killMs = deadlineAfterMs + gracefulStop;
        break;
      }
      default:
        throw new ConfigError(`scenario ${name}: executor '${sc.executor}' is not supported by the k6 shim`);
    }
    for (let i = 0; i < n; i++) {
      const iterations = per(i);
      if (iterations > 0) {
        vus.push({ scenario: name, vu: nextVu, exec, iterations, deadlineAfterMs, startMs, killMs, env: sc.env || {} });
      }
      nextVu++;
    }
  }
  if (vus.length > MAX_VUS) {
    throw new ConfigError(`${vus.length} VUs: the shim runs one thread per VU and stops at K6_SHIM_MAX_VUS=${MAX_VUS}`);
  }
  return vus;
}

// --------------------------------------------------------- thresholds ---

const AGG = {
  counter: ['count', 'rate'],
  gauge: ['value', 'min', 'max'],
  rate: ['rate'],
  trend: ['avg', 'min', 'max', 'med', 'p'],
};

function parseThresholds(options) {
  const out = [];
  for (const [metric, list] of Object.entries(options.thresholds || {})) {
    if (/[{}]/.test(metric)) throw new ConfigError(`threshold on '${metric}': sub-metrics (tags) are not supported by the shim`);
    for (const t of Array.isArray(list) ? list : [list]) {
      const src = typeof t === 'string' ? t : t && t.threshold;
      const m = /^\s*(count|rate|value|avg|min|max|med|p\(\s*(\d+(?:\.\d+)?)\s*\))\s*(<=|>=|===|==|!=|<|>)\s*(-?\d+(?:\.\d+)?)\s*$/.exec(
        String(src),
      );
      if (!m) throw new ConfigError(`threshold on '${metric}': cannot parse ${JSON.stringify(src)}`);
      out.push({ metric, source: String(src).trim(), agg: m[2] ? 'p' : m[1], pct: m[2] ? Number(m[2]) : null, op: m[3], value: Number(m[4]) });
    }
  }
  return out;
}

function percentile(sorted, pct) {
  // As k6's trend sink: linear interpolation between the closest ranks.
  if (sorted.length === 0) return NaN;
  if (sorted.length === 1) return sorted[0];
  const i = (pct / 100) * (sorted.length - 1);
  const lo = sorted[Math.floor(i)];
  const hi = sorted[Math.ceil(i)];
  return lo + (hi - lo) * (i - Math.floor(i));
}

function aggregate(m, agg, pct, durationS) {
  if (m === undefined || m.count === 0) return NaN;
  switch (agg) {
    case 'count':
      return m.sum;
    case 'rate':
      return m.type === 'counter' ? m.sum / durationS : m.passes / m.count;
    case 'value':
      return m.last;
    case 'avg':
      return m.sum / m.count;
    case 'min':
      return m.min;
    case 'max':
      return m.max;
    case 'med':
      return percentile(m.sorted, 50);
    case 'p':
      return percentile(m.sorted, pct);
    default:
      return NaN;
  }
}

function compare(x, op, y) {
  switch (op) {
    case '<':
      return x < y;
    case '<=':
      return x <= y;
    case '>':
      return x > y;
    case '>=':
      return x >= y;
    case '==':
    case '===':
      return x === y;
    case '!=':
      return x !== y;
    default:
      return false;
  }
}

// ------------------------------------------------------------ metrics ---

function merge(total, r) {
  for (const [name, m] of Object.entries(r.metrics)) {
    let t = total.metrics.get(name);
    if (t === undefined) {
      t = { type: m.type, isTime: m.isTime, parts: [], sum: 0, count: 0, passes: 0, last: 0, min: Infinity, max: -Infinity };
      total.metrics.set(name, t);
    }
    t.sum += m.sum;
    t.count += m.count;
    t.passes += m.passes;
    if (m.count > 0) t.last = m.last;
    t.min = Math.min(t.min, m.min);
    t.max = Math.max(t.max, m.max);
    if (m.type === 'trend') t.parts.push(m.values);
  }
  for (const [name, c] of Object.entries(r.checks)) {
    const t = total.checks.get(name) || { passes: 0, fails: 0 };
    t.passes += c.passes;
    t.fails += c.fails;
    total.checks.set(name, t);
  }
}

function finalize(total) {
  for (const m of total.metrics.values()) {
    if (m.type === 'trend') {
      const all = new Float64Array(m.parts.reduce((n, p) => n + p.length, 0));
      let o = 0;
      for (const p of m.parts) {
        all.set(p, o);
        o += p.length;
      }
      m.sorted = all.sort();
    }
  }
}

function fmt(v, isTime) {
  if (Number.isNaN(v)) return 'n/a';
  if (!isTime) return Number.isInteger(v) ? String(v) : v.toFixed(4).replace(/\.?0+$/, '');
  if (v >= 1000) return `${(v / 1000).toFixed(2)}s`;
  return `${v.toFixed(2)}ms`;
}

function values(m, durationS) {
  switch (m.type) {
    case 'counter':
      return { count: m.sum, rate: m.sum / durationS };
    case 'gauge':
      return { value: m.last, min: m.min, max: m.max };
    case 'rate':
      return { rate: m.count ? m.passes / m.count : NaN, passes: m.passes, fails: m.count - m.passes };
    default:
      return {
        count: m.count,
        avg: m.count ? m.sum / m.count : NaN,
        min: m.count ? m.min : NaN,
        med: percentile(m.sorted, 50),
        max: m.count ? m.max : NaN,
        'p(90)': percentile(m.sorted, 90),
        'p(95)': percentile(m.sorted, 95),
        'p(99)': percentile(m.sorted, 99),
      };
  }
}

function line(name, m, durationS) {
  const v = values(m, durationS);
  switch (m.type) {
    case 'counter':
      return `${fmt(v.count, m.isTime)}  ${v.rate.toFixed(2)}/s`;
    case 'gauge':
      return `${fmt(v.value, m.isTime)}  min=${fmt(v.min, m.isTime)} max=${fmt(v.max, m.isTime)}`;
    case 'rate':
      return `${Number.isNaN(v.rate) ? 'n/a' : (v.rate * 100).toFixed(2) + '%'}  ✓ ${v.passes}  ✗ ${v.fails}`;
    default:
      return ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'].map((k) => `${k}=${fmt(v[k], m.isTime)}`).join(' ') +
        ` count=${v.count}`;
  }
}

// --------------------------------------------------------------- main ---

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const scriptPath = resolvePath(args.script);
  if (!existsSync(scriptPath)) usage(`no such script: ${args.script}`);
  const script = pathToFileURL(scriptPath).href;
  const env = { ...process.env, ...args.env };
  const total = { metrics: new Map(), checks: new Map() };
  const problems = []; // [exit code, text]
  const t0 = Date.now();

  // Init + setup run in VU 0, as in k6.
  let options = null;
  let exportsList = [];
  let thresholds = [];
  let vus = [];
  let setupData = null;
  let configError = null;
  const setupThread = startThread(
    { role: 'setup', script, vu: 0, env, data: null },
    {
      onMessage(m) {
        if (m.type === 'setup') setupData = m.data;
      },
      onCall(m) {
        // 'go': the init context ran; validate the options before setup() touches the server.
        options = m.options;
        exportsList = m.exports;
        try {
          thresholds = parseThresholds(options);
          vus = plan(options, exportsList);
        } catch (e) {
          configError = e;
        }
        const run = configError === null && args.cmd === 'run';
        if (run) {
          const ms = parseDuration(options.setupTimeout === undefined ? '60s' : options.setupTimeout, 'setupTimeout');
          setupThread.killAfter(ms, 'setup timeout');
        }
        return { run };
      },
    },
  );
  const setupOut = await setupThread.done;
  for (const r of setupOut.results) merge(total, r);
  const initError = setupOut.errors.find((e) => e.phase === 'init');
  if (initError) {
    process.stderr.write(`k6 shim: the script failed in the init context:\n${initError.message}\n`);
    process.exit(EXIT.script);
  }
  if (configError) {
    process.stderr.write(`k6 shim: ${configError.message}\n`);
    process.exit(configError instanceof ConfigError ? EXIT.config : EXIT.script);
  }
  if (args.cmd === 'inspect') {
    process.stdout.write(
      JSON.stringify({ options, exports: exportsList, vus: vus.length, thresholds: thresholds.map((t) => `${t.metric}: ${t.source}`) }, null, 2) + '\n',
    );
    return 0;
  }
  if (setupOut.killed) {
    process.stderr.write('k6 shim: setup() timed out (options.setupTimeout)\n');
    process.exit(EXIT.setupTimeout);
  }
  const setupError = setupOut.errors.find((e) => e.phase === 'setup');
  if (setupError) {
    process.stderr.write(`k6 shim: setup() threw:\n${setupError.message}\n`);
    process.exit(EXIT.script);
  }
  process.stderr.write(`k6 shim: setup done in ${((Date.now() - t0) / 1000).toFixed(1)} s; starting ${vus.length} VUs\n`);

  // The VUs: one thread each.
  const runStart = Date.now();
  const threads = vus.map(
    (v) =>
      new Promise((resolve) => {
        setTimeout(() => {
          const th = startThread({
            role: 'vu',
            script,
            vu: v.vu,
            exec: v.exec,
            iterations: v.iterations,
            deadline: v.deadlineAfterMs > 0 ? Date.now() + v.deadlineAfterMs : 0,
            env: { ...env, ...v.env },
            data: setupData,
          });
          th.killAfter(v.killMs, `VU ${v.vu} (${v.scenario}) was still running after maxDuration + gracefulStop`);
          th.done.then((out) => resolve({ v, out }));
        }, v.startMs);
      }),
  );
  let iterationErrors = 0;
  for (const { v, out } of await Promise.all(threads)) {
    for (const r of out.results) {
      merge(total, r);
      iterationErrors += r.iterationErrors || 0;
    }
    for (const e of out.errors) problems.push([EXIT.script, `VU ${v.vu} ${e.phase}: ${e.message}`]);
    if (out.killed) problems.push([EXIT.checks, out.killed]);
    else if (out.results.length === 0 && out.errors.length === 0) problems.push([EXIT.script, `VU ${v.vu} exited (${out.exitCode}) without results`]);
  }
  if (iterationErrors > 0) problems.push([EXIT.script, `${iterationErrors} iteration(s) threw`]);

  if (exportsList.includes('teardown')) {
    const td = await startThread({ role: 'teardown', script, vu: 0, env, data: setupData }).done;
    for (const r of td.results) merge(total, r);
    for (const e of td.errors) problems.push([EXIT.script, `teardown: ${e.message}`]);
  }
  const durationS = Math.max(0.001, (Date.now() - runStart) / 1000);
  finalize(total);

  // Thresholds.
  const results = thresholds.map((t) => {
    const m = total.metrics.get(t.metric);
    const actual = aggregate(m, t.agg, t.pct, durationS);
    const ok = !Number.isNaN(actual) && compare(actual, t.op, t.value);
    return { ...t, actual, ok, noData: Number.isNaN(actual) };
  });

  // Summary, in the spirit of k6's end-of-test summary.
  const lines = [];
  lines.push('', `  k6 shim summary: ${args.script} (${durationS.toFixed(1)} s after setup)`, '');
  for (const [name, c] of [...total.checks.entries()].sort()) {
    const mark = c.fails === 0 ? '✓' : '✗';
    lines.push(`     ${mark} ${name}${c.fails === 0 ? '' : `\n      ↳  ${((100 * c.passes) / (c.passes + c.fails)).toFixed(0)}% — ✓ ${c.passes} / ✗ ${c.fails}`}`);
  }
  lines.push('');
  const names = [...total.metrics.keys()].sort();
  const width = Math.max(...names.map((n) => n.length), 10) + 3;
  for (const name of names) {
    const rs = results.filter((r) => r.metric === name);
    const mark = rs.length === 0 ? ' ' : rs.every((r) => r.ok) ? '✓' : '✗';
    lines.push(`   ${mark} ${(name + ' ').padEnd(width, '.')}: ${line(name, total.metrics.get(name), durationS)}`);
  }
  lines.push('', '  thresholds:');
  for (const r of results) {
    const why = r.noData ? 'no data' : fmt(r.actual, total.metrics.get(r.metric).isTime);
    lines.push(`   ${r.ok ? '✓' : '✗'} ${r.metric}: '${r.source}' (actual ${why})`);
  }
  if (thresholds.length === 0) lines.push('   (none)');
  process.stdout.write(lines.join('\n') + '\n\n');

  const failedChecks = [...total.checks.values()].reduce((n, c) => n + c.fails, 0);
  const failedThresholds = results.filter((r) => !r.ok);
  for (const r of failedThresholds) problems.push([EXIT.thresholds, `threshold ${r.metric} '${r.source}' failed`]);
  if (failedChecks > 0) problems.push([EXIT.checks, `${failedChecks} check(s) failed`]);

  if (args.summaryExport) {
    const metrics = {};
    for (const name of names) {
      const m = total.metrics.get(name);
      const th = {};
      for (const r of results.filter((x) => x.metric === name)) th[r.source] = { ok: r.ok };
      const v = values(m, durationS);
      for (const k of Object.keys(v)) if (Number.isNaN(v[k])) v[k] = null;
      metrics[name] = { type: m.type, contains: m.isTime ? 'time' : 'default', values: v, thresholds: th };
    }
    const summary = {
      script: args.script,
      duration_s: durationS,
      vus: vus.length,
      metrics,
      checks: Object.fromEntries(total.checks),
      problems: problems.map((p) => p[1]),
    };
    writeFileSync(args.summaryExport, JSON.stringify(summary, null, 2) + '\n');
  }

  for (const [, text] of problems) process.stderr.write(`k6 shim: ${text}\n`);
  if (problems.length === 0) return 0;
  // Thresholds first (as k6), then script errors, then the shim's stricter checks.
  for (const code of [EXIT.thresholds, EXIT.script, EXIT.checks]) if (problems.some((p) => p[0] === code)) return code;
  return 1;
}

main().then(
  (code) => process.exit(code),
  (e) => {
    process.stderr.write(`k6 shim: ${e && e.stack ? e.stack : e}\n`);
    process.exit(e instanceof ConfigError ? EXIT.config : 1);
  },
);
