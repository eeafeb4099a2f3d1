// k6 duration values: "1h2m3.5s", "500ms", or a number of milliseconds.
export function parseDuration(v, what) {
  if (typeof v === 'number' && isFinite(v) && v >= 0) return v;
  if (typeof v === 'string') {
    const s = v.trim();
    if (/^\d+(\.\d+)?$/.test(s)) return Number(s) * 1000; // bare number in a string: seconds
    const re = /(\d+(?:\.\d+)?)(ms|h|m|s)/gy;
    let ms = 0;
    let m;
    let pos = 0;
    while ((m = re.exec(s)) !== null) {
      const n = Number(m[1]);
      ms += m[2] === 'h' ? n * 3600e3 : m[2] === 'm' ? n * 60e3 : m[2] === 's' ? n * 1e3 : n;
      pos = re.lastIndex;
    }
    if (pos === s.length && pos > 0) return ms;
  }
  throw new Error(`${what || 'duration'}: cannot parse ${JSON.stringify(v)}`);
}
