// A process-wide pool for the CPU backend: the caller plus (threads - 1) workers run the tasks of
// one parallel_for. Nested or concurrent calls run serially in the caller instead of waiting.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>

namespace wnlstm::cpu {

int num_threads();
// Runs fn(task) for task in [0, tasks) and returns when all are done. Exceptions thrown by fn
// are rethrown in the caller (the first one).
void parallel_for(int tasks, const std::function<void(int)>& fn);

// A team: threads that run at the same time and may wait for each other with sync(), so a loop of
// short dependent phases (the steps of a sequence) costs one dispatch instead of one per phase.
class Team {
 public:
  struct Shared;
  Team(int rank, int size, Shared* shared) : rank(rank), size(size), shared_(shared) {}
  const int rank, size;
  // Returns when every member has called it (as often). If a member failed, the others leave with an
  // internal exception that parallel_team() absorbs, and the member's own error is rethrown.
  void sync();

 private:
  Shared* shared_;
};

// Runs fn on a team of min(wanted, threads) members, all at once; on one member (the caller alone) when
// the pool is busy (nested or concurrent calls). fn must split its work by team.size.
void parallel_team(int wanted, const std::function<void(Team&)>& fn);

}  // namespace wnlstm::cpu
