// Headless Chromium (Debian's package) with a WebGPU adapter from SwiftShader, and a local HTTP
// server for the page, onnxruntime-web and the bundles: `withPage(roots, fn)`.
import { createServer } from 'node:http';
import { createReadStream, statSync } from 'node:fs';
import { extname, join, normalize, resolve } from 'node:path';
import { chromium } from 'playwright-core';

const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.json': 'application/json',
  '.wasm': 'application/wasm' };

// SwiftShader is Chromium's software Vulkan: --enable-unsafe-swiftshader lets WebGPU use it, since
// headless Chromium here has no GPU.
export const CHROMIUM_FLAGS = ['--enable-unsafe-webgpu', '--enable-unsafe-swiftshader', '--use-angle=swiftshader',
  '--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--no-first-run'];

/** Serve each folder of `roots` ({prefix: folder}) under /prefix/ on 127.0.0.1, open a page, run fn(page, base). */
export async function withPage(roots, fn, executablePath = process.env.CHROMIUM || '/usr/bin/chromium') {
  const server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    const [, prefix, ...rest] = path.split('/');
    const root = roots[prefix];
    const file = root && resolve(root, normalize(rest.join('/')));
    let size = -1;
    try { size = file && file.startsWith(resolve(root)) ? statSync(file).size : -1; } catch { /* missing */ }
    if (size < 0) { res.writeHead(404).end(); return; }
    // cross-origin isolation lets onnxruntime-web use threads (SharedArrayBuffer)
    res.writeHead(200, { 'Content-Type': TYPES[extname(file)] || 'application/octet-stream', 'Content-Length': size,
      'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp' });
    createReadStream(file).pipe(res);
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  const base = `http://127.0.0.1:${server.address().port}`;
  const browser = await chromium.launch({ executablePath, args: CHROMIUM_FLAGS });
  try {
    const page = await browser.newPage();
    page.on('console', (m) => { if (process.env.VERBOSE) console.error(`[page] ${m.text()}`); });
    page.on('pageerror', (e) => console.error(`[page error] ${e.message}`));
    return await fn(page, base);
  } finally {
    await browser.close();
    server.close();
  }
}
