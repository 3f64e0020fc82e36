// The README documents every setting, metric, admin route and CLI command once, each kind in one
// table; these tests hold those tables to what the code defines, so docs and code cannot drift
// apart. Each table is found by its header's first column: `variable`, `metric`, `route`, `command`.
import { strict as assert } from 'node:assert';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { program } from '../../app/cli.js';
import { CONFIG_FILE_ENV, SETTINGS } from '../../app/config.js';
import { ADMIN_ENDPOINTS } from '../../lib/ops/admin.js';
import { Metrics } from '../../lib/ops/metrics.js';

// dist/test/unit/ → the repository
const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

interface Table { file: string; line: number; header: string[]; rows: string[][] }

function cells(line: string): string[] {
  return line.trim().replace(/^\|/, '').replace(/\|$/, '').split(/(?<!\\)\|/).map((c) => c.trim());
}

/** Every Markdown table of a file, outside code fences. */
function tablesOf(file: string): Table[] {
  const lines = readFileSync(join(ROOT, file), 'utf8').split('\n');
  const found: Table[] = [];
  let fenced = false;
  for (let i = 0; i < lines.length; i += 1) {
    const line = lines[i] ?? '';
    if (/^\s*```/.test(line)) { fenced = !fenced; continue; }
    if (fenced || !line.trim().startsWith('|') || !/^\s*\|[\s:|-]+\|\s*$/.test(lines[i + 1] ?? '')) continue;
    const table: Table = { file, line: i + 1, header: cells(line), rows: [] };
    i += 2;
    while (i < lines.length && (lines[i] ?? '').trim().startsWith('|')) { table.rows.push(cells(lines[i] ?? '')); i += 1; }
    found.push(table);
  }
  return found;
}

const README = 'README.md';
const DOC_FILES = [README, 'bench/README.md', ...readdirSync(join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];
const ALL_TABLES = DOC_FILES.flatMap(tablesOf);

/** The one table of this kind: in the README, nowhere else. */
function theTable(firstColumn: string): Table {
  const matching = ALL_TABLES.filter((t) => t.header[0]?.toLowerCase() === firstColumn);
  assert.equal(matching.length, 1, `exactly one table whose first column is "${firstColumn}" (found: ${matching.map((t) => `${t.file}:${t.line}`).join(', ') || 'none'})`);
  const table = matching[0] as Table;
  assert.equal(table.file, README, `the "${firstColumn}" table belongs in the README`);
  return table;
}

/** What a row documents: the code span its first cell starts with. */
function subject(row: string[]): string {
  const match = /^`([^`]+)`/.exec(row[0] ?? '');
  assert.ok(match, `a row's first cell starts with a \`code span\`: | ${row.join(' | ')} |`);
  return match[1] as string;
}

/** Rows of every table in the docs whose first cell starts with one of `names` (each must be 1: the table's own). */
function rowsDocumenting(name: (subject: string) => string | undefined, wanted: string): number {
  return ALL_TABLES.flatMap((t) => t.rows).filter((row) => {
    const m = /^`([^`]+)`/.exec(row[0] ?? '');
    return m?.[1] !== undefined && name(m[1]) === wanted;
  }).length;
}

function sameSet(documented: string[], defined: string[], what: string): void {
  const doc = new Set(documented);
  const code = new Set(defined);
  const missing = [...code].filter((x) => !doc.has(x));
  const extra = [...doc].filter((x) => !code.has(x));
  assert.deepEqual({ missing, extra }, { missing: [], extra: [] }, `${what}: "missing" are in the code but not the README's table, "extra" the other way round`);
  assert.equal(documented.length, doc.size, `${what}: each documented once (${documented.join(', ')})`);
}

describe('README tables match the code', () => {
  it('configuration: every environment variable app/config.ts reads, with its file key', () => {
    const table = theTable('variable');
    assert.equal(table.header[1], 'file key');
    const byEnv = new Map<string, string>(Object.entries(SETTINGS).map(([key, s]) => [s.env, key]));
    const documented = table.rows.map(subject);
    sameSet(documented, [...byEnv.keys(), CONFIG_FILE_ENV], 'environment variables');
    for (const row of table.rows) {
      const env = subject(row);
      const key = byEnv.get(env);
      const shown = /^`([^`]+)`$/.exec(row[1] ?? '')?.[1];
      assert.equal(shown, key, `${env}: the file key column says ${row[1]}, app/config.ts ${key ?? '(none: write —)'}`);
      assert.equal(rowsDocumenting((s) => s, env), 1, `${env} is documented in one table row only`);
    }
  });

  it('metrics: every metric the Metrics registry holds, with its labels and type', async () => {
    const table = theTable('metric');
    const metrics = new Metrics({ registrations: () => ({ bindings: 0, aors: 0 }) });
    const registered = metrics.registry.getMetricsAsArray();
    const types = new Map((await metrics.registry.getMetricsAsJSON()).map((m) => [m.name, String(m.type)]));
    // A row names one metric, with its labels (`midreg_message_total{outcome}`), or a family
    // by its prefixes (`process_*`, `nodejs_*`: Node's default metrics).
    const rows = table.rows.map((row) => {
      const spans = [...(row[0] ?? '').matchAll(/`([^`]+)`/g)].map((m) => m[1] as string);
      assert.ok(spans.length > 0, `metric row names a metric: | ${row.join(' | ')} |`);
      const family = spans.every((s) => s.endsWith('_*'));
      return { row, spans, family, prefixes: family ? spans.map((s) => s.slice(0, -1)) : [] };
    });
    for (const r of rows.filter((x) => !x.family)) {
      assert.equal(r.spans.length, 1, `one metric per row: ${r.row[0]}`);
      const [, name, labels] = /^([a-z_:][a-z0-9_:]*)(?:\{([a-z_,\s]*)\})?$/.exec(r.spans[0] as string) ?? [];
      assert.ok(name, `metric name: ${r.spans[0]}`);
      const metric = registered.find((m) => m.name === name);
      assert.ok(metric, `${name} is documented but lib/ops/metrics.ts does not register it`);
      const documentedLabels = (labels ?? '').split(',').map((l) => l.trim()).filter((l) => l !== '');
      const codeLabels = (metric as unknown as { labelNames?: readonly string[] }).labelNames ?? [];
      assert.deepEqual([...documentedLabels].sort(), [...codeLabels].sort(), `${name}: labels`);
      assert.equal(r.row[1], types.get(name), `${name}: type`);
    }
    const coveredBy = (name: string): number => rows.filter((r) => (r.family ? r.prefixes.some((p) => name.startsWith(p)) : r.spans[0]?.replace(/\{.*$/, '') === name)).length;
    const undocumented = registered.map((m) => m.name).filter((n) => coveredBy(n) !== 1);
    assert.deepEqual(undocumented, [], 'every registered metric is covered by exactly one row of the metrics table');
    for (const r of rows.filter((x) => x.family)) {
      for (const p of r.prefixes) assert.ok(registered.some((m) => m.name.startsWith(p)), `no registered metric starts with ${p}`);
    }
    const documented = rows.filter((r) => !r.family).map((r) => (r.spans[0] as string).replace(/\{.*$/, ''));
    sameSet(documented, registered.map((m) => m.name).filter((n) => !rows.some((r) => r.family && r.prefixes.some((p) => n.startsWith(p)))), 'metrics');
    for (const name of documented) {
      assert.equal(rowsDocumenting((s) => s.replace(/\{.*$/, ''), name), 1, `${name} is documented in one table row only`);
    }
  });

  it('admin API: every route lib/ops/admin.ts serves', () => {
    const table = theTable('route');
    // `GET /registrations/<AoR>` documents the endpoint 'GET /registrations/<aor>'.
    const route = (s: string): string | undefined => /^(?:GET|DELETE) \/\S*$/.exec(s)?.[0]?.replace(/<[^>]*>/g, '<>');
    const documented = table.rows.map((row) => {
      const r = route(subject(row));
      assert.ok(r, `a route row starts with \`GET /path\` or \`DELETE /path\`: ${row[0]}`);
      return r;
    });
    sameSet(documented, ADMIN_ENDPOINTS.map((r) => r.replace(/<[^>]*>/g, '<>')), 'admin routes');
    for (const r of documented) assert.equal(rowsDocumenting(route, r), 1, `${r} is documented in one table row only`);
  });

  it('CLI: every command app/cli.ts defines, with its options', () => {
    const table = theTable('command');
    const cli = program({});
    const command = (s: string): string | undefined => /^midreg ([a-z][a-z-]*)/.exec(s)?.[1];
    const documented = table.rows.map((row) => {
      const name = command(subject(row));
      assert.ok(name, `a command row starts with \`midreg <command> …\`: ${row[0]}`);
      return name;
    });
    sameSet(documented, cli.commands.map((c) => c.name()), 'CLI commands');
    for (const row of table.rows) {
      const name = command(subject(row)) as string;
      const defined = cli.commands.find((c) => c.name() === name);
      const options = [...subject(row).matchAll(/--[a-z][a-z-]*/g)].map((m) => m[0]);
      sameSet(options, defined?.options.map((o) => o.long ?? '') ?? [], `options of midreg ${name}`);
      assert.equal(rowsDocumenting(command, name), 1, `midreg ${name} is documented in one table row only`);
    }
  });
});
