#pragma once
// The fast CPU path's worker threads. A parallel loop splits its task indices in one contiguous
// range per thread; each thread runs its own range first and then takes what is left of the
// others'. Between loops the workers spin for a bounded time (the next
// loop of a forward usually follows within microseconds) and then sleep on a condition variable,
// so idle workers never hold a core for long: a busy machine is not slowed down by them.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace effnet::cpu_fast {

class ThreadPool {
public:
    // threads >= 1 in all, the calling thread included (threads - 1 workers are started).
    explicit ThreadPool(int threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return int(workers_.size()) + 1; }

    // Calls fn(task, thread) for every task in [0, tasks) (tasks < 2^24), thread in [0, size())
    // naming the thread that runs it (for per-thread scratch). Thread t (the caller is 0) starts
    // on tasks [tasks * t / size(), tasks * (t + 1) / size()): loops that split the same data the
    // same way give each thread the rows it wrote, still in its cache; a thread that is late
    // (descheduled on a busy machine) has its tasks taken by the others. Returns when all are
    // done, without waiting for workers that got no task; rethrows the first exception a task
    // threw (the other tasks still run).
    template <typename Fn>
    void parallel_for(int64_t tasks, Fn&& fn) {
        using F = std::remove_reference_t<Fn>; // Fn is a reference when fn is an lvalue
        auto call = [](void* f, int64_t task, int thread) { (*static_cast<F*>(f))(task, thread); };
        run(tasks, call, const_cast<void*>(static_cast<const void*>(&fn)));
    }

private:
    using TaskCall = void (*)(void*, int64_t, int);
    void run(int64_t tasks, TaskCall call, void* fn);
    // Claims and runs tasks of the loop in `ticket`, its own range first, until none is left or
    // the loop is over.
    void work(uint64_t ticket, int thread);
    void worker_main(int thread);

    // The current loop as one word: generation (16 bits) | task count (24) | 0 (24), and each
    // thread's range of it: generation | end (24) | next task (24). A task is claimed by a
    // compare-and-swap on a range that keeps the generation, so a worker that wakes up late can
    // never claim a task of a finished loop; the loop's function is read only after a successful
    // claim, while run() still waits for that task.
    static constexpr int kTaskBits = 24;
    struct alignas(64) Range { // a cache line each: threads claim from their own without sharing
        std::atomic<uint64_t> word{0};
    };
    std::atomic<uint64_t> ticket_{0};
    std::unique_ptr<Range[]> ranges_; // [size()]
    std::atomic<int64_t> done_{0};    // tasks finished in the current loop
    TaskCall call_ = nullptr;
    void* fn_ = nullptr;
    std::vector<std::thread> workers_;
    std::atomic<int> sleeping_{0};
    std::atomic<bool> stop_{false};
    std::mutex mutex_;
    std::condition_variable wake_;
    std::exception_ptr error_;
};

// Denormal floats flushed to zero (and read as zero) on the calling thread while it lives: an
// operation on a denormal costs a ~100-cycle microcode assist on x86, and a layer that produces
// them (tiny activations times tiny gates) would run 20x slower. Results change only below
// 1.2e-38. Restores the thread's previous mode. No effect off x86.
class FlushDenormals {
public:
    FlushDenormals();
    ~FlushDenormals();
    FlushDenormals(const FlushDenormals&) = delete;
    FlushDenormals& operator=(const FlushDenormals&) = delete;

private:
    unsigned saved_ = 0;
};

// The CPUs this process may run on (sched_getaffinity), at least 1.
int available_cpus();

} // namespace effnet::cpu_fast
