// Entry of a VU thread (and of the setup/teardown thread, VU 0). Like a k6
// VU it has its own JS runtime: it loads the script (init context), then runs
// its phase. Results go to the main thread on parentPort.

import { register } from 'node:module';
import { parentPort, workerData } from 'node:worker_threads';
import * as bridge from './bridge.mjs';
import { sample, snapshot, state } from './state.mjs';

const w = workerData;
bridge.init(w.port, w.sab);
register('./hooks.mjs', import.meta.url);

globalThis.__ENV = w.env;
globalThis.__VU = w.vu;
globalThis.__ITER = 0;

function errorText(e) {
  return e && e.stack ? String(e.stack) : String(e);
}

function result(extra) {
  parentPort.postMessage({ type: 'result', ...snapshot(), ...extra });
}

let mod;
try {
  mod = await import(w.script);
} catch (e) {
  parentPort.postMessage({ type: 'error', phase: 'init', message: errorText(e) });
  process.exit(1);
}
state.phase = 'run';

if (w.role === 'setup') {
  const exports = Object.keys(mod).filter((k) => typeof mod[k] === 'function');
  let options;
  try {
    options = JSON.parse(JSON.stringify(mod.options === undefined ? {} : mod.options));
  } catch (e) {
    parentPort.postMessage({ type: 'error', phase: 'init', message: `options: ${errorText(e)}` });
    process.exit(1);
  }
  // The options travel with the request (not on parentPort, whose messages
  // are not ordered with the bridge's).
  const go = bridge.call({ op: 'go', options, exports });
  if (go.run && typeof mod.setup === 'function') {
    let data;
    try {
      data = mod.setup();
    } catch (e) {
      parentPort.postMessage({ type: 'error', phase: 'setup', message: errorText(e) });
      result({});
      process.exit(1);
    }
    parentPort.postMessage({ type: 'setup', data: data === undefined ? null : JSON.stringify(data) });
  }
  result({});
} else if (w.role === 'teardown') {
  try {
    mod.teardown(w.data === null ? undefined : JSON.parse(w.data));
  } catch (e) {
    parentPort.postMessage({ type: 'error', phase: 'teardown', message: errorText(e) });
  }
  result({});
} else {
  const fn = mod[w.exec];
  if (typeof fn !== 'function') {
    parentPort.postMessage({ type: 'error', phase: 'init', message: `the script exports no function '${w.exec}'` });
    process.exit(1);
  }
  const data = w.data === null ? undefined : JSON.parse(w.data);
  let errors = 0;
  for (let i = 0; i < w.iterations && (w.deadline === 0 || Date.now() < w.deadline); i++) {
    globalThis.__ITER = i;
    const t0 = Date.now();
    try {
      fn(data);
    } catch (e) {
      errors++;
      process.stderr.write(`ERRO[k6 shim] VU ${w.vu} iteration ${i}: ${errorText(e)}\n`);
    }
    sample('iterations', 'counter', 1);
    sample('iteration_duration', 'trend', Date.now() - t0, true);
  }
  result({ iterationErrors: errors });
}
