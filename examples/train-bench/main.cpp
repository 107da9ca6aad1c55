// effnet-train-bench: throughput and memory of the GPU training step (GpuTrainer::step:
// forward, cross-entropy, backward, SGD momentum update).
//
//   effnet-train-bench --variant b0 --batch 128 [--precision fp32|amp-fp16|amp-bf16]
//                      [--resolution R] [--iters N] [--warmup N] [--seed S]
//                      [--input prefetch|pinned|pageable] [--tf32]
//
// Random weights, random input (uniform in [-2, 2], never zeros) and random labels; `warmup`
// untimed steps, then `iters` steps each timed on the host (step() waits for the GPU, since it
// returns the loss); images/s = batch / median step time. Every step uploads its batch, as a
// training loop does. --input says how: `prefetch` (default) alternates the trainer's two
// page-locked staging buffers and prefetches the next batch before each step, so its upload
// overlaps the step (GpuTrainer::prefetch); `pinned` uploads from a staging buffer inside the
// step; `pageable` from ordinary memory. --tf32: fp32 GEMMs on TF32. Prints one JSON line.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/openmp_policy.hpp"
#include "common/args.hpp"
#include "effnet/config.hpp"
#include "effnet/error.hpp"
#include "effnet/gpu_training.hpp"
#include "effnet/model.hpp"

namespace {

struct Args {
    std::string variant = "b0";
    int batch = 128;
    int resolution = 0; // 0: the preset's native resolution
    std::string precision = "amp-fp16";
    int iters = 20;
    int warmup = 3;
    uint64_t seed = 1;
    std::string input = "prefetch"; // prefetch | pinned | pageable
    bool tf32 = false;
};

const char* kUsage =
    "usage: effnet-train-bench --variant b0 --batch 128 [--precision fp32|amp-fp16|amp-bf16]\n"
    "                          [--resolution R] [--iters N] [--warmup N] [--seed S]\n"
    "                          [--input prefetch|pinned|pageable] [--tf32]\n"
    "Times GpuTrainer::step (forward, loss, backward, SGD) on random data; prints one JSON line\n"
    "with images/s and peak device memory.\n";

Args parse_args(int argc, char** argv) {
    Args a;
    for (int i = 1; i < argc; ++i) {
        const std::string o = argv[i];
        if (o == "-h" || o == "--help") {
            std::fputs(kUsage, stdout);
            std::exit(0);
        }
        if (o == "--tf32") {
            a.tf32 = true;
            continue;
        }
        if (i + 1 >= argc) throw effnet::Error("option " + o + " needs a value (or is unknown)\n" + kUsage);
        const std::string v = argv[++i];
        if (o == "--variant")
            a.variant = v;
        else if (o == "--batch")
            a.batch = int(effnet::examples::parse_int_option(o.substr(2), v, 1, 65535));
        else if (o == "--resolution")
            a.resolution = int(effnet::examples::parse_int_option(o.substr(2), v, 8, 4096));
        else if (o == "--precision")
            a.precision = v;
        else if (o == "--input") {
            if (v != "prefetch" && v != "pinned" && v != "pageable")
                throw effnet::Error("--input must be prefetch, pinned or pageable, got '" + v + "'");
            a.input = v;
        } else if (o == "--iters")
            a.iters = int(effnet::examples::parse_int_option(o.substr(2), v, 1, 100000));
        else if (o == "--warmup")
            a.warmup = int(effnet::examples::parse_int_option(o.substr(2), v, 0, 100000));
        else if (o == "--seed")
            a.seed = uint64_t(effnet::examples::parse_int_option(o.substr(2), v, 0, (1ll << 62)));
        else
            throw effnet::Error("unknown option " + o + "\n" + kUsage);
    }
    return a;
}

int run(const Args& a) {
    const effnet::TrainPrecision precision = effnet::parse_train_precision(a.precision);
    const effnet::ModelConfig config = effnet::preset(a.variant);
    const int res = a.resolution > 0 ? a.resolution : config.resolution;
    effnet::Model model = effnet::random_model(config, a.seed);

    effnet::GpuTrainOptions opt;
    opt.optimizer.momentum = 0.9f;
    opt.optimizer.weight_decay = 1e-5f;
    opt.label_smoothing = 0.1f;
    opt.loss_scale = precision == effnet::TrainPrecision::AmpFP16 ? 1024.0f : 1.0f;
    opt.allow_tf32 = a.tf32;
    effnet::GpuTrainer trainer(model, a.batch, res, res, precision, opt);

    std::mt19937_64 rng(a.seed + 1);
    std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
    std::vector<float> input(size_t(a.batch) * size_t(config.in_channels) * size_t(res) * size_t(res));
    for (float& v : input) v = dist(rng);
    std::vector<int64_t> labels(size_t(a.batch));
    for (int64_t& l : labels) l = int64_t(rng() % uint64_t(config.num_classes));

    // The batch of step i: staging buffer i % 2 (the same images in both), or the vector.
    const bool staged = a.input != "pageable", prefetch = a.input == "prefetch";
    if (staged)
        for (int b = 0; b < 2; ++b) std::copy(input.begin(), input.end(), trainer.input_staging(b));
    const auto batch_of = [&](int i) -> const float* {
        return staged ? trainer.input_staging(i % 2) : input.data();
    };
    const float lr = 0.01f;
    int step_index = 0;
    const auto one_step = [&]() {
        if (prefetch) trainer.prefetch(batch_of(step_index + 1)); // overlaps this step
        return trainer.step(batch_of(step_index++), labels.data(), lr);
    };

    float first_loss = 0.0f, last_loss = 0.0f;
    int skipped = 0;
    if (prefetch) trainer.prefetch(batch_of(0));
    for (int i = 0; i < a.warmup; ++i) first_loss = one_step();
    std::vector<double> ms;
    for (int i = 0; i < a.iters; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        last_loss = one_step();
        const auto t1 = std::chrono::steady_clock::now();
        ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
        if (!trainer.last_step_finite()) ++skipped;
        if (i == 0 && a.warmup == 0) first_loss = last_loss;
    }
    std::vector<double> sorted = ms;
    std::sort(sorted.begin(), sorted.end());
    const double median = sorted[sorted.size() / 2];
    std::printf(
        "{\"variant\": \"%s\", \"batch\": %d, \"resolution\": %d, \"precision\": \"%s\", \"iters\": %d, "
        "\"step_ms_median\": %.3f, \"step_ms_min\": %.3f, \"images_per_s\": %.1f, "
        "\"peak_device_memory_bytes\": %zu, \"loss_first\": %.5f, \"loss_last\": %.5f, "
        "\"skipped_steps\": %d, \"input\": \"%s\", \"tf32\": %s}\n",
        config.name.c_str(), a.batch, res, effnet::train_precision_name(precision), a.iters, median,
        sorted.front(), double(a.batch) * 1000.0 / median, trainer.peak_device_memory(), double(first_loss),
        double(last_loss), skipped, a.input.c_str(), a.tf32 ? "true" : "false");
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    effnet::examples::use_passive_openmp(argv);
    try {
        return run(parse_args(argc, argv));
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
