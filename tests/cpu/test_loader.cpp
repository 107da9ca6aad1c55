// The prefetching DataLoader against the plain sequential path: over several epochs, with
// unreadable files mixed in, its batches (into its own tensors, without prefetching, or decoded
// straight into two caller buffers used in turn, as effnet-train does with the GPU trainer's
// staging buffers) are bit for bit those that decoding every sample in order on one thread gives.
// "[.timing]": images/s with and without prefetching, overlapping a simulated step.
#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include <unistd.h>

#include "effnet/image.hpp"
#include "effnet/train/augment.hpp"
#include "effnet/train/dataset.hpp"
#include "effnet/train/rng.hpp"
#include "image_folder.hpp"

using namespace effnet;
using namespace effnet::train;
namespace fs = std::filesystem;
using test::class_pixels;
using test::TempDir;
using test::write_bmp;

namespace {

// classes x per_class images of w x h (sizes varying), plus unreadable files among them.
void make_folder(const fs::path& root, int classes, int per_class, int w, int h, bool unreadable) {
    Rng rng(3);
    for (int k = 0; k < classes; ++k) {
        const fs::path dir = root / ("class" + std::to_string(k));
        fs::create_directories(dir);
        for (int i = 0; i < per_class; ++i) {
            const int iw = w + 3 * i, ih = h + 2 * k;
            write_bmp(dir / ("img" + std::to_string(10 + i) + ".bmp"), iw, ih, class_pixels(k, iw, ih, rng));
        }
    }
    if (!unreadable) return;
    std::ofstream(root / "class0" / "img15_broken.jpg") << "this is not a jpeg";
    std::ofstream(root / "class1" / "img12_empty.png");
    std::ofstream(root / "class2" / "img11_truncated.bmp") << "BM\x10\x00";
}

// One batch as the plain sequential path makes it.
struct Expected {
    std::vector<float> images;
    std::vector<int64_t> labels, indices;
    int64_t skipped = 0;
};

// Every sample of every batch of one epoch decoded in order on this thread: load_image, then
// the transform with the sample's own draws (train) or the validation transform.
std::vector<Expected> sequential_epoch(const ImageFolder& folder, const LoaderOptions& o, int64_t epoch) {
    const auto shards = epoch_shard(int64_t(folder.samples.size()), o.seed, epoch, o.train, o.batch_size,
                                    o.train && o.drop_last, o.shard_count, o.shard_index);
    const size_t image_size = size_t(3) * o.resolution * o.resolution;
    const int resize = o.val_resize ? o.val_resize : int(std::lround(o.resolution / 0.875));
    std::vector<Expected> out;
    for (const auto& indices : shards) {
        Expected e;
        for (const int64_t index : indices) {
            std::vector<float> pixels(image_size);
            try {
                const Image image = load_image(folder.samples[size_t(index)].path);
                if (o.train) {
                    Rng rng(mix_seed(o.seed, uint64_t(epoch), uint64_t(index)));
                    train_transform(image, o.resolution, rng, o.normalize, pixels.data());
                } else {
                    eval_transform(image, resize, o.resolution, o.normalize, pixels.data(),
                                   o.val_interpolation);
                }
            } catch (const std::exception&) {
                ++e.skipped;
                continue;
            }
            e.images.insert(e.images.end(), pixels.begin(), pixels.end());
            e.labels.push_back(folder.samples[size_t(index)].label);
            e.indices.push_back(index);
        }
        out.push_back(std::move(e));
    }
    return out;
}

// Bit for bit (memcmp: -0.0 and NaN payloads count).
void require_same(const Batch& got, const Expected& want, size_t image_size) {
    REQUIRE(got.labels == want.labels);
    REQUIRE(got.indices == want.indices);
    REQUIRE(got.skipped == want.skipped);
    REQUIRE(int64_t(got.errors.size()) == want.skipped);
    if (!got.staged) {
        REQUIRE(got.images.shape.size() == 4);
        REQUIRE(got.images.shape[0] == int64_t(want.labels.size()));
        REQUIRE(size_t(got.images.numel()) == want.images.size());
    } else {
        REQUIRE(got.images.numel() == 0);
    }
    REQUIRE(want.images.size() == want.labels.size() * image_size);
    REQUIRE(std::memcmp(got.image_data(), want.images.data(), want.images.size() * sizeof(float)) == 0);
}

enum class Mode { Prefetch, Sequential, Destinations };

// Runs `epochs` epochs through one loader in `mode`, comparing every batch with the sequential
// path after a simulated step (during which the loader decodes the next batch).
void check_loader(const ImageFolder& folder, LoaderOptions o, Mode mode, int64_t epochs) {
    o.prefetch = mode != Mode::Sequential;
    DataLoader loader(folder, o);
    const size_t image_size = size_t(3) * o.resolution * o.resolution;
    const int64_t capacity = o.batch_size; // a shard is never larger than the global batch
    std::vector<float> first(size_t(capacity) * image_size), second(size_t(capacity) * image_size);
    if (mode == Mode::Destinations) loader.set_destinations(first.data(), second.data(), capacity);
    int64_t skipped = 0;
    for (int64_t epoch = 0; epoch < epochs; ++epoch) {
        INFO("epoch " << epoch);
        const auto want = sequential_epoch(folder, o, epoch);
        REQUIRE(loader.batches_per_epoch() == int64_t(want.size()));
        loader.start_epoch(epoch);
        const float* previous = nullptr;
        for (size_t b = 0; b < want.size(); ++b) {
            INFO("batch " << b);
            REQUIRE(loader.has_next());
            const Batch batch = loader.next();
            std::this_thread::sleep_for(std::chrono::milliseconds(3)); // the step
            require_same(batch, want[b], image_size);
            if (mode == Mode::Destinations) {
                REQUIRE((batch.staged == first.data() || batch.staged == second.data()));
                REQUIRE(batch.staged != previous); // in turn: the next one goes to the other buffer
                previous = batch.staged;
            } else {
                REQUIRE(batch.staged == nullptr);
            }
            skipped += batch.skipped;
        }
        REQUIRE_FALSE(loader.has_next());
    }
    if (o.train && epochs >= 3) CHECK(skipped > 0); // the unreadable files were met (and counted)
}

} // namespace

TEST_CASE("prefetching loader equals the sequential path, unreadable files mixed in",
          "[train][data][loader]") {
    TempDir dir("equal");
    make_folder(dir.path, 3, 7, 20, 18, true);
    const ImageFolder folder = ImageFolder::scan(dir.path.string());
    REQUIRE(folder.samples.size() == 24);

    LoaderOptions o;
    o.batch_size = 5;
    o.resolution = 16;
    o.workers = 2;
    o.seed = 1234;
    LoaderOptions shard = o; // a data-parallel rank's part of each global batch
    shard.batch_size = 7;
    shard.workers = 3;
    shard.shard_count = 3;
    shard.shard_index = 1;
    LoaderOptions val = o; // in order, no drop_last
    val.train = false;
    for (const Mode mode : {Mode::Prefetch, Mode::Sequential, Mode::Destinations}) {
        INFO("mode " << int(mode));
        check_loader(folder, o, mode, 4);
        check_loader(folder, shard, mode, 3);
        check_loader(folder, val, mode, 2);
    }
}

TEST_CASE("loader into caller buffers: abandoned epochs and larger batches", "[train][data][loader]") {
    TempDir dir("abandon");
    make_folder(dir.path, 2, 9, 24, 20, true);
    const ImageFolder folder = ImageFolder::scan(dir.path.string());
    LoaderOptions o;
    o.batch_size = 4;
    o.resolution = 16;
    o.workers = 2;
    o.seed = 99;
    const size_t image_size = size_t(3) * o.resolution * o.resolution;
    DataLoader loader(folder, o);
    std::vector<float> first(4 * image_size), second(4 * image_size);
    loader.set_destinations(first.data(), second.data(), 4);
    // An epoch left after one batch (its prefetched successor dropped mid-decode), then a
    // resume-like start at batch 2: the batches are still the sequential ones.
    for (int64_t epoch = 0; epoch < 3; ++epoch) {
        const auto want = sequential_epoch(folder, o, epoch);
        loader.start_epoch(epoch);
        require_same(loader.next(), want[0], image_size);
        loader.start_epoch(epoch, 2);
        for (size_t b = 2; b < want.size(); ++b) require_same(loader.next(), want[b], image_size);
    }
    // Buffers too small for the batch: the loader's own tensors.
    loader.set_destinations(first.data(), second.data(), 3);
    loader.start_epoch(1);
    const auto want = sequential_epoch(folder, o, 1);
    const Batch batch = loader.next();
    CHECK(batch.staged == nullptr);
    require_same(batch, want[0], image_size);
    // Null buffers: back to the loader's tensors.
    loader.set_destinations(nullptr, nullptr, 0);
    const Batch next = loader.next();
    CHECK(next.staged == nullptr);
    require_same(next, want[1], image_size);
}

TEST_CASE("loader throughput with and without prefetch over a simulated step", "[.timing][loader]") {
    TempDir dir("timing");
    make_folder(dir.path, 4, 32, 320, 300, false); // 128 images of 320..413 x 300..306
    const ImageFolder folder = ImageFolder::scan(dir.path.string());
    LoaderOptions o;
    o.batch_size = 16;
    o.resolution = 224;
    o.workers = 2;
    o.seed = 5;
    const size_t image_size = size_t(3) * o.resolution * o.resolution;
    // The step: as long as decoding one batch sequentially takes (sleeping: a GPU step).
    const auto t0 = std::chrono::steady_clock::now();
    (void)sequential_epoch(folder, o, 0); // 8 batches
    const double decode_batch_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 8;
    const auto step = std::chrono::duration<double>(decode_batch_s);
    for (const int mode : {0, 1, 2}) { // sequential, prefetch, prefetch into caller buffers
        LoaderOptions m = o;
        m.prefetch = mode != 0;
        DataLoader loader(folder, m);
        std::vector<float> first(16 * image_size), second(16 * image_size);
        if (mode == 2) loader.set_destinations(first.data(), second.data(), 16);
        int64_t images = 0;
        const auto start = std::chrono::steady_clock::now();
        for (int64_t epoch = 1; epoch <= 3; ++epoch) {
            loader.start_epoch(epoch);
            while (loader.has_next()) {
                images += int64_t(loader.next().labels.size());
                std::this_thread::sleep_for(step);
            }
        }
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        std::printf("loader %-28s %2d workers, step %.1f ms: %.1f images/s\n",
                    mode == 0   ? "sequential (no prefetch)"
                    : mode == 1 ? "prefetch"
                                : "prefetch into buffers",
                    o.workers, decode_batch_s * 1e3, double(images) / s);
    }
}
