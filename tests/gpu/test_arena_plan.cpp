// The activation arena planner (host-only: runs with or without a GPU).
#include <catch2/catch.hpp>

#include <random>

#include "libeffnet/cuda/arena_plan.hpp"

using effnet::cuda::ArenaPlan;

TEST_CASE("arena plan: tensors alive together never overlap, dead ones share", "[gpu][arena]") {
    std::mt19937 rng(3);
    for (int trial = 0; trial < 50; ++trial) {
        ArenaPlan plan;
        const int count = 5 + int(rng() % 40);
        std::vector<std::pair<int, int>> life;
        for (int i = 0; i < count; ++i) {
            const int first = int(rng() % 30), len = int(rng() % 6);
            life.emplace_back(first, first + len);
            plan.add("t" + std::to_string(i), 1 + rng() % 100000, first, first + len);
        }
        const size_t arena = plan.plan();
        size_t peak_live = 0;
        for (int step = 0; step < 36; ++step) {
            size_t live = 0;
            for (int i = 0; i < count; ++i)
                if (life[size_t(i)].first <= step && step <= life[size_t(i)].second) live += plan.bytes(i);
            peak_live = std::max(peak_live, live);
        }
        CHECK(arena >= peak_live);             // cannot beat the peak of live bytes
        CHECK(arena <= plan.unshared_bytes()); // never worse than no sharing
        for (int i = 0; i < count; ++i) {
            CHECK(plan.offset(i) % ArenaPlan::kAlignment == 0);
            CHECK(plan.offset(i) + plan.bytes(i) <= arena);
            for (int j = i + 1; j < count; ++j) {
                const bool together = life[size_t(i)].first <= life[size_t(j)].second &&
                                      life[size_t(j)].first <= life[size_t(i)].second;
                const bool disjoint = plan.offset(i) + plan.bytes(i) <= plan.offset(j) ||
                                      plan.offset(j) + plan.bytes(j) <= plan.offset(i);
                if (together) CHECK(disjoint);
            }
        }
    }
    // A chain a -> b -> c: a and c may share, b may not share with either.
    ArenaPlan chain;
    const int a = chain.add("a", 1000, 0, 1), b = chain.add("b", 1000, 1, 2), c = chain.add("c", 1000, 2, 3);
    CHECK(chain.plan() == 2048);
    CHECK(chain.offset(a) == chain.offset(c));
    CHECK(chain.offset(b) != chain.offset(a));
}
