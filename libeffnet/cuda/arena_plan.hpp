#pragma once
// Offsets for every activation in one arena, by liveness: tensors whose step ranges
// [first, last] overlap never share bytes. Greedy: largest first, each at the lowest aligned
// offset that clears every already-placed tensor it overlaps in time. Host-only.
#include <cstddef>
#include <string>
#include <vector>

namespace effnet::cuda {

class ArenaPlan {
public:
    static constexpr size_t kAlignment = 256;

    // Registers a tensor live from step `first` to step `last` inclusive; returns its id.
    int add(const std::string& name, size_t bytes, int first, int last);
    // Extends a tensor's lifetime to cover `step` (a later use).
    void touch(int id, int step);
    // Assigns offsets; returns the arena size in bytes.
    size_t plan();

    size_t offset(int id) const;
    size_t bytes(int id) const { return tensors_.at(size_t(id)).bytes; }
    const std::string& name(int id) const { return tensors_.at(size_t(id)).name; }
    int size() const { return int(tensors_.size()); }
    size_t arena_bytes() const { return arena_bytes_; }
    // Sum of all tensor sizes: what the arena would need without reuse.
    size_t unshared_bytes() const;

private:
    struct Entry {
        std::string name;
        size_t bytes = 0;
        int first = 0, last = 0;
        size_t offset = 0;
    };
    std::vector<Entry> tensors_;
    size_t arena_bytes_ = 0;
    bool planned_ = false;
};

} // namespace effnet::cuda
