#include "thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace wnlstm::cpu {

struct Team::Shared {
  explicit Shared(int size) : size(size) {}
  const int size;
  std::atomic<int> arrived{0}, sleepers{0};
  std::atomic<uint64_t> phase{0};
  std::atomic<bool> broken{false};
  std::mutex mutex;  // for sleepers, and for the first error
  std::condition_variable wake;
  std::exception_ptr error;

  void wake_sleepers() {
    if (sleepers.load() == 0) return;
    std::lock_guard<std::mutex> lock(mutex);
    wake.notify_all();
  }
};

namespace {
constexpr int kSpinMicros = 200;  // longer than a typical imbalance between members, shorter than a step of M
struct TeamAborted {};  // thrown in members waiting on a team whose other member failed
}  // namespace

void Team::sync() {
  if (!shared_ || size == 1) return;
  Shared& s = *shared_;
  const uint64_t phase = s.phase.load();
  if (s.arrived.fetch_add(1) == size - 1) {
    s.arrived.store(0);
    s.phase.fetch_add(1);
    s.wake_sleepers();
    return;
  }
  // Spin first: a partner that is running arrives within microseconds. Then sleep, so that a partner
  // the OS has descheduled (more threads than free cores) gets the core instead of waiting for a spinner.
  auto done = [&] { return s.phase.load() != phase || s.broken.load(); };
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
  for (int spin = 1; !done(); ++spin) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    if (spin % 64 == 0 && std::chrono::steady_clock::now() > deadline) break;
  }
  if (!done()) {
    std::unique_lock<std::mutex> lock(s.mutex);
    s.sleepers.fetch_add(1);  // before the check in wait(): the last arrival then sees it and notifies
    s.wake.wait(lock, done);
    s.sleepers.fetch_sub(1);
  }
  if (s.phase.load() == phase) throw TeamAborted{};  // woken by a failed member
}

namespace {

class Pool {
 public:
  explicit Pool(int threads) : threads_(threads) {
    for (int i = 1; i < threads_; ++i) std::thread([this] { worker(); }).detach();
  }
  int threads() const { return threads_; }

  void run(int tasks, const std::function<void(int)>& fn) {
    std::unique_lock<std::mutex> busy(run_mutex_, std::try_to_lock);
    if (!busy.owns_lock() || threads_ == 1 || tasks == 1) {  // nested, concurrent or trivial
      for (int t = 0; t < tasks; ++t) fn(t);
      return;
    }
    dispatch(tasks, fn);
  }

  void team(int wanted, const std::function<void(Team&)>& fn) {
    std::unique_lock<std::mutex> busy(run_mutex_, std::try_to_lock);
    const int size = busy.owns_lock() ? std::min(wanted, threads_) : 1;
    if (size <= 1) {
      Team alone(0, 1, nullptr);
      return fn(alone);
    }
    // Each member needs its own thread (they wait for each other): size <= threads_, and a thread
    // that claimed a member cannot claim another before every member has started.
    Team::Shared shared(size);
    dispatch(size, [&](int rank) {
      Team member(rank, size, &shared);
      try {
        fn(member);
      } catch (TeamAborted&) {
      } catch (...) {
        {
          std::lock_guard<std::mutex> lock(shared.mutex);
          if (!shared.error) shared.error = std::current_exception();
          shared.broken.store(true);
        }
        shared.wake.notify_all();
      }
    });
    if (shared.error) std::rethrow_exception(shared.error);
  }

 private:
  void dispatch(int tasks, const std::function<void(int)>& fn) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      fn_ = &fn;
      tasks_ = tasks;
      error_ = nullptr;
      // next_ opens the tasks, so it goes last: a late worker of the previous call claims nothing
      // before pending_ and tasks_ are set.
      pending_.store(tasks);
      next_.store(0);
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    drain();
    // Spin briefly: steps are short, and a sleeping caller costs more than the wait.
    for (int spin = 0; pending_.load(std::memory_order_acquire) != 0; ++spin)
      if (spin > 4096) std::this_thread::yield();
    std::lock_guard<std::mutex> lock(mutex_);
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

  void drain() {
    for (int t; (t = next_.fetch_add(1)) < tasks_;) {
      try {
        (*fn_)(t);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex_);
        if (!error_) error_ = std::current_exception();
      }
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  void worker() {
    uint64_t seen = 0;
    for (;;) {
      // Spin a little before sleeping: the next step usually arrives within microseconds.
      for (int spin = 0; spin < 20000 && generation_.load(std::memory_order_acquire) == seen; ++spin) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
      }
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return generation_.load() != seen; });
      seen = generation_.load();
      if (!fn_) continue;
      lock.unlock();
      drain();
    }
  }

  const int threads_;
  std::mutex run_mutex_, mutex_, error_mutex_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> next_{0}, pending_{0};
  std::atomic<int> tasks_{0};
  const std::function<void(int)>* fn_ = nullptr;
  std::exception_ptr error_;
};

int configured_threads() {
  if (const char* env = std::getenv("WNLSTM_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n >= 1 && n <= 256) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

// Never destroyed: detached workers may outlive static destructors at process exit.
Pool& pool() {
  static Pool* instance = new Pool(configured_threads());
  return *instance;
}

}  // namespace

int num_threads() { return pool().threads(); }
void parallel_for(int tasks, const std::function<void(int)>& fn) {
  if (tasks > 0) pool().run(tasks, fn);
}
void parallel_team(int wanted, const std::function<void(Team&)>& fn) { pool().team(std::max(wanted, 1), fn); }

}  // namespace wnlstm::cpu
