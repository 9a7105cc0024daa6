// node test/check.mjs WORK_DIR OUT.json: open test/page.html in headless Chromium (SwiftShader's
// WebGPU adapter), run WORK_DIR/cases/cases.json there (scripts/webgpu_check.py writes it, with the
// bundles it names under WORK_DIR/bundles) and write the
// tokens, the adapter and each session's node placement (from onnxruntime's verbose log) to OUT.json.
import { writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { withPage } from './browser.mjs';

const [workDir, out] = process.argv.slice(2);
if (!workDir || !out) {
  console.error('usage: node test/check.mjs WORK_DIR OUT.json');
  process.exit(2);
}
const web = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const placements = [];
const results = await withPage({ web, work: resolve(workDir) }, async (page, base) => {
  let session = null;
  page.on('console', (m) => {
    const text = m.text();
    if (text.startsWith('@@done')) console.error(text.slice(2));
    const mark = text.match(/^@@session (\S+) (\S+)/);
    if (mark) session = { bundle: mark[1], graph: mark[2], nodes: {} };
    // onnxruntime: " All nodes placed on [WebGpuExecutionProvider]. Number of nodes: 412" or
    // " Node(s) placed on [CPUExecutionProvider]. Number of nodes: 12"
    const placed = text.match(/placed on \[(\w+)\]\. Number of nodes: (\d+)/);
    if (placed && session) {
      session.nodes[placed[1]] = Number(placed[2]);
      if (!placements.includes(session)) placements.push(session);
    }
  });
  await page.goto(`${base}/web/test/page.html`);
  await page.waitForFunction(() => window.ready === true);
  return page.evaluate((url) => window.runCases(url), `${base}/work/cases/cases.json`);
});
results.placements = placements;
writeFileSync(out, JSON.stringify(results, null, 1));
console.log(`wrote ${out}: ${results.cases.length} cases on ${results.adapter.vendor}/${results.adapter.architecture}`);
