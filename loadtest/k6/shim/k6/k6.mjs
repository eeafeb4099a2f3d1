// Shim of the `k6` module: check, sleep, group, fail, randomSeed.
import { recordCheck } from '../lib/state.mjs';

const sleeper = new Int32Array(new SharedArrayBuffer(4));

export function check(val, sets, tags) {
  void tags;
  let all = true;
  for (const name of Object.keys(sets || {})) {
    const c = sets[name];
    const ok = typeof c === 'function' ? !!c(val) : !!c;
    recordCheck(name, ok);
    if (!ok) all = false;
  }
  return all;
}

/** Blocks this VU (only this VU: each VU is a thread), like k6's sleep. */
export function sleep(secs) {
  const ms = Number(secs) * 1000;
  if (ms > 0) Atomics.wait(sleeper, 0, 0, ms);
}

export function group(name, fn) {
  void name;
  return fn();
}

export function fail(msg) {
  throw new Error(msg === undefined ? 'fail() called' : String(msg));
}

export function randomSeed(seed) {
  void seed; // Math.random stays unseeded in the shim
}

export default { check, sleep, group, fail, randomSeed };
