// The worker thread behind trainAsync(): runs train() and posts progress and the result back.
import { parentPort, workerData } from 'node:worker_threads';
import { train, TrainOptions } from './train';

try {
  const result = train(workerData as Partial<TrainOptions>, (progress) => {
    if (progress.validLoss !== undefined || progress.step % 50 === 0 || progress.step === progress.steps) parentPort!.postMessage({ progress });
  });
  parentPort!.postMessage({ result });
} catch (err) {
  parentPort!.postMessage({ error: { message: (err as Error).message, code: (err as { code?: string }).code } });
}
