// The fast CPU path's thread pool (libeffnet/cpu_fast/thread_pool.hpp): every task of a loop
// runs exactly once on a thread index in [0, size()), whatever the split of tasks over threads
// (fewer tasks than threads, uneven ranges, tasks of uneven length so that threads take what is
// left of the others' ranges); the first exception comes back and the other tasks still run;
// loops past the 16-bit generation counter's wrap still run every task once.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>
#include <vector>

#include "cpu_fast/thread_pool.hpp"

using effnet::cpu_fast::ThreadPool;

namespace {

// Runs one loop of `tasks` and checks that each ran once on a valid thread. Task t sleeps when
// slow(t): those ranges finish late and the other threads take their remaining tasks.
template <typename Slow>
void check_loop(ThreadPool& pool, int64_t tasks, Slow slow) {
    std::vector<std::atomic<int>> runs(size_t(tasks < 1 ? 1 : tasks));
    std::atomic<int> bad_thread{0};
    pool.parallel_for(tasks, [&](int64_t t, int thread) {
        if (thread < 0 || thread >= pool.size()) bad_thread.fetch_add(1);
        if (slow(t)) std::this_thread::sleep_for(std::chrono::microseconds(200));
        runs[size_t(t)].fetch_add(1);
    });
    REQUIRE(bad_thread.load() == 0);
    for (int64_t t = 0; t < tasks; ++t) REQUIRE(runs[size_t(t)].load() == 1);
}

} // namespace

TEST_CASE("thread pool runs every task once on a valid thread", "[cpu_session][thread_pool]") {
    for (int threads : {1, 2, 3, 4}) {
        ThreadPool pool(threads);
        REQUIRE(pool.size() == threads);
        for (int64_t tasks : {0, 1, 2, 3, 5, 7, 64, 1000}) {
            INFO(threads << " threads, " << tasks << " tasks");
            check_loop(pool, tasks, [](int64_t) { return false; });
            check_loop(pool, tasks, [](int64_t t) { return t == 0; });          // thread 0's range is late
            check_loop(pool, tasks, [&](int64_t t) { return t >= tasks / 2; }); // the last ranges are late
        }
    }
}

TEST_CASE("thread pool returns the first exception and still runs the other tasks",
          "[cpu_session][thread_pool]") {
    ThreadPool pool(3);
    std::atomic<int> ran{0};
    REQUIRE_THROWS_AS(pool.parallel_for(40,
                                        [&](int64_t t, int) {
                                            ran.fetch_add(1);
                                            if (t % 7 == 3) throw std::runtime_error("task failed");
                                        }),
                      std::runtime_error);
    REQUIRE(ran.load() == 40);
    check_loop(pool, 40, [](int64_t) { return false; }); // the pool still works
}

TEST_CASE("thread pool loops past the generation counter's wrap", "[cpu_session][thread_pool]") {
    ThreadPool pool(2);
    std::atomic<int64_t> sum{0};
    const int loops = 70000; // > 2^16 generations
    for (int i = 0; i < loops; ++i) pool.parallel_for(3, [&](int64_t t, int) { sum.fetch_add(t + 1); });
    REQUIRE(sum.load() == int64_t(loops) * 6);
}
