// A dependency-free SVG line chart for the training curves.
/** band: [x, low, high] drawn as a translucent area behind the line (e.g. min to max over seeds). */
export interface Series { label: string; color: string; dashed?: boolean; points: [number, number][]; band?: [number, number, number][] }

export function lineChart(series: Series[], { title = '', xLabel = '', yLabel = '', width = 760, height = 440 } = {}): string {
  const pts = series.flatMap((s) => [...s.points, ...(s.band ?? []).flatMap(([x, lo, hi]) => [[x, lo], [x, hi]] as [number, number][])])
    .filter(([, y]) => Number.isFinite(y));
  const [x0, x1] = [Math.min(0, ...pts.map((p) => p[0])), Math.max(1, ...pts.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
  if (!(y1 > y0)) { y0 -= 1; y1 += 1; }
  const pad = (y1 - y0) * 0.05;
  y0 -= pad; y1 += pad;
  const L = 70, R = 20, Tm = 40, B = 50, w = width - L - R, h = height - Tm - B;
  const sx = (x: number) => L + ((x - x0) / (x1 - x0)) * w, sy = (y: number) => Tm + (1 - (y - y0) / (y1 - y0)) * h;
  const ticks = (a: number, b: number) => Array.from({ length: 6 }, (_, i) => a + ((b - a) * i) / 5);
  const fmt = (v: number) => (Math.abs(v) >= 1000 ? v.toFixed(0) : Number(v.toPrecision(3)).toString());
  const out = [`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${width / 2}" y="22" text-anchor="middle" font-size="15">${escape(title)}</text>`,
    `<rect x="${L}" y="${Tm}" width="${w}" height="${h}" fill="none" stroke="#888"/>`];
  for (const x of ticks(x0, x1)) out.push(`<line x1="${sx(x)}" y1="${Tm + h}" x2="${sx(x)}" y2="${Tm + h + 5}" stroke="#888"/><text x="${sx(x)}" y="${Tm + h + 18}" text-anchor="middle">${fmt(x)}</text>`);
  for (const y of ticks(y0, y1)) out.push(`<line x1="${L}" y1="${sy(y)}" x2="${L + w}" y2="${sy(y)}" stroke="#eee"/><text x="${L - 6}" y="${sy(y) + 4}" text-anchor="end">${fmt(y)}</text>`);
  out.push(`<text x="${L + w / 2}" y="${height - 10}" text-anchor="middle">${escape(xLabel)}</text>`,
    `<text x="16" y="${Tm + h / 2}" text-anchor="middle" transform="rotate(-90 16 ${Tm + h / 2})">${escape(yLabel)}</text>`);
  for (const s of series) {
    const b = (s.band ?? []).filter(([, lo, hi]) => Number.isFinite(lo) && Number.isFinite(hi));
    if (b.length === 0) continue;
    const edge = [...b.map(([x, , hi]) => [x, hi]), ...[...b].reverse().map(([x, lo]) => [x, lo])];
    out.push(`<path d="${edge.map(([x, y], k) => `${k ? 'L' : 'M'}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join('')}Z" fill="${s.color}" fill-opacity="0.15" stroke="none"/>`);
  }
  series.forEach((s, i) => {
    const d = s.points.filter(([, y]) => Number.isFinite(y)).map(([x, y], k) => `${k ? 'L' : 'M'}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join('');
    out.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="6 4"' : ''}/>`);
    const ly = Tm + 14 + i * 18;
    out.push(`<line x1="${L + w - 210}" y1="${ly}" x2="${L + w - 180}" y2="${ly}" stroke="${s.color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="6 4"' : ''}/>`,
      `<text x="${L + w - 174}" y="${ly + 4}">${escape(s.label)}</text>`);
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}

function escape(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}
