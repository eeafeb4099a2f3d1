// Module loader hooks for the VU threads: the k6 module names resolve to the
// shim's implementations, and every script file is loaded as an ES module
// (k6 treats .js files as ES modules, whatever package.json says).

const SHIM = {
  k6: '../k6/k6.mjs',
  'k6/http': '../k6/http.mjs',
  'k6/ws': '../k6/ws.mjs',
  'k6/metrics': '../k6/metrics.mjs',
};

export async function resolve(specifier, context, nextResolve) {
  if (Object.prototype.hasOwnProperty.call(SHIM, specifier)) {
    return { url: new URL(SHIM[specifier], import.meta.url).href, shortCircuit: true };
  }
  if (specifier === 'k6' || specifier.startsWith('k6/')) {
    throw new Error(`k6 shim: module '${specifier}' is not provided (only ${Object.keys(SHIM).join(', ')})`);
  }
  if (/^https?:/.test(specifier)) {
    throw new Error(`k6 shim: remote module '${specifier}' cannot be loaded (no network but loopback here)`);
  }
  return nextResolve(specifier, context);
}

export async function load(url, context, nextLoad) {
  if (url.startsWith('file:') && url.endsWith('.js') && !url.includes('/node_modules/')) {
    return nextLoad(url, { ...context, format: 'module' });
  }
  return nextLoad(url, context);
}
