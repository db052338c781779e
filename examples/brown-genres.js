#!/usr/bin/env node
// Genre classification of Brown corpus passages (the corpus ships with wnlstm): each of the 500 files is
// cut into passages of 100 words, labelled with the file's genre (15: press reportage, religion, ...,
// humor); files, not passages, are split 70/15/15 (shuffled with seed 1), so no file is on both sides. A
// word-level LSTM with weight normalization and without, beside naive Bayes on the same words. One command:
//   node examples/brown-genres.js [--out results/brown-genres] [--epochs N] [--seeds N]
// Then `node examples/brown-genres.js --serve [--port 8080]` serves the model: POST text to /classify.
'use strict';
const { parseArgs } = require('node:util');
const { loadBrown } = require('wnlstm');
const { Vocabulary, shuffled, trainArms, serve, words } = require('./text');

const { values: args } = parseArgs({ options: {
  out: { type: 'string', default: 'results/brown-genres' }, files: { type: 'string', default: '0' },
  epochs: { type: 'string', default: '10' }, seeds: { type: 'string', default: '3' },
  serve: { type: 'boolean', default: false }, port: { type: 'string', default: '8080' },
} });
const PASSAGE = 100;

if (args.serve) {
  serve(args.out, Number(args.port));
} else {
  const docs = loadBrown(), genres = [...new Set(docs.map((d) => d.name[1]))].sort();
  const limit = Number(args.files), order = shuffled(docs.length, 1).slice(0, limit > 0 ? limit : docs.length);
  const nTest = Math.round(order.length * 0.15), nTrain = order.length - 2 * nTest;
  const passages = (files) => files.flatMap((i) => {
    const ws = words(docs[i].text), genre = genres.indexOf(docs[i].name[1]);
    return Array.from({ length: Math.floor(ws.length / PASSAGE) }, (_, k) => ({ words: ws.slice(k * PASSAGE, (k + 1) * PASSAGE), genre }));
  });
  const train = passages(order.slice(0, nTrain)), valid = passages(order.slice(nTrain, nTrain + nTest)), test = passages(order.slice(nTrain + nTest));
  const vocab = Vocabulary.build(train.map((p) => p.words), 10000, PASSAGE);
  const part = (ps) => ({ x: ps.map((p) => vocab.encode(p.words)), y: ps.map((p) => p.genre) });
  trainArms({
    out: args.out, title: 'Brown corpus: genre of a 100-word passage (15 genres)', classes: genres.length, vocab, seeds: Number(args.seeds),
    data: { train: part(train), valid: part(valid), test: part(test) },
    config: { input: { vocabSize: 10000, embeddingSize: 32 }, units: 64, dropout: 0.5 },
    fit: { epochs: Number(args.epochs), batchSize: 32, learningRate: 2e-3, earlyStopping: { patience: 2, restoreBestWeights: true } },
    command: `node examples/brown-genres.js ${process.argv.slice(2).join(' ')}`.trim(),
  });
}
