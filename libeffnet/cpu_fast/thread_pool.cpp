#include "cpu_fast/thread_pool.hpp"

#include <sched.h>

#include <algorithm>
#include <chrono>

#include "effnet/error.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define EFFNET_CPU_RELAX() _mm_pause()
#else
#define EFFNET_CPU_RELAX() std::this_thread::yield()
#endif

namespace effnet::cpu_fast {

namespace {
// How long a worker spins for the next loop before it sleeps. The loops of one forward follow
// each other within a few microseconds; a sleeping worker takes ~10-50 us to wake up.
constexpr auto kSpin = std::chrono::microseconds(200);

constexpr uint64_t kMask = (uint64_t(1) << 24) - 1;
uint64_t generation_of(uint64_t t) {
    return t >> 48;
}
// The middle field: a ticket's task count, or the end of a thread's range.
int64_t tasks_of(uint64_t t) {
    return int64_t((t >> 24) & kMask);
}
int64_t next_of(uint64_t t) {
    return int64_t(t & kMask);
}
} // namespace

#if defined(__x86_64__) || defined(__i386__)
FlushDenormals::FlushDenormals() : saved_(_mm_getcsr()) {
    _mm_setcsr(saved_ | 0x8040); // FTZ (bit 15) and DAZ (bit 6)
}
FlushDenormals::~FlushDenormals() {
    _mm_setcsr(saved_);
}
#else
FlushDenormals::FlushDenormals() = default;
FlushDenormals::~FlushDenormals() = default;
#endif

int available_cpus() {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        const int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
    const unsigned n = std::thread::hardware_concurrency();
    return n > 0 ? int(n) : 1;
}

ThreadPool::ThreadPool(int threads) : ranges_(new Range[size_t(std::max(threads, 1))]) {
    for (int t = 1; t < threads; ++t) workers_.emplace_back([this, t] { worker_main(t); });
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_.store(true);
    }
    wake_.notify_all();
    for (std::thread& w : workers_) w.join();
}

void ThreadPool::work(uint64_t ticket, int thread) {
    const uint64_t generation = generation_of(ticket);
    const int n = size();
    for (int i = 0; i < n; ++i) { // its own range, then the others'
        std::atomic<uint64_t>& range = ranges_[size_t((thread + i) % n)].word;
        uint64_t w = range.load(std::memory_order_acquire);
        for (;;) {
            if (generation_of(w) != generation) return; // a later loop: this one is over
            if (next_of(w) >= tasks_of(w)) break;       // the range is taken
            if (!range.compare_exchange_weak(w, w + 1, std::memory_order_acq_rel))
                continue; // another thread claimed it: w now holds the current value
            try {
                call_(fn_, next_of(w), thread);
            } catch (...) {
                std::lock_guard<std::mutex> lock(mutex_);
                if (!error_) error_ = std::current_exception();
            }
            done_.fetch_add(1, std::memory_order_acq_rel);
            w += 1;
        }
    }
}

void ThreadPool::run(int64_t tasks, TaskCall call, void* fn) {
    if (tasks <= 0) return;
    if (workers_.empty() || tasks == 1) {
        for (int64_t t = 0; t < tasks; ++t) call(fn, t, 0);
        return;
    }
    EFFNET_CHECK(uint64_t(tasks) <= kMask, "ThreadPool: too many tasks in one loop");
    call_ = call;
    fn_ = fn;
    error_ = nullptr;
    done_.store(0, std::memory_order_relaxed);
    const uint64_t generation = (generation_of(ticket_.load()) + 1) & 0xffff;
    const uint64_t n = uint64_t(size());
    for (uint64_t t = 0; t < n; ++t) { // [begin, end) of thread t, published by the ticket below
        const uint64_t begin = uint64_t(tasks) * t / n, end = uint64_t(tasks) * (t + 1) / n;
        ranges_[t].word.store(generation << 48 | end << 24 | begin, std::memory_order_relaxed);
    }
    const uint64_t ticket = generation << 48 | uint64_t(tasks) << 24;
    ticket_.store(ticket); // seq_cst with sleeping_: a worker either sees it or is woken
    if (sleeping_.load() > 0) {
        std::lock_guard<std::mutex> lock(mutex_); // a worker between its check and its wait sees it
        wake_.notify_all();
    }
    work(ticket, 0);
    for (int spins = 0; done_.load(std::memory_order_acquire) < tasks; ++spins) {
        if (spins < 4096)
            EFFNET_CPU_RELAX();
        else
            std::this_thread::yield(); // the last tasks' thread may be waiting for this core
    }
    if (error_) std::rethrow_exception(error_);
}

void ThreadPool::worker_main(int thread) {
    const FlushDenormals flush; // workers only ever run the fast path's kernels
    uint64_t seen = ticket_.load() >> 48;
    for (;;) {
        // Spin for the next loop, then sleep.
        const auto deadline = std::chrono::steady_clock::now() + kSpin;
        uint64_t ticket = ticket_.load(std::memory_order_acquire);
        for (int spins = 1; generation_of(ticket) == seen && !stop_.load(std::memory_order_relaxed);
             ++spins) {
            EFFNET_CPU_RELAX();
            if (spins % 64 == 0 && std::chrono::steady_clock::now() > deadline) {
                std::unique_lock<std::mutex> lock(mutex_);
                sleeping_.fetch_add(1);
                wake_.wait(lock, [&] { return generation_of(ticket_.load()) != seen || stop_.load(); });
                sleeping_.fetch_sub(1);
            }
            ticket = ticket_.load(std::memory_order_acquire);
        }
        if (stop_.load()) return;
        seen = generation_of(ticket);
        work(ticket, thread);
    }
}

} // namespace effnet::cpu_fast
