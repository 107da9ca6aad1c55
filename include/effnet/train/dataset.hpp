#pragma once
// Image-folder dataset: root/<class>/<file> with an image extension (effnet::has_image_extension:
// jpg, jpeg, png, bmp, tga); classes are the sorted sub-folder names; samples sorted by class,
// then file name. DataLoader decodes its batches on worker threads, one batch ahead, into its own
// tensors or (set_destinations) straight into two buffers the caller owns, used in turn.
// The scan follows symbolic links but never in a loop: a link back to a folder it is in, to the
// root or into another class folder is skipped with a warning; a file reached by several paths
// counts once (by device and inode); a file under two classes is an error.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "effnet/tensor.hpp"
#include "effnet/train/augment.hpp"

namespace effnet::train {

struct Sample {
    std::string path;
    int64_t label = 0;
    uint64_t device = 0, inode = 0; // the file's identity, whatever path reaches it
};

struct ImageFolder {
    std::string root;
    std::vector<std::string> classes;
    std::vector<Sample> samples;
    // Legal but surely unintended (skipped links, one class, images beside the class folders):
    // the library has no output of its own, so the caller shows them.
    std::vector<std::string> warnings;
    // The sample that is the file at `path` (however spelled: links, relative paths), or null.
    const Sample* find_file(const std::string& path) const;
    // Throws effnet::Error when root is not a directory, has no class folders, or no images.
    static ImageFolder scan(const std::string& root);
    // The same scan for a second split, using `classes` (every class folder must exist in it).
    static ImageFolder scan(const std::string& root, const std::vector<std::string>& classes);
};

struct Batch {
    Tensor images;                   // [n, 3, R, R], n <= batch size (unreadable images removed);
                                     // empty when the images lie in `staged`
    std::vector<int64_t> labels;     // n
    std::vector<int64_t> indices;    // dataset index of each kept sample
    int64_t skipped = 0;             // unreadable images in this batch
    std::vector<std::string> errors; // their messages
    // Set when the loader decoded into a caller's buffer (DataLoader::set_destinations): the n
    // images, [n, 3, R, R] contiguous from there; valid until the loader's next next() or
    // start_epoch().
    float* staged = nullptr;
    const float* image_data() const { return staged ? staged : images.ptr(); }
};

struct LoaderOptions {
    int batch_size = 32;
    int resolution = 224;
    int workers = 2;       // decoding threads
    bool train = true;     // augment + shuffle (train) or resize/center-crop in order (val)
    bool drop_last = true; // train only: full batches (when the dataset holds at least one)
    int val_resize = 0;    // 0: round(resolution / 0.875)
    std::string val_interpolation = "bilinear"; // the weights' preprocessing
    uint64_t seed = 0;
    Normalize normalize;
    // Data-parallel runs: batch_size is the global batch (every rank's images together); this
    // loader decodes only rank `shard_index`'s part of each batch (shard_range). 1, 0: all of it.
    int shard_count = 1;
    int shard_index = 0;
    // Decode batch k + 1 while batch k is in use (one batch ahead). false: each batch is decoded
    // only when next() asks for it (the sequential path; the same batches, bit for bit).
    bool prefetch = true;
};

// Sample order of one epoch: a permutation from (seed, epoch) for training, identity otherwise.
std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch, bool shuffle);

// Batches in an epoch of n samples at (global) batch size b: with drop_last (training) n / b when
// n >= b (the remainder n % b is not used that epoch), else one batch of all n; without it
// ceil(n / b). The single-process rule; a data-parallel run applies it to the global batch.
int64_t batches_in_epoch(int64_t n, int64_t batch_size, bool drop_last);

// Rank `rank` of `world`'s part of a global batch of `count` samples: the positions
// [begin, end) of the batch, contiguous and in rank order, sizes differing by at most one
// (floor(rank * count / world) .. floor((rank + 1) * count / world)). A full batch of world * b
// gives every rank exactly b; world 1 takes the whole batch.
struct ShardRange {
    int64_t begin = 0, end = 0;
    int64_t size() const { return end - begin; }
};
ShardRange shard_range(int64_t count, int world, int rank);

// The dataset indices rank `rank` of `world` trains on in one epoch, batch by batch: every rank
// builds the same epoch_order(n, seed, epoch, shuffle), cuts it into batches_in_epoch(n,
// global_batch, drop_last) global batches of global_batch samples (the last one shorter without
// drop_last or when n < global_batch), and takes its shard_range of each. The ranks' shards are
// disjoint, together they are exactly the samples a single process at batch global_batch uses,
// and at world 1 they are its batches.
std::vector<std::vector<int64_t>> epoch_shard(int64_t n, uint64_t seed, int64_t epoch, bool shuffle,
                                              int64_t global_batch, bool drop_last, int world, int rank);

// Decodes batches on a pool of worker threads, one batch ahead of the consumer (at most two
// batches in memory). Every sample's augmentation draws come from (seed, epoch, dataset index),
// so the batches do not depend on the thread count, on prefetching or on the destination. Keeps
// a reference to the dataset, which must outlive it.
class DataLoader {
public:
    DataLoader(const ImageFolder& dataset, const LoaderOptions& options);
    ~DataLoader();
    DataLoader(const DataLoader&) = delete;
    DataLoader& operator=(const DataLoader&) = delete;

    int64_t batches_per_epoch() const;
    // Starts (or restarts) an epoch at batch `first_batch`; the next batches are prefetched.
    void start_epoch(int64_t epoch, int64_t first_batch = 0);
    // True while the epoch has batches left.
    bool has_next() const;
    // The next batch (waits for its decoding). Throws when the epoch is over.
    Batch next();
    const LoaderOptions& options() const;
    // From now on, batches of at most `capacity_images` images are decoded and preprocessed
    // straight into a caller's buffer of capacity_images * 3 * R * R floats: the batches alternate
    // between `first` and `second` (Batch::staged), so the one returned stays untouched while the
    // next is decoded into the other. Larger batches (and null buffers: back to the default)
    // use the loader's own tensors. The buffers must outlive the loader or the next call.
    // Batches already prefetched are decoded again.
    void set_destinations(float* first, float* second, int64_t capacity_images);

private:
    struct Impl; // the worker threads, their queue and the batches in flight
    std::unique_ptr<Impl> impl_;
};

} // namespace effnet::train
