// Checkpoint files: a versioned header (JSON) and the arrays, with a SHA-256 of the arrays; written to a
// temporary file and renamed, so a crash never leaves a partial checkpoint under the real name.
//   bytes 0-7 "WNLSTMCK" | uint32 LE version | uint32 LE header length | header JSON | arrays (8-aligned)
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { wnlstmError } from './errors';

const MAGIC = 'WNLSTMCK';
const VERSION = 1;
type AnyArray = Float32Array | Float64Array | Int32Array;
const TYPES = { float32: Float32Array, float64: Float64Array, int32: Int32Array } as const;
type TypeName = keyof typeof TYPES;

export interface Checkpoint { meta: unknown; arrays: Record<string, AnyArray> }

function typeName(a: AnyArray): TypeName {
  return a instanceof Float64Array ? 'float64' : a instanceof Int32Array ? 'int32' : 'float32';
}

/** saveCheckpoint() with the file I/O off the main thread. */
export async function saveCheckpointAsync(file: string, checkpoint: Checkpoint): Promise<void> {
  await fs.promises.mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.tmp-${process.pid}-${Date.now()}`;
  const handle = await fs.promises.open(tmp, 'w');
  try {
    await handle.writeFile(encode(checkpoint));
    await handle.sync();
  } finally {
    await handle.close();
  }
  await fs.promises.rename(tmp, file);
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

export function saveCheckpoint(file: string, checkpoint: Checkpoint): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = fs.openSync(tmp, 'w');
  try {
    fs.writeSync(fd, encode(checkpoint));
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
}

function encode({ meta, arrays }: Checkpoint): Buffer {
  const entries: { name: string; type: TypeName; offset: number; length: number }[] = [];
  let offset = 0;
  for (const [name, a] of Object.entries(arrays)) {
    entries.push({ name, type: typeName(a), offset, length: a.length });
    offset += Math.ceil(a.byteLength / 8) * 8;
  }
  const payload = Buffer.alloc(offset);
  for (const [i, a] of Object.values(arrays).entries()) {
    Buffer.from(a.buffer, a.byteOffset, a.byteLength).copy(payload, entries[i].offset);
  }
  const sha256 = crypto.createHash('sha256').update(payload).digest('hex');
  const header = Buffer.from(JSON.stringify({ format: 'wnlstm-checkpoint', version: VERSION, sha256, meta, arrays: entries }));
  const prefix = Buffer.alloc(16);
  prefix.write(MAGIC, 0, 'latin1');
  prefix.writeUInt32LE(VERSION, 8);
  prefix.writeUInt32LE(header.length, 12);
  const pad = Buffer.alloc((8 - ((16 + header.length) % 8)) % 8);
  return Buffer.concat([prefix, header, pad, payload]);
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

function decode(file: string, data: Buffer): Checkpoint {
  const bad = (why: string) => wnlstmError('ERR_WNLSTM_CHECKPOINT', `${file} is not a valid wnlstm checkpoint: ${why}`);
  if (data.length < 16 || data.toString('latin1', 0, 8) !== MAGIC) throw bad('wrong magic bytes');
  const version = data.readUInt32LE(8), length = data.readUInt32LE(12);
  if (version !== VERSION) throw bad(`version ${version}, this wnlstm reads version ${VERSION}`);
  if (16 + length > data.length) throw bad('truncated header');
  let header: { sha256: string; meta: unknown; arrays: { name: string; type: TypeName; offset: number; length: number }[] };
  try {
    header = JSON.parse(data.toString('utf8', 16, 16 + length));
  } catch {
    throw bad('corrupt header');
  }
  const start = 16 + length + ((8 - ((16 + length) % 8)) % 8);
  const payload = data.subarray(start);
  if (crypto.createHash('sha256').update(payload).digest('hex') !== header.sha256) throw bad('checksum mismatch (truncated or corrupted)');
  const arrays: Record<string, AnyArray> = {};
  for (const e of header.arrays) {
    const Type = TYPES[e.type];
    if (!Type || e.offset + e.length * Type.BYTES_PER_ELEMENT > payload.length) throw bad(`array ${e.name} out of bounds`);
    const copy = new Uint8Array(e.length * Type.BYTES_PER_ELEMENT);
    copy.set(payload.subarray(e.offset, e.offset + copy.length));
    arrays[e.name] = new Type(copy.buffer);
  }
  return { meta: header.meta, arrays };
}
