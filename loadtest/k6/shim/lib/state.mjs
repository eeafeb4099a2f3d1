// Per-VU-thread state shared by the shim's k6 modules: the phase (init or
// running), the metric samples this VU collected and the check counts.

export const state = {
  phase: 'init', // 'init' while the script's module body runs, then 'run'
  metrics: new Map(), // name -> {type, isTime, values[] (trend), sum, count, passes, last}
  checks: new Map(), // name -> {passes, fails}
};

const NAME = /^[a-zA-Z_][a-zA-Z0-9_]{0,127}$/;
const TYPES = ['counter', 'gauge', 'rate', 'trend'];

export function declare(name, type, isTime) {
  if (!NAME.test(name)) throw new Error(`invalid metric name '${name}'`);
  if (!TYPES.includes(type)) throw new Error(`bad metric type ${type}`);
  let m = state.metrics.get(name);
  if (m === undefined) {
    m = { type, isTime: !!isTime, values: [], sum: 0, count: 0, passes: 0, last: 0, min: Infinity, max: -Infinity };
    state.metrics.set(name, m);
  } else if (m.type !== type) {
    throw new Error(`metric '${name}' already exists as a ${m.type}`);
  }
  return m;
}

/** Add one sample (value already a number; for rates 0/1). */
export function sample(name, type, value, isTime) {
  const m = declare(name, type, isTime);
  if (typeof value !== 'number' || Number.isNaN(value)) throw new Error(`metric '${name}': bad value ${value}`);
  m.count++;
  m.sum += value;
  m.last = value;
  if (value < m.min) m.min = value;
  if (value > m.max) m.max = value;
  if (type === 'rate' && value !== 0) m.passes++;
  if (type === 'trend') m.values.push(value);
}

export function recordCheck(name, ok) {
  let c = state.checks.get(name);
  if (c === undefined) {
    c = { passes: 0, fails: 0 };
    state.checks.set(name, c);
  }
  if (ok) c.passes++;
  else c.fails++;
  sample('checks', 'rate', ok ? 1 : 0);
}

/** A structured-cloneable copy of everything collected. */
export function snapshot() {
  const metrics = {};
  for (const [name, m] of state.metrics) {
    metrics[name] = { ...m, values: Float64Array.from(m.values) };
  }
  return { metrics, checks: Object.fromEntries(state.checks) };
}
