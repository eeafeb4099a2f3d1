// Shim of `k6/metrics`: Counter, Gauge, Rate, Trend. Tags are accepted and ignored.
import { declare, sample, state } from '../lib/state.mjs';

class Metric {
  constructor(type, name, isTime) {
    if (state.phase !== 'init') throw new Error(`metrics must be created in the init context (${name})`);
    this.name = name;
    this.type = type;
    this.isTime = !!isTime;
    declare(name, type, this.isTime);
  }
}

export class Counter extends Metric {
  constructor(name, isTime) {
    super('counter', name, isTime);
  }
  add(value, tags) {
    void tags;
    sample(this.name, 'counter', Number(value), this.isTime);
    return true;
  }
}

export class Gauge extends Metric {
  constructor(name, isTime) {
    super('gauge', name, isTime);
  }
  add(value, tags) {
    void tags;
    sample(this.name, 'gauge', Number(value), this.isTime);
    return true;
  }
}

export class Rate extends Metric {
  constructor(name) {
    super('rate', name, false);
  }
  add(value, tags) {
    void tags;
    sample(this.name, 'rate', value ? 1 : 0, false);
    return true;
  }
}

export class Trend extends Metric {
  constructor(name, isTime) {
    super('trend', name, isTime);
  }
  add(value, tags) {
    void tags;
    sample(this.name, 'trend', Number(value), this.isTime);
    return true;
  }
}

export default { Counter, Gauge, Rate, Trend };
