#include "libeffnet/cuda/arena_plan.hpp"

#include <algorithm>
#include <numeric>

#include "effnet/error.hpp"

namespace effnet::cuda {
namespace {
size_t align_up(size_t v, size_t a) {
    return (v + a - 1) / a * a;
}
} // namespace

int ArenaPlan::add(const std::string& name, size_t bytes, int first, int last) {
    EFFNET_CHECK(!planned_, "arena plan: tensor " + name + " added after planning");
    EFFNET_CHECK(first <= last, "arena plan: tensor " + name + " dies before it is born");
    tensors_.push_back(Entry{name, bytes, first, last, 0});
    return int(tensors_.size()) - 1;
}

void ArenaPlan::touch(int id, int step) {
    EFFNET_CHECK(!planned_, "arena plan: touched after planning");
    Entry& e = tensors_.at(size_t(id));
    e.first = std::min(e.first, step);
    e.last = std::max(e.last, step);
}

size_t ArenaPlan::plan() {
    std::vector<size_t> order(tensors_.size());
    std::iota(order.begin(), order.end(), size_t(0));
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return tensors_[a].bytes > tensors_[b].bytes; });
    std::vector<size_t> placed;
    arena_bytes_ = 0;
    for (size_t id : order) {
        Entry& t = tensors_[id];
        const size_t size = align_up(std::max<size_t>(t.bytes, 1), kAlignment);
        // Intervals [offset, offset+size) of placed tensors alive at the same time, by offset.
        std::vector<std::pair<size_t, size_t>> busy;
        for (size_t p : placed) {
            const Entry& o = tensors_[p];
            if (o.first <= t.last && t.first <= o.last)
                busy.emplace_back(o.offset, o.offset + align_up(std::max<size_t>(o.bytes, 1), kAlignment));
        }
        std::sort(busy.begin(), busy.end());
        size_t candidate = 0;
        for (const auto& [begin, end] : busy) {
            if (candidate + size <= begin) break; // fits in the gap before this one
            candidate = std::max(candidate, end);
        }
        t.offset = candidate;
        arena_bytes_ = std::max(arena_bytes_, candidate + size);
        placed.push_back(id);
    }
    planned_ = true;
    return arena_bytes_;
}

size_t ArenaPlan::offset(int id) const {
    EFFNET_CHECK(planned_, "arena plan: offset asked before planning");
    return tensors_.at(size_t(id)).offset;
}

size_t ArenaPlan::unshared_bytes() const {
    size_t s = 0;
    for (const Entry& e : tensors_) s += align_up(std::max<size_t>(e.bytes, 1), kAlignment);
    return s;
}

} // namespace effnet::cuda
