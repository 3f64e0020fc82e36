// Plain-text and Markdown renderings of the benchmark's tables.

export interface Table { title: string; head: string[]; rows: string[][]; notes?: string[] }

export function textTable(t: Table): string[] {
  const widths = t.head.map((h, i) => Math.max(h.length, ...t.rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join('  ').trimEnd();
  return [
    t.title,
    line(t.head),
    widths.map((w) => '-'.repeat(w)).join('  '),
    ...t.rows.map(line),
    ...(t.notes ?? []).map((n) => `  ${n}`),
  ];
}

export function markdownTable(t: Table): string[] {
  const esc = (s: string): string => s.replace(/\|/g, '\\|');
  return [
    `### ${t.title}`,
    '',
    `| ${t.head.map(esc).join(' | ')} |`,
    `|${t.head.map((_, i) => (i === 0 ? ' --- ' : ' ---: ')).join('|')}|`,
    ...t.rows.map((r) => `| ${r.map(esc).join(' | ')} |`),
    ...(t.notes && t.notes.length > 0 ? ['', ...t.notes.map((n) => `- ${n}`)] : []),
    '',
  ];
}

export const fmtInt = (n: number): string => Math.round(n).toLocaleString('en-US');
export const fmtPct = (n: number): string => `${n.toFixed(0)}%`;
export const fmt1 = (n: number): string => n.toFixed(1);
