// effnet-classify: classify image files with pretrained weights.
//
//   effnet-classify --weights W.safetensors [--labels FILE] [--top-k 5] [--batch 8]
//                   [--device auto|cpu|cuda] [--precision fp32|fp16|bf16] [--cpu-engine fast|reference]
//                   [--threads N] [--json] [--quiet] PATH...
//
// PATH is a file or a directory (searched recursively for .jpg .jpeg .png .bmp .tga, sorted).
// A file that cannot be read gets one line "error: PATH: reason" on stderr and the run goes on;
// the exit status is 1 if any failed, 2 for a usage error.
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/openmp_policy.hpp"
#include "backend.hpp"
#include "common/args.hpp"
#include "common/output_path.hpp"
#include "effnet/diagnose.hpp"
#include "effnet/error.hpp"
#include "effnet/image.hpp"
#include "effnet/limits.hpp"
#include "effnet/inference.hpp"
#include "effnet/model.hpp"
#include "npy.hpp"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

const char* kUsage = "usage: effnet-classify --weights W.safetensors [options] PATH...\n"
                     "  PATH                 an image file, or a directory searched recursively for\n"
                     "                       .jpg .jpeg .png .bmp .tga files (sorted)\n"
                     "  --weights FILE       safetensors weights (see weights/README.md)\n"
                     "  --labels FILE        class names, one a line (default: imagenet_classes.txt next to\n"
                     "                       the weights when its line count matches the classes)\n"
                     "  --top-k K            classes shown per image (default 5)\n"
                     "  --batch N            images per forward (default 8)\n"
                     "  --device D           auto | cpu | cuda (default auto: cuda when available)\n"
                     "  --precision P        fp32 | fp16 | bf16 (default fp32; fp16/bf16 need cuda)\n"
                     "  --cpu-engine E       fast | reference (default fast: the CPU path users run;\n"
                     "                       reference: the plain engine it is tested against)\n"
                     "  --threads N          CPU threads (default 0: every CPU this process may use)\n"
                     "  --json               print one JSON document instead of text\n"
                     "  --quiet              no timing summary, no progress\n"
                     "  --resize N --crop N --interpolation bilinear|bicubic --mean a,b,c --std a,b,c\n"
                     "                       override the preprocessing the weights' metadata asks for\n"
                     "exit status: 0 all classified, 1 some file failed, 2 usage error\n";

struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Options {
    std::string weights;
    std::string labels;
    int top_k = 5;
    int batch = 8;
    std::string device = "auto";
    std::string precision = "fp32";
    std::string cpu_engine = "fast";
    int threads = 0;
    bool json = false;
    bool quiet = false;
    std::vector<std::string> paths;
    std::optional<int> resize, crop;
    std::optional<std::string> interpolation;
    std::optional<std::array<float, 3>> mean, stdev;
    // Hidden, for tests: write the network input batch as .npy; skip the model entirely.
    std::string dump_input;
    bool preprocess_only = false;
};

int parse_int(const std::string& flag, const std::string& v, int lo, int hi) {
    try {
        return int(effnet::examples::parse_int_option(flag.substr(2), v, lo, hi));
    } catch (const effnet::Error& e) {
        throw UsageError(e.what()); // usage errors exit with status 2
    }
}

std::array<float, 3> parse_triple(const std::string& flag, const std::string& v) {
    std::array<float, 3> out{};
    std::stringstream ss(v);
    std::string item;
    int n = 0;
    while (std::getline(ss, item, ',')) {
        if (n == 3) throw UsageError(flag + " expects three comma-separated numbers, got '" + v + "'");
        try {
            size_t used = 0;
            out[n] = std::stof(item, &used);
            if (used != item.size() || !std::isfinite(out[n])) throw std::invalid_argument(item);
        } catch (const std::exception&) {
            throw UsageError(flag + " expects three comma-separated numbers, got '" + v + "'");
        }
        ++n;
    }
    if (n != 3) throw UsageError(flag + " expects three comma-separated numbers, got '" + v + "'");
    return out;
}

Options parse_args(int argc, char** argv) {
    Options o;
    auto value = [&](int& i) -> std::string {
        if (i + 1 >= argc) throw UsageError(std::string(argv[i]) + " needs a value");
        return argv[++i];
    };
    bool only_paths = false;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (only_paths || a.empty() || a[0] != '-') {
            o.paths.push_back(a);
        } else if (a == "--") {
            only_paths = true;
        } else if (a == "--help" || a == "-h") {
            std::fputs(kUsage, stdout);
            std::exit(0);
        } else if (a == "--weights") {
            o.weights = value(i);
        } else if (a == "--labels") {
            o.labels = value(i);
        } else if (a == "--top-k") {
            o.top_k = parse_int(a, value(i), 1, 100000);
        } else if (a == "--batch") {
            o.batch = parse_int(a, value(i), 1, 4096);
        } else if (a == "--device") {
            o.device = value(i);
            if (o.device != "auto" && o.device != "cpu" && o.device != "cuda")
                throw UsageError("--device expects auto, cpu or cuda, got '" + o.device + "'");
        } else if (a == "--cpu-engine") {
            o.cpu_engine = value(i);
            if (o.cpu_engine != "fast" && o.cpu_engine != "reference")
                throw UsageError("--cpu-engine expects fast or reference, got '" + o.cpu_engine + "'");
        } else if (a == "--threads") {
            o.threads = parse_int(a, value(i), 0, 1024);
        } else if (a == "--precision") {
            o.precision = value(i);
            try {
                effnet::parse_precision(o.precision);
            } catch (const effnet::Error& e) {
                throw UsageError(e.what());
            }
        } else if (a == "--json") {
            o.json = true;
        } else if (a == "--quiet" || a == "-q") {
            o.quiet = true;
        } else if (a == "--resize") {
            o.resize = parse_int(a, value(i), 1, effnet::limits::kMaxPreprocessSide);
        } else if (a == "--crop") {
            o.crop = parse_int(a, value(i), 1, effnet::limits::kMaxPreprocessSide);
        } else if (a == "--interpolation") {
            o.interpolation = value(i);
            if (*o.interpolation != "bilinear" && *o.interpolation != "bicubic")
                throw UsageError("--interpolation expects bilinear or bicubic, got '" + *o.interpolation +
                                 "'");
        } else if (a == "--mean") {
            o.mean = parse_triple(a, value(i));
        } else if (a == "--std") {
            o.stdev = parse_triple(a, value(i));
            for (float s : *o.stdev)
                if (s == 0.0f) throw UsageError("--std values must be non-zero");
        } else if (a == "--dump-input") {
            o.dump_input = value(i);
        } else if (a == "--preprocess-only") {
            o.preprocess_only = true;
        } else {
            throw UsageError("unknown option '" + a + "'");
        }
    }
    if (o.paths.empty()) throw UsageError("no image paths given");
    if (o.weights.empty() && !o.preprocess_only) throw UsageError("--weights is required");
    if (o.preprocess_only && o.dump_input.empty())
        throw UsageError("--preprocess-only needs --dump-input FILE.npy");
    return o;
}

struct InputList {
    std::vector<std::string> files;
    std::vector<std::string> errors; // "PATH: reason"
};

// Files given by name are taken whatever their extension (decoding decides); directories
// contribute their image files, sorted, recursively.
InputList collect_inputs(const std::vector<std::string>& paths) {
    InputList list;
    for (const std::string& p : paths) {
        std::error_code ec;
        const fs::file_status st = fs::status(p, ec);
        if (ec || !fs::exists(st)) {
            list.errors.push_back(p + ": no such file or directory");
        } else if (fs::is_directory(st)) {
            std::vector<std::string> found;
            fs::recursive_directory_iterator it(p, fs::directory_options::skip_permission_denied, ec), end;
            if (ec) {
                list.errors.push_back(p + ": cannot list directory (" + ec.message() + ")");
                continue;
            }
            for (; it != end; it.increment(ec)) {
                if (ec) {
                    list.errors.push_back(p + ": error while listing (" + ec.message() + ")");
                    break;
                }
                std::error_code fe;
                if (it->is_regular_file(fe) && effnet::has_image_extension(it->path().string()))
                    found.push_back(it->path().string());
            }
            std::sort(found.begin(), found.end());
            list.files.insert(list.files.end(), found.begin(), found.end());
        } else {
            list.files.push_back(p);
        }
    }
    return list;
}

std::vector<std::string> read_labels(const std::string& path) {
    std::ifstream f(path);
    if (!f) throw effnet::Error(path + ": cannot open the labels file");
    std::vector<std::string> labels;
    std::string line;
    while (std::getline(f, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        labels.push_back(line);
    }
    return labels;
}

std::vector<std::string> choose_labels(const Options& o, int num_classes) {
    if (!o.labels.empty()) {
        std::vector<std::string> labels = read_labels(o.labels);
        if (int(labels.size()) != num_classes)
            throw effnet::Error(o.labels + ": " + std::to_string(labels.size()) +
                                " labels, but the model has " + std::to_string(num_classes) + " classes");
        return labels;
    }
    const fs::path beside = fs::path(o.weights).parent_path() / "imagenet_classes.txt";
    std::error_code ec;
    if (fs::is_regular_file(beside, ec)) {
        std::vector<std::string> labels = read_labels(beside.string());
        if (int(labels.size()) == num_classes) return labels;
    }
    std::vector<std::string> labels(num_classes);
    for (int i = 0; i < num_classes; ++i) labels[i] = "class " + std::to_string(i);
    return labels;
}

struct Prediction {
    int index;
    double probability;
};

// Softmax in double (subtracting the max), then the k most probable, best first.
std::vector<Prediction> top_k(const float* logits, int classes, int k) {
    double max_logit = logits[0];
    for (int i = 1; i < classes; ++i) max_logit = std::max(max_logit, double(logits[i]));
    std::vector<double> p(classes);
    double total = 0.0;
    for (int i = 0; i < classes; ++i) total += (p[i] = std::exp(double(logits[i]) - max_logit));
    std::vector<Prediction> all(classes);
    for (int i = 0; i < classes; ++i) all[i] = {i, p[i] / total};
    k = std::min(k, classes);
    std::partial_sort(all.begin(), all.begin() + k, all.end(), [](const Prediction& a, const Prediction& b) {
        return a.probability > b.probability || (a.probability == b.probability && a.index < b.index);
    });
    all.resize(k);
    return all;
}

class Progress {
public:
    Progress(size_t total, bool enabled) : total_(total), enabled_(enabled) {}
    void update(size_t done) {
        if (!enabled_) return;
        const int width = 30;
        const int filled = int(double(done) / double(total_) * width);
        std::fprintf(stderr, "\r[%s%s] %zu/%zu images", std::string(filled, '#').c_str(),
                     std::string(width - filled, ' ').c_str(), done, total_);
        std::fflush(stderr);
    }
    // Erases the bar so that a message can take the line; the next update redraws it.
    void clear() {
        if (enabled_) std::fputs("\r\033[K", stderr);
    }
    void finish() { clear(); }

private:
    size_t total_;
    bool enabled_;
};

struct Result {
    std::string path;
    std::vector<Prediction> top;
};

double seconds(Clock::duration d) {
    return std::chrono::duration<double>(d).count();
}

int run(const Options& o) {
    const auto t_start = Clock::now();

    // Model and preprocessing (the weights' metadata, then command-line overrides).
    effnet::Model model;
    effnet::Preprocess pre;
    if (!o.preprocess_only) {
        model = effnet::load_weights(o.weights);
        pre = model.config.preprocess;
    }
    if (o.resize) pre.resize = *o.resize;
    if (o.crop) pre.crop = *o.crop;
    if (o.interpolation) pre.interpolation = *o.interpolation;
    if (o.mean) std::copy(o.mean->begin(), o.mean->end(), pre.mean);
    if (o.stdev) std::copy(o.stdev->begin(), o.stdev->end(), pre.std);
    effnet::parse_interpolation(pre.interpolation); // validates
    const int size = pre.crop;

    std::unique_ptr<classify::Backend> backend;
    std::vector<std::string> labels;
    int classes = 0;
    if (!o.preprocess_only) {
        classes = model.config.num_classes;
        labels = choose_labels(o, classes);
        const effnet::Precision precision = effnet::parse_precision(o.precision);
        bool use_cuda = o.device == "cuda" || (o.device == "auto" && effnet::cuda_available());
        if (use_cuda) {
            try {
                backend = classify::make_cuda_backend(model, o.batch, size, precision);
            } catch (const effnet::Error& e) {
                if (o.device == "cuda") throw;
                std::fprintf(stderr, "warning: CUDA unusable (%s); running on the CPU\n", e.what());
                use_cuda = false;
            }
        }
        if (!use_cuda) {
            if (precision != effnet::Precision::FP32) {
                if (o.device == "cpu")
                    throw UsageError("--precision " + o.precision + " needs --device cuda");
                std::fprintf(stderr, "warning: no CUDA device; running fp32 on the CPU\n");
            }
            backend = classify::make_cpu_backend(model, o.batch, size, o.cpu_engine, o.threads);
        }
    }

    InputList inputs = collect_inputs(o.paths);
    for (const std::string& e : inputs.errors) std::fprintf(stderr, "error: %s\n", e.c_str());
    std::vector<std::string> errors = inputs.errors;
    const std::vector<std::string>& files = inputs.files;
    if (!o.dump_input.empty()) {
        std::vector<std::pair<std::string, std::string>> read = {{"weights", o.weights}};
        for (const std::string& f : files) read.push_back({"input image", f});
        effnet::examples::check_output_is_not_input("dump-input", o.dump_input, read);
    }
    if (files.empty() && errors.empty()) {
        std::fprintf(stderr, "error: no image files found in the given paths\n");
        return 1;
    }

    const size_t image_floats = size_t(3) * size * size;
    std::vector<Result> results;
    std::vector<float> dump; // [classified, 3, size, size] with --dump-input
    double prep_s = 0.0, model_s = 0.0;
    Progress progress(files.size(), !o.quiet && files.size() > 8 && isatty(fileno(stderr)));

    progress.update(0);
    std::vector<float> batch_input(size_t(o.batch) * image_floats);
    std::vector<float> logits(size_t(o.batch) * std::max(classes, 1));
    for (size_t first = 0; first < files.size(); first += size_t(o.batch)) {
        const int n = int(std::min(files.size() - first, size_t(o.batch)));

        // Decode + preprocess the chunk in parallel; failures are kept per file, in order.
        const auto t0 = Clock::now();
        std::vector<std::string> failure(n);
        std::vector<std::vector<float>> pixels(n);
#pragma omp parallel for schedule(dynamic, 1)
        for (int i = 0; i < n; ++i) {
            effnet::Image image;
            try {
                image = effnet::load_image(files[first + i]); // errors name the file
                pixels[i].resize(image_floats);
                effnet::preprocess_image(image, pre, pixels[i].data());
            } catch (const std::exception& e) {
                failure[i] = image.width ? files[first + i] + ": " + e.what() : e.what();
            }
        }
        std::vector<std::string> good;
        for (int i = 0; i < n; ++i) {
            if (!failure[i].empty()) {
                progress.clear();
                std::fprintf(stderr, "error: %s\n", failure[i].c_str());
                errors.push_back(failure[i]);
                continue;
            }
            std::copy(pixels[i].begin(), pixels[i].end(), batch_input.begin() + good.size() * image_floats);
            good.push_back(files[first + i]);
        }
        const int m = int(good.size());
        if (!o.dump_input.empty())
            dump.insert(dump.end(), batch_input.begin(), batch_input.begin() + m * image_floats);
        prep_s += seconds(Clock::now() - t0);

        if (m > 0 && backend) {
            const auto t1 = Clock::now();
            backend->run(batch_input.data(), m, logits.data());
            model_s += seconds(Clock::now() - t1);
            effnet::check_logits_finite(model, batch_input.data(), {m, 3, size, size}, logits.data(), classes,
                                        backend->description(),
                                        [&](int64_t row) { return "'" + good[row] + "'"; });
            for (int i = 0; i < m; ++i)
                results.push_back({good[i], top_k(&logits[size_t(i) * classes], classes, o.top_k)});
        } else if (m > 0) {
            for (int i = 0; i < m; ++i) results.push_back({good[i], {}});
        }
        progress.update(first + n);
    }
    progress.finish();
    const double total_s = seconds(Clock::now() - t_start);

    if (!o.dump_input.empty())
        classify::write_npy_f32(o.dump_input, {int64_t(results.size()), 3, size, size}, dump.data());

    const size_t done = results.size();
    const double images_per_s = (prep_s + model_s) > 0 ? double(done) / (prep_s + model_s) : 0.0;
    if (o.json) {
        nlohmann::json doc;
        doc["weights"] = o.weights;
        doc["device"] = backend ? backend->description() : "none (preprocess only)";
        doc["preprocess"] = {{"resize", pre.resize},
                             {"crop", pre.crop},
                             {"interpolation", pre.interpolation},
                             {"mean", {pre.mean[0], pre.mean[1], pre.mean[2]}},
                             {"std", {pre.std[0], pre.std[1], pre.std[2]}}};
        nlohmann::json items = nlohmann::json::array();
        for (const Result& r : results) {
            nlohmann::json top = nlohmann::json::array();
            for (const Prediction& p : r.top)
                top.push_back(
                    {{"class", p.index}, {"label", labels[p.index]}, {"probability", p.probability}});
            items.push_back({{"path", r.path}, {"top", top}});
        }
        doc["results"] = items;
        nlohmann::json errs = nlohmann::json::array();
        for (const std::string& e : errors) errs.push_back(e);
        doc["errors"] = errs;
        doc["timing"] = {{"images", done},     {"failed", errors.size()}, {"decode_preprocess_s", prep_s},
                         {"model_s", model_s}, {"total_s", total_s},      {"images_per_s", images_per_s}};
        std::printf("%s\n", doc.dump(2).c_str());
    } else if (backend) {
        for (const Result& r : results) {
            std::printf("%s\n", r.path.c_str());
            for (size_t k = 0; k < r.top.size(); ++k)
                std::printf("  %zu. %6.2f%%  %4d  %s\n", k + 1, 100.0 * r.top[k].probability, r.top[k].index,
                            labels[r.top[k].index].c_str());
        }
        if (!o.quiet) {
            std::printf("\n%zu image%s classified, %zu failed on %s\n", done, done == 1 ? "" : "s",
                        errors.size(), backend->description().c_str());
            std::printf("decode+preprocess %.3f s (%.1f ms/image), model %.3f s (%.1f ms/image), "
                        "%.1f images/s, total %.3f s with loading\n",
                        prep_s, done ? 1e3 * prep_s / double(done) : 0.0, model_s,
                        done ? 1e3 * model_s / double(done) : 0.0, images_per_s, total_s);
        }
    }
    return errors.empty() ? 0 : 1;
}

} // namespace

int main(int argc, char** argv) {
    effnet::examples::use_passive_openmp(argv);
    try {
        return run(parse_args(argc, argv));
    } catch (const UsageError& e) {
        std::fprintf(stderr, "error: %s\n%s", e.what(), kUsage);
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
