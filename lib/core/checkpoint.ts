// Checkpoint files: a versioned JSON header and the arrays, then a SHA-256 of every byte before it, so
// that no single changed or missing byte anywhere loads. Written to a temporary file, synced, renamed and
// the directory synced, so a crash never leaves a partial checkpoint under the real name.
//   "WNLSTMCK" | uint32 LE version | uint32 LE header length | header JSON | zero padding to 8 |
//   arrays (each 8-aligned) | SHA-256 of all the bytes before it (32 bytes)
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { wnlstmError } from './errors';

const MAGIC = 'WNLSTMCK';
const VERSION = 2;
const PREFIX = 16, DIGEST = 32;
/** Refused before anything is allocated: a header this large, or this many arrays, is not a checkpoint. */
export const CHECKPOINT_LIMITS = { headerBytes: 64 * 2 ** 20, arrays: 100000, nameLength: 1000 };

type AnyArray = Float32Array | Float64Array | Int32Array;
const TYPES = { float32: Float32Array, float64: Float64Array, int32: Int32Array } as const;
type TypeName = keyof typeof TYPES;
interface Entry { name: string; type: TypeName; offset: number; length: number }

export interface Checkpoint { meta: unknown; arrays: Record<string, AnyArray> }

/** The arrays a trained model's checkpoint holds, the same for train()'s checkpoints and SequenceModel.save():
 * every cell's weights by TF name (weights/<cell>/<name>), the embedding's table (weights/embedding, where the
 * model has one), the head's kernel and bias (weights/<head>/kernel|bias, from the "dense" block) and the
 * optimizer's state (opt/<block>/1|2). */
export function modelArrays(cells: readonly { name: string; getWeights(): Record<string, AnyArray> }[],
  blocks: readonly { name: string; getValues(): AnyArray }[], head: { name: string; kernelSize: number },
  optimizerBuffers: Record<string, [AnyArray | null, AnyArray | null]> = {}): Checkpoint['arrays'] {
  const arrays: Checkpoint['arrays'] = {};
  for (const cell of cells) for (const [name, v] of Object.entries(cell.getWeights())) arrays[`weights/${cell.name}/${name}`] = v;
  const byName = Object.fromEntries(blocks.map((b) => [b.name, b]));
  if (byName.embedding) arrays['weights/embedding'] = byName.embedding.getValues();
  const dense = byName.dense.getValues();
  arrays[`weights/${head.name}/kernel`] = dense.slice(0, head.kernelSize);
  arrays[`weights/${head.name}/bias`] = dense.slice(head.kernelSize);
  for (const [name, [s1, s2]] of Object.entries(optimizerBuffers)) {
    if (s1) arrays[`opt/${name}/1`] = s1;
    if (s2) arrays[`opt/${name}/2`] = s2;
  }
  return arrays;
}

function typeName(a: AnyArray): TypeName {
  return a instanceof Float64Array ? 'float64' : a instanceof Int32Array ? 'int32' : 'float32';
}

// Temporary files are named <file>.tmp-<host>-<pid>-<n>: a writer on this host whose process is gone
// died while writing, and the next save removes its file. Writers on other hosts (a shared volume) are
// left alone: their process ids mean nothing here.
const host = os.hostname().replace(/[^A-Za-z0-9.]/g, '_');
const tmpPrefix = (file: string) => `${path.basename(file)}.tmp-${host}-`;

/** Temporary files of this checkpoint left by processes of this host that died while writing it. */
function staleTemporaries(file: string, names: string[]): string[] {
  const prefix = tmpPrefix(file);
  return names.filter((n) => {
    if (!n.startsWith(prefix)) return false;
    const pid = Number(n.slice(prefix.length).split('-')[0]);
    if (!Number.isInteger(pid) || pid <= 0) return false;
    try {
      process.kill(pid, 0);
      return false; // its writer is alive (maybe this process): leave it
    } catch (err) {
      return (err as NodeJS.ErrnoException).code === 'ESRCH';
    }
  }).map((n) => path.join(path.dirname(file), n));
}

let tmpCounter = 0;
const tmpName = (file: string) => path.join(path.dirname(file), `${tmpPrefix(file)}${process.pid}-${++tmpCounter}`);

/** Writes `checkpoint` to `file` atomically (see the top of this file). */
export function saveCheckpoint(file: string, checkpoint: Checkpoint): void {
  const bytes = encode(checkpoint);
  const dir = path.dirname(file);
  fs.mkdirSync(dir, { recursive: true });
  for (const stale of staleTemporaries(file, fs.readdirSync(dir))) fs.rmSync(stale, { force: true });
  const tmp = tmpName(file);
  try {
    const fd = fs.openSync(tmp, 'w');
    try {
      fs.writeSync(fd, bytes);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
  } catch (err) {
    fs.rmSync(tmp, { force: true });
    throw err;
  }
  syncDirectory(dir);
}

/** saveCheckpoint() with the file I/O off the main thread. The arrays are read at the call. */
export async function saveCheckpointAsync(file: string, checkpoint: Checkpoint): Promise<void> {
  const bytes = encode(checkpoint);
  const dir = path.dirname(file);
  await fs.promises.mkdir(dir, { recursive: true });
  for (const stale of staleTemporaries(file, await fs.promises.readdir(dir))) await fs.promises.rm(stale, { force: true });
  const tmp = tmpName(file);
  try {
    const handle = await fs.promises.open(tmp, 'w');
    try {
      await handle.writeFile(bytes);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await fs.promises.rename(tmp, file);
  } catch (err) {
    await fs.promises.rm(tmp, { force: true });
    throw err;
  }
  const handle = await fs.promises.open(dir, 'r').catch(() => null);
  if (handle) await handle.sync().catch(() => undefined).finally(() => handle.close());
}

/** Makes the rename durable. Some file systems cannot sync a directory: that is not an error. */
function syncDirectory(dir: string): void {
  let fd: number;
  try {
    fd = fs.openSync(dir, 'r');
  } catch {
    return;
  }
  try {
    fs.fsyncSync(fd);
  } catch {
    // EINVAL or EISDIR where directories cannot be synced
  } finally {
    fs.closeSync(fd);
  }
}

const aligned = (bytes: number) => Math.ceil(bytes / 8) * 8;

/** Refuses what decode() would refuse, so that every file saved can be loaded. */
function encode({ meta, arrays }: Checkpoint): Buffer {
  if (arrays === null || typeof arrays !== 'object') throw wnlstmError('ERR_WNLSTM_TYPE', 'checkpoint.arrays must be an object of typed arrays');
  const entries: Entry[] = [];
  let offset = 0;
  for (const [name, a] of Object.entries(arrays)) {
    if (!(a instanceof Float32Array || a instanceof Float64Array || a instanceof Int32Array)) {
      throw wnlstmError('ERR_WNLSTM_TYPE', `checkpoint array '${name}' must be a Float32Array, Float64Array or Int32Array`);
    }
    if (name.length === 0 || name.length > CHECKPOINT_LIMITS.nameLength) {
      throw wnlstmError('ERR_WNLSTM_CHECKPOINT', `checkpoint array names need 1 to ${CHECKPOINT_LIMITS.nameLength} characters`);
    }
    entries.push({ name, type: typeName(a), offset, length: a.length });
    offset += aligned(a.byteLength);
  }
  if (entries.length > CHECKPOINT_LIMITS.arrays) throw wnlstmError('ERR_WNLSTM_CHECKPOINT', `more than ${CHECKPOINT_LIMITS.arrays} arrays`);
  const json = JSON.stringify({ format: 'wnlstm-checkpoint', version: VERSION, meta, arrays: entries });
  if (json === undefined) throw wnlstmError('ERR_WNLSTM_TYPE', 'checkpoint.meta must be JSON');
  const header = Buffer.from(json);
  if (header.length > CHECKPOINT_LIMITS.headerBytes) throw wnlstmError('ERR_WNLSTM_CHECKPOINT', 'the checkpoint header (meta) exceeds 64 MiB');
  const start = PREFIX + header.length + ((8 - ((PREFIX + header.length) % 8)) % 8);
  const out = Buffer.alloc(start + offset + DIGEST);
  out.write(MAGIC, 0, 'latin1');
  out.writeUInt32LE(VERSION, 8);
  out.writeUInt32LE(header.length, 12);
  header.copy(out, PREFIX);
  for (const [i, a] of Object.values(arrays).entries()) {
    Buffer.from(a.buffer, a.byteOffset, a.byteLength).copy(out, start + entries[i].offset);
  }
  crypto.createHash('sha256').update(out.subarray(0, out.length - DIGEST)).digest().copy(out, out.length - DIGEST);
  return out;
}

export function loadCheckpoint(file: string): Checkpoint {
  let data: Buffer;
  try {
    data = fs.readFileSync(file);
  } catch (err) {
    throw wnlstmError('ERR_WNLSTM_CHECKPOINT', `cannot read checkpoint ${file}: ${(err as Error).message}`);
  }
  return decode(file, data);
}

/** loadCheckpoint() with the file I/O off the main thread. */
export async function loadCheckpointAsync(file: string): Promise<Checkpoint> {
  let data: Buffer;
  try {
    data = await fs.promises.readFile(file);
  } catch (err) {
    throw wnlstmError('ERR_WNLSTM_CHECKPOINT', `cannot read checkpoint ${file}: ${(err as Error).message}`);
  }
  return decode(file, data);
}

const isCount = (v: unknown, max: number): v is number => Number.isSafeInteger(v) && (v as number) >= 0 && (v as number) <= max;


/** Checks the checksum, then every field of the header against the file, before any array is made. */
function decode(file: string, data: Buffer): Checkpoint {
  const bad = (why: string) => wnlstmError('ERR_WNLSTM_CHECKPOINT', `${file} is not a valid wnlstm checkpoint: ${why}`);
  if (data.length < PREFIX || data.toString('latin1', 0, 8) !== MAGIC) throw bad('wrong magic bytes');
  const version = data.readUInt32LE(8);
  if (version !== VERSION) {
    throw bad(version === 1 ? 'format 1 (wnlstm 0.1), whose header had no checksum; this wnlstm reads format 2'
      : `format ${version}; this wnlstm reads format ${VERSION}`);
  }
  if (data.length < PREFIX + DIGEST) throw bad('truncated');
  const body = data.subarray(0, data.length - DIGEST);
  if (!crypto.createHash('sha256').update(body).digest().equals(data.subarray(data.length - DIGEST))) {
    throw bad('checksum mismatch (truncated or corrupted)');
  }
  const length = data.readUInt32LE(12);
  if (length > CHECKPOINT_LIMITS.headerBytes || PREFIX + length > body.length) throw bad('header length out of bounds');
  let header: unknown;
  try {
    header = JSON.parse(data.toString('utf8', PREFIX, PREFIX + length));
  } catch {
    throw bad('the header is not JSON');
  }
  const h = header as { format?: unknown; version?: unknown; meta?: unknown; arrays?: unknown };
  if (h === null || typeof h !== 'object' || h.format !== 'wnlstm-checkpoint' || h.version !== VERSION) throw bad('not a wnlstm header');
  if (!Array.isArray(h.arrays) || h.arrays.length > CHECKPOINT_LIMITS.arrays) throw bad('the array list is missing or too long');
  const start = PREFIX + length + ((8 - ((PREFIX + length) % 8)) % 8);
  if (start > body.length) throw bad('truncated');
  const payload = body.subarray(start);
  // The arrays lie one after another, each 8-aligned, and fill the payload exactly (as encode() writes
  // them): so the arrays made below are no larger, together, than the file.
  const entries: Entry[] = [];
  const names = new Set<string>();
  let end = 0;
  for (const e of h.arrays as Partial<Entry>[]) {
    if (e === null || typeof e !== 'object') throw bad('an array entry is not an object');
    const { name, type, offset, length: n } = e;
    if (typeof name !== 'string' || name.length === 0 || name.length > CHECKPOINT_LIMITS.nameLength) throw bad('an array has no valid name');
    if (names.has(name)) throw bad(`array '${name}' appears twice`);
    names.add(name);
    if (typeof type !== 'string' || !Object.hasOwn(TYPES, type)) throw bad(`array '${name}' has unknown type ${String(type)}`);
    const bytes = TYPES[type].BYTES_PER_ELEMENT;
    if (offset !== end || !isCount(n, payload.length) || offset + n * bytes > payload.length) {
      throw bad(`array '${name}' is not where the previous one ends, or lies outside the file`);
    }
    end = offset + aligned(n * bytes);
    entries.push({ name, type, offset, length: n });
  }
  if (end !== payload.length) throw bad(`the arrays cover ${end} of the ${payload.length} payload bytes`);
  // fromEntries defines own properties, so that a name such as '__proto__' stays a plain key.
  const arrays: Record<string, AnyArray> = Object.fromEntries(entries.map((e) => {
    const Type = TYPES[e.type];
    const copy = new Uint8Array(e.length * Type.BYTES_PER_ELEMENT);
    copy.set(payload.subarray(e.offset, e.offset + copy.length));
    return [e.name, new Type(copy.buffer)];
  }));
  return { meta: h.meta, arrays };
}
