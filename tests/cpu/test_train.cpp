// Training on the CPU engine: augmentation geometry, the image-folder dataset and its threaded
// loader (determinism, unreadable files), a tiny model learning a separable task, and
// checkpoints (bit-exact round trip and bit-exact continuation).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

#include <unistd.h>

#include "effnet/error.hpp"
#include "effnet/image.hpp"
#include "effnet/train/augment.hpp"
#include "effnet/train/checkpoint.hpp"
#include "effnet/train/dataset.hpp"
#include "effnet/train/optimizer.hpp"
#include "effnet/train/plot.hpp"
#include "effnet/train/rng.hpp"
#include "effnet/train/schedule.hpp"
#include "effnet/train/trainer.hpp"
#include "image_folder.hpp"

using namespace effnet;
using namespace effnet::train;
namespace fs = std::filesystem;
using test::class_pixels;
using test::TempDir;
using test::write_bmp;

namespace {

// The same task as tensors: [n, 3, r, r] normalised roughly to zero mean.
void make_batch(int n, int r, uint64_t seed, Tensor& images, std::vector<int64_t>& labels) {
    Rng rng(seed);
    images = Tensor({n, 3, r, r});
    labels.assign(n, 0);
    for (int i = 0; i < n; ++i) {
        labels[i] = i % 4;
        const auto rgb = class_pixels(int(labels[i]), r, r, rng);
        for (int c = 0; c < 3; ++c)
            for (int p = 0; p < r * r; ++p)
                images.data[(size_t(i) * 3 + c) * r * r + p] =
                    (rgb[size_t(p) * 3 + c] / 255.0f - 0.45f) / 0.25f;
    }
}

ModelConfig tiny_config(int classes, int resolution) {
    CustomOptions o;
    o.width = 0.1;
    o.depth = 0.1;
    o.num_classes = classes;
    o.resolution = resolution;
    ModelConfig c = custom_config(o);
    c.dropout = 0.0f; // the task is learned faster without; masks are tested elsewhere
    c.stochastic_depth = 0.0f;
    return c;
}

void require_same_params(const Model& a, const Model& b) {
    REQUIRE(a.params.size() == b.params.size());
    for (const auto& [name, t] : a.params) {
        INFO(name);
        REQUIRE(b.params.count(name));
        REQUIRE(t.shape == b.params.at(name).shape);
        REQUIRE(t.data == b.params.at(name).data); // bit-exact (NaN-free values)
    }
}

} // namespace

TEST_CASE("RandomResizedCrop boxes stay inside and follow torchvision's ranges", "[train][augment]") {
    Rng rng(7);
    for (int trial = 0; trial < 500; ++trial) {
        const int w = 20 + int(rng.below(300)), h = 20 + int(rng.below(300));
        const CropBox b = random_resized_crop_box(w, h, rng);
        REQUIRE(b.x >= 0);
        REQUIRE(b.y >= 0);
        REQUIRE(b.width >= 1);
        REQUIRE(b.height >= 1);
        REQUIRE(b.x + b.width <= w);
        REQUIRE(b.y + b.height <= h);
        // Area within [0.08, 1] of the image, up to the rounding of each side by 0.5 pixel.
        const double area = double(b.width) * b.height, full = double(w) * h;
        REQUIRE(area <= full);
        REQUIRE((b.width + 1.0) * (b.height + 1.0) >= 0.08 * full);
    }
    // A 100x1 strip: every attempt fails, so the fallback is the central crop with the ratio
    // clamped to 4/3: h = 1, w = round(4/3) = 1, centred.
    const CropBox f = random_resized_crop_box(100, 1, rng);
    CHECK(f.width == 1);
    CHECK(f.height == 1);
    CHECK(f.x == 49);
    CHECK(f.y == 0);
    // A 30x30 square whose whole area is asked: the full image.
    Rng r2(1);
    const CropBox whole = random_resized_crop_box(30, 30, r2, 1.0, 1.0, 1.0, 1.0);
    CHECK((whole.x == 0 && whole.y == 0 && whole.width == 30 && whole.height == 30));
}

TEST_CASE("crop, resize, flip and normalise", "[train][augment]") {
    Image img;
    img.width = 4;
    img.height = 2;
    img.rgb.resize(4 * 2 * 3);
    for (int i = 0; i < 8; ++i)
        img.rgb[i * 3] = uint8_t(i * 30), img.rgb[i * 3 + 1] = 10, img.rgb[i * 3 + 2] = 255;
    Normalize norm;
    norm.mean[0] = norm.mean[1] = norm.mean[2] = 0.5f;
    norm.std[0] = norm.std[1] = norm.std[2] = 0.5f;
    std::vector<float> out(3 * 2 * 2);
    // A 2x2 box at (1, 0) kept at its size: pixels copied; mirrored horizontally.
    crop_resize_normalize(img, CropBox{1, 0, 2, 2}, 2, true, norm, out.data());
    auto expect = [](int v) { return (v / 255.0f - 0.5f) / 0.5f; };
    CHECK(out[0] == Approx(expect(60))); // row 0: x = 2, then x = 1
    CHECK(out[1] == Approx(expect(30)));
    CHECK(out[2] == Approx(expect(180))); // row 1: x = 6 - 4 = 2 -> 6*30
    CHECK(out[3] == Approx(expect(150)));
    CHECK(out[4] == Approx(expect(10)));
    CHECK(out[8] == Approx(1.0f));
    REQUIRE_THROWS(crop_resize_normalize(img, CropBox{3, 0, 2, 2}, 2, false, norm, out.data()));
}

TEST_CASE("epoch order is a seeded permutation", "[train][data]") {
    const auto a = epoch_order(100, 5, 3, true);
    CHECK(a == epoch_order(100, 5, 3, true));
    CHECK(a != epoch_order(100, 5, 4, true));
    CHECK(a != epoch_order(100, 6, 3, true));
    CHECK(std::set<int64_t>(a.begin(), a.end()).size() == 100);
    const auto id = epoch_order(10, 5, 3, false);
    for (int i = 0; i < 10; ++i) CHECK(id[i] == i);
}

TEST_CASE("image folder: sorted classes, threaded loader deterministic, unreadable skipped",
          "[train][data]") {
    TempDir dir("folder");
    Rng rng(11);
    const char* names[3] = {"cat", "ant", "bee"};
    for (int k = 0; k < 3; ++k) {
        fs::create_directories(dir.path / names[k]);
        for (int i = 0; i < 5; ++i) {
            const int w = 20 + i * 3, h = 18 + k * 4;
            write_bmp(dir.path / names[k] / ("img" + std::to_string(i) + ".bmp"), w, h,
                      class_pixels(k, w, h, rng));
        }
    }
    std::ofstream(dir.path / "bee" / "broken.jpg") << "this is not a jpeg";
    std::ofstream(dir.path / "bee" / "notes.txt") << "ignored: not an image extension";

    const ImageFolder folder = ImageFolder::scan(dir.path.string());
    REQUIRE(folder.classes == std::vector<std::string>{"ant", "bee", "cat"});
    REQUIRE(folder.samples.size() == 16);
    CHECK(folder.samples[0].label == 0);
    CHECK(folder.samples[5].path.find("broken.jpg") != std::string::npos); // sorted: 'b' < 'i'
    CHECK(folder.samples[5].label == 1);

    auto run_epoch = [&](int workers, int64_t epoch, int64_t first) {
        LoaderOptions o;
        o.batch_size = 4;
        o.resolution = 16;
        o.workers = workers;
        o.seed = 42;
        DataLoader loader(folder, o);
        CHECK(loader.batches_per_epoch() == 4); // 16 / 4, drop_last
        loader.start_epoch(epoch, first);
        std::vector<Batch> batches;
        while (loader.has_next()) batches.push_back(loader.next());
        return batches;
    };
    const auto one = run_epoch(1, 2, 0);
    const auto three = run_epoch(3, 2, 0);
    REQUIRE(one.size() == 4);
    int64_t skipped = 0, seen = 0;
    for (size_t b = 0; b < one.size(); ++b) {
        CHECK(one[b].images.data == three[b].images.data); // bit-identical whatever the thread count
        CHECK(one[b].labels == three[b].labels);
        CHECK(one[b].images.shape[0] == int64_t(one[b].labels.size()));
        skipped += one[b].skipped;
        seen += int64_t(one[b].labels.size());
        for (const auto& e : one[b].errors) CHECK(e.find("broken.jpg") != std::string::npos);
    }
    CHECK(skipped == 1);
    CHECK(seen == 15);
    // Starting at batch 2 (as a resume does) gives the same batches 2 and 3.
    const auto tail = run_epoch(2, 2, 2);
    REQUIRE(tail.size() == 2);
    CHECK(tail[0].images.data == one[2].images.data);
    CHECK(tail[1].indices == one[3].indices);
    // Another epoch shuffles differently.
    const auto other = run_epoch(2, 3, 0);
    CHECK(other[0].indices != one[0].indices);

    // Validation: in order, resize + center crop, no drop_last.
    LoaderOptions v;
    v.batch_size = 6;
    v.resolution = 16;
    v.train = false;
    DataLoader val(folder, v);
    CHECK(val.batches_per_epoch() == 3);
    val.start_epoch(0);
    const Batch first = val.next();
    CHECK(first.indices == std::vector<int64_t>{0, 1, 2, 3, 4});
    CHECK(first.skipped == 1);

    // Errors are clear.
    REQUIRE_THROWS_WITH(ImageFolder::scan((dir.path / "missing").string()),
                        Catch::Contains("not a directory"));
    fs::create_directories(dir.path / "empty_root" / "only");
    REQUIRE_THROWS_WITH(ImageFolder::scan((dir.path / "empty_root").string()),
                        Catch::Contains("holds no images"));
    fs::create_directories(dir.path / "val" / "dog");
    REQUIRE_THROWS_WITH(ImageFolder::scan((dir.path / "val").string(), folder.classes),
                        Catch::Contains("not one of the training classes"));
}

TEST_CASE("a tiny model learns a 4-class colour/pattern task", "[train][learn]") {
    const int r = 16;
    Model model = random_model(tiny_config(4, r), 3);
    TrainOptions o;
    o.optimizer.kind = OptimizerKind::AdamW;
    o.optimizer.weight_decay = 1e-4;
    o.schedule.kind = ScheduleKind::Cosine;
    o.schedule.base_lr = 1e-2;
    o.schedule.warmup_steps = 2;
    o.schedule.total_steps = 40;
    o.seed = 1;
    Trainer trainer(model, o);
    Tensor images;
    std::vector<int64_t> labels;
    double first_loss = 0, last_loss = 0;
    int perfect_in_a_row = 0, step = 0;
    // Every batch is fresh noise, and a step's accuracy is measured before its update: three
    // perfect batches in a row is 100% accuracy on 48 images the model had not seen.
    for (; step < 40 && perfect_in_a_row < 3; ++step) {
        make_batch(16, r, 100 + step, images, labels);
        const StepResult s = trainer.train_step(images, labels);
        if (step == 0) first_loss = s.loss;
        last_loss = s.loss;
        perfect_in_a_row = s.correct == s.count ? perfect_in_a_row + 1 : 0;
    }
    INFO("steps " << step << ", loss " << first_loss << " -> " << last_loss);
    CHECK(perfect_in_a_row == 3);        // within 40 steps
    CHECK(last_loss < 0.5 * first_loss); // and the training loss at least halved
    CHECK(trainer.step() == step);
}

TEST_CASE("checkpoint round trip is bit-exact and resumes bit-exactly", "[train][checkpoint]") {
    TempDir dir("ckpt");
    const int r = 16;
    for (OptimizerKind kind : {OptimizerKind::SGD, OptimizerKind::RMSProp, OptimizerKind::AdamW}) {
        INFO(optimizer_name(kind));
        ModelConfig config = tiny_config(4, r);
        config.dropout = 0.2f; // exercise the seeded masks across the resume
        config.stochastic_depth = 0.2f;
        Model model = random_model(config, 5);
        TrainOptions o;
        o.optimizer.kind = kind;
        o.optimizer.weight_decay = 1e-4;
        o.optimizer.nesterov = kind == OptimizerKind::SGD;
        o.schedule.base_lr = 1e-2;
        o.schedule.warmup_steps = 1;
        o.schedule.total_steps = 10;
        o.label_smoothing = 0.1f;
        o.clip_grad_norm = 5.0;
        o.seed = 77;
        Trainer trainer(model, o);
        Tensor images;
        std::vector<int64_t> labels;
        for (int s = 0; s < 2; ++s) {
            make_batch(8, r, 10 + s, images, labels);
            trainer.train_step(images, labels);
        }
        TrainingState state;
        state.step = trainer.step();
        state.epoch = 3;
        state.batch_in_epoch = 1;
        state.seed = o.seed;
        state.scaler_scale = 8192.0;
        state.scaler_good_steps = 17;
        state.scaler_skipped = 2;
        state.metadata["args"] = "{\"lr\": 0.01}";
        const std::string path = (dir.path / "ck.safetensors").string();
        save_checkpoint(path, model, trainer.optimizer(), state);

        Checkpoint ck = load_checkpoint(path);
        CHECK(config_to_json(ck.model.config) == config_to_json(model.config));
        require_same_params(ck.model, model);
        REQUIRE(ck.optimizer_state.size() == trainer.optimizer().state().size());
        for (const auto& [k, t] : trainer.optimizer().state()) {
            INFO(k);
            REQUIRE(ck.optimizer_state.at(k).data == t.data);
        }
        CHECK(ck.optimizer_steps == 2);
        CHECK(ck.optimizer_name == optimizer_name(kind));
        CHECK(ck.state.step == 2);
        CHECK(ck.state.epoch == 3);
        CHECK(ck.state.batch_in_epoch == 1);
        CHECK(ck.state.seed == 77);
        CHECK(ck.state.scaler_scale == 8192.0);
        CHECK(ck.state.scaler_good_steps == 17);
        CHECK(ck.state.scaler_skipped == 2);
        CHECK(ck.state.metadata.at("args") == "{\"lr\": 0.01}");

        // Continue both: the restored trainer repeats the original's losses to the last bit.
        Trainer resumed(ck.model, o);
        resumed.optimizer().set_state(ck.optimizer_state, ck.optimizer_steps);
        resumed.set_step(ck.state.step);
        for (int s = 2; s < 4; ++s) {
            make_batch(8, r, 10 + s, images, labels);
            const StepResult a = trainer.train_step(images, labels);
            const StepResult b = resumed.train_step(images, labels);
            CHECK(a.loss == b.loss);
            CHECK(a.lr == b.lr);
        }
        require_same_params(ck.model, model);
    }
}

TEST_CASE("checkpoint loading names what is wrong", "[train][checkpoint]") {
    TempDir dir("badckpt");
    const std::string path = (dir.path / "x.safetensors").string();
    REQUIRE_THROWS(load_checkpoint(path)); // missing file
    Model model = random_model(tiny_config(3, 16), 1);
    save_weights(model, path); // an inference weights file is not a checkpoint
    REQUIRE_THROWS_WITH(load_checkpoint(path), Catch::Contains("not an effnet training checkpoint"));
    REQUIRE_THROWS(config_from_json("{\"name\": 1}"));
}

TEST_CASE("architecture JSON round trip for every preset", "[train][checkpoint]") {
    for (const std::string& name : preset_names()) {
        INFO(name);
        const ModelConfig c = preset(name, 17);
        const ModelConfig back = config_from_json(config_to_json(c));
        CHECK(config_to_json(back) == config_to_json(c));
        CHECK(back.blocks.size() == c.blocks.size());
        CHECK(back.bn_eps == c.bn_eps);
        CHECK(parameter_count(back) == parameter_count(c));
    }
}

TEST_CASE("plot writes a PNG of the requested size", "[train][plot]") {
    TempDir dir("plot");
    PlotSeries loss;
    for (int i = 0; i < 50; ++i) loss.x.push_back(i), loss.y.push_back(2.0 * std::exp(-i / 10.0));
    loss.rgb[0] = 200;
    PlotSeries acc;
    acc.x = {0, 25, 49};
    acc.y = {0.1, 0.8, std::nan("")}; // non-finite points are skipped
    const std::string path = (dir.path / "curves.png").string();
    write_plot_png(path, {loss}, {acc}, 400, 300);
    const Image img = load_image(path);
    CHECK(img.width == 400);
    CHECK(img.height == 300);
    size_t red = 0;
    for (size_t i = 0; i + 2 < img.rgb.size(); i += 3) red += img.rgb[i] == 200 && img.rgb[i + 1] == 0;
    CHECK(red > 100); // the loss curve was drawn
    REQUIRE_THROWS(write_plot_png(path, {}, {}, 10, 10));
}
