#include "thread_pool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace wnlstm::cpu {
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

 private:
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

}  // namespace wnlstm::cpu
