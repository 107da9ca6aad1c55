// Data-parallel shards of an epoch (train::epoch_shard, shard_range): for world sizes 1..8 and
// dataset sizes 0..100 (and several per-rank batches), the ranks' shards are disjoint, together
// exactly the samples a single process at the global batch uses (every image once per epoch,
// the remainder rule unchanged), balanced (a full global batch gives every rank exactly its
// per-rank batch; any batch's shards differ by at most one image), and world 1 is today's order.
#include <catch2/catch.hpp>

#include <algorithm>
#include <set>
#include <vector>

#include "effnet/error.hpp"
#include "dist/buckets.hpp"
#include "effnet/train/dataset.hpp"

using namespace effnet::train;

namespace {

// The single-process loader's batches before sharding existed: the epoch order cut into
// batches of b, drop_last (training) keeping n / b full batches when n >= b.
std::vector<std::vector<int64_t>> single_process_batches(int64_t n, uint64_t seed, int64_t epoch,
                                                         bool shuffle, int64_t b, bool drop_last) {
    const std::vector<int64_t> order = epoch_order(n, seed, epoch, shuffle);
    const int64_t batches = (drop_last && n >= b) ? n / b : (n + b - 1) / b;
    std::vector<std::vector<int64_t>> out;
    for (int64_t i = 0; i < batches; ++i)
        out.emplace_back(order.begin() + i * b, order.begin() + std::min(n, (i + 1) * b));
    return out;
}

} // namespace

TEST_CASE("shard_range splits a batch contiguously, in rank order, balanced", "[shard]") {
    for (int world = 1; world <= 8; ++world)
        for (int64_t count = 0; count <= 40; ++count) {
            int64_t next = 0;
            for (int r = 0; r < world; ++r) {
                const ShardRange s = shard_range(count, world, r);
                REQUIRE(s.begin == next);
                REQUIRE(s.size() >= count / world);
                REQUIRE(s.size() <= (count + world - 1) / world);
                next = s.end;
            }
            REQUIRE(next == count);
        }
    REQUIRE(shard_range(8 * 5, 8, 3).begin == 15);
    REQUIRE(shard_range(8 * 5, 8, 3).size() == 5);
    REQUIRE_THROWS_AS(shard_range(4, 2, 2), effnet::Error);
    REQUIRE_THROWS_AS(shard_range(4, 0, 0), effnet::Error);
}

TEST_CASE("epoch_shard: disjoint, complete, balanced, world 1 = the single-process order", "[shard]") {
    int64_t checked = 0;
    for (const bool train : {true, false})
        for (int world = 1; world <= 8; ++world)
            for (int64_t n = 0; n <= 100; ++n)
                for (const int64_t per_rank : {int64_t(1), int64_t(3), int64_t(8)}) {
                    const int64_t global = per_rank * world;
                    const uint64_t seed = 11;
                    const int64_t epoch = n % 3;
                    const auto reference = single_process_batches(n, seed, epoch, train, global, train);
                    std::vector<std::vector<std::vector<int64_t>>> shards; // [rank][batch]
                    for (int r = 0; r < world; ++r)
                        shards.push_back(epoch_shard(n, seed, epoch, train, global, train, world, r));
                    REQUIRE(batches_in_epoch(n, global, train) == int64_t(reference.size()));
                    for (size_t b = 0; b < reference.size(); ++b) {
                        // The ranks' shards of batch b, concatenated in rank order, are the
                        // single-process batch b: disjoint and complete per batch, so per epoch.
                        std::vector<int64_t> joined;
                        int64_t smallest = global, largest = 0;
                        for (int r = 0; r < world; ++r) {
                            REQUIRE(shards[size_t(r)].size() == reference.size());
                            const auto& s = shards[size_t(r)][b];
                            joined.insert(joined.end(), s.begin(), s.end());
                            smallest = std::min<int64_t>(smallest, int64_t(s.size()));
                            largest = std::max<int64_t>(largest, int64_t(s.size()));
                        }
                        REQUIRE(joined == reference[b]);
                        REQUIRE(largest - smallest <= 1);
                        if (int64_t(reference[b].size()) == global) REQUIRE(smallest == per_rank);
                    }
                    // Every image once per epoch: all n, except the training remainder n % global
                    // (n >= global), which no rank uses that epoch, as in a single process.
                    std::set<int64_t> used;
                    int64_t total = 0;
                    for (const auto& rank : shards)
                        for (const auto& batch : rank) {
                            used.insert(batch.begin(), batch.end());
                            total += int64_t(batch.size());
                        }
                    const int64_t expected = (train && n >= global) ? n - n % global : n;
                    REQUIRE(total == expected);
                    REQUIRE(int64_t(used.size()) == expected);
                    if (world == 1) REQUIRE(shards[0] == reference);
                    ++checked;
                }
    REQUIRE(checked == 2 * 8 * 101 * 3);
}

TEST_CASE("epoch_shard: every rank builds the same permutation; epochs differ", "[shard]") {
    const auto a = epoch_shard(50, 3, 0, true, 8, true, 2, 0);
    const auto b = epoch_shard(50, 3, 1, true, 8, true, 2, 0);
    REQUIRE(a.size() == 6);
    REQUIRE(a != b);
    REQUIRE(a == epoch_shard(50, 3, 0, true, 8, true, 2, 0));
}

TEST_CASE("plan_buckets tiles the gradients in order, each bucket >= the size but the last", "[shard]") {
    const std::vector<int64_t> sizes = {1280 * 10, 10, 320 * 1280, 1280, 1280, 5, 0, 7, 100000};
    for (const size_t bytes : {size_t(0), size_t(4), size_t(4096), size_t(1) << 20, size_t(1) << 30}) {
        const auto buckets = effnet::dist::plan_buckets(sizes, bytes);
        size_t next = 0;
        int64_t offset = 0;
        for (size_t k = 0; k < buckets.size(); ++k) {
            const auto& b = buckets[k];
            REQUIRE(b.first == next);
            REQUIRE(b.last > b.first);
            REQUIRE(b.offset == offset);
            int64_t count = 0;
            for (size_t i = b.first; i < b.last; ++i) count += sizes[i];
            REQUIRE(b.count == count);
            if (k + 1 < buckets.size()) REQUIRE(size_t(b.count) * 4 >= bytes);
            next = b.last;
            offset += count;
        }
        REQUIRE(next == sizes.size());
    }
    REQUIRE(effnet::dist::plan_buckets({}, 4096).empty());
    REQUIRE(effnet::dist::plan_buckets(sizes, size_t(1) << 30).size() == 1);
}
