// A process-wide pool for the CPU backend: the caller plus (threads - 1) workers run the tasks of
// one parallel_for. Nested or concurrent calls run serially in the caller instead of waiting.
#pragma once

#include <cstdint>
#include <functional>

namespace wnlstm::cpu {

int num_threads();
// Runs fn(task) for task in [0, tasks) and returns when all are done. Exceptions thrown by fn
// are rethrown in the caller (the first one).
void parallel_for(int tasks, const std::function<void(int)>& fn);

}  // namespace wnlstm::cpu
