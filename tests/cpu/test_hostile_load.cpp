// Hostile and damaged models (issue 15): a damaged export is refused by its checksum, a model
// whose forward overflows is an error naming where, a forward that cannot fit in memory is
// refused before it allocates.
#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <cmath>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>

#include "effnet/cpu_engine.hpp"
#include "effnet/diagnose.hpp"
#include "effnet/error.hpp"
#include "effnet/model.hpp"
#include "effnet/network_plan.hpp"
#include "effnet/safetensors.hpp"
#include "host_memory.hpp"

using namespace effnet;

namespace {

std::string out_path(const std::string& name) {
    const std::string dir = std::string(EFFNET_BINARY_DIR) + "/test_hostile_load";
    ::mkdir(dir.c_str(), 0755);
    return dir + "/" + name;
}

// The golden fixtures' tiny architecture: width 0.25, depth 0.34, 10 classes.
ModelConfig tiny_config() {
    CustomOptions o;
    o.width = 0.25;
    o.depth = 0.34;
    o.num_classes = 10;
    return custom_config(o);
}

Tensor ramp_input(int batch, int size) {
    Tensor x({batch, 3, size, size});
    for (int64_t i = 0; i < x.numel(); ++i) x.data[size_t(i)] = float(std::sin(0.37 * double(i)));
    return x;
}

} // namespace

TEST_CASE("hostile: an exported model with a flipped data byte is refused by its checksum", "[hostile]") {
    const Model model = random_model(tiny_config(), 7);
    const std::string path = out_path("export.safetensors");
    save_weights(model, path);
    REQUIRE(SafetensorsFile::open(path).has_checksum());
    REQUIRE(load_weights(path).params.size() == model.params.size());

    std::string bytes;
    {
        std::ifstream in(path, std::ios::binary);
        bytes.assign(std::istreambuf_iterator<char>(in), {});
    }
    bytes[bytes.size() / 2] = char(bytes[bytes.size() / 2] ^ 0x01); // a low mantissa bit: a quiet change
    {
        std::ofstream out(path, std::ios::binary | std::ios::trunc);
        out.write(bytes.data(), std::streamsize(bytes.size()));
    }
    CHECK_THROWS_WITH(load_weights(path),
                      Catch::Contains("does not match its checksum") && Catch::Contains(path));
}

TEST_CASE("hostile: non-finite logits name the first non-finite layer and the largest parameter",
          "[hostile]") {
    Model model = random_model(tiny_config(), 3);
    const Tensor x = ramp_input(2, 32);
    // The healthy model: finite logits, nothing to report.
    {
        cpu::Network net(model);
        cpu::ForwardOptions opt;
        opt.find_non_finite = true;
        const cpu::ForwardResult r = net.forward(x, opt);
        CHECK(r.first_non_finite.empty());
        CHECK(first_non_finite_row(r.logits.ptr(), 2, model.config.num_classes) == -1);
        CHECK_NOTHROW(check_logits_finite(model, x.ptr(), x.shape, r.logits.ptr(), model.config.num_classes,
                                          "test", [](int64_t) { return std::string("row"); }));
    }
    // Head batch-norm scale and shift of 3e38: finite in the file, y = 3e38 (z + 1) is Inf in the
    // head's output wherever its convolution gave z > 0.134.
    for (float& v : model.param("head.bn.weight").data) v = 3e38f;
    for (float& v : model.param("head.bn.bias").data) v = 3e38f;
    cpu::Network net(model);
    const Tensor logits = net.forward(x).logits;
    const int64_t row = first_non_finite_row(logits.ptr(), 2, model.config.num_classes);
    REQUIRE(row == 0);
    CHECK_THROWS_WITH(check_logits_finite(model, x.ptr(), x.shape, logits.ptr(), model.config.num_classes,
                                          "the test engine",
                                          [](int64_t r) { return "image " + std::to_string(r); }),
                      Catch::Contains("non-finite logits for image 0 on the test engine") &&
                          Catch::Contains("is 'head'") && Catch::Contains("3e+38, in 'head.bn."));
    // The first non-finite row is found wherever it is.
    std::vector<float> rows(3 * 4, 1.0f);
    rows[2 * 4 + 3] = std::numeric_limits<float>::quiet_NaN();
    CHECK(first_non_finite_row(rows.data(), 3, 4) == 2);
    rows[1 * 4 + 0] = -std::numeric_limits<float>::infinity();
    CHECK(first_non_finite_row(rows.data(), 3, 4) == 1);
}

TEST_CASE("hostile: a forward that cannot fit in memory is refused before it allocates", "[hostile]") {
    const ModelConfig b0 = preset("b0");
    // B0 at batch 1, 224x224: the widest eval layer is block 1's expand (input 16x112x112 plus
    // conv, BN and activation outputs of 96x112x112 floats); the estimate is that layer plus the
    // widest residual kept alongside it, in bytes.
    const NetworkPlan plan = make_network_plan(b0, 1, 224, 224);
    const uint64_t widest = uint64_t(16 + 3 * 96) * 112 * 112;
    uint64_t widest_residual = 0;
    for (const Layer& l : plan.layers)
        if (l.residual >= 0) widest_residual = std::max(widest_residual, uint64_t(l.out.numel()));
    CHECK(cpu::forward_memory_bytes(plan, false) == 4 * (widest + widest_residual));
    CHECK(cpu::forward_memory_bytes(plan, true) >
          5 * cpu::forward_memory_bytes(plan, false)); // every layer kept
    CHECK_NOTHROW(cpu::check_forward_memory(plan, false));

    // Batch 4096 at 2048x2048 needs petabytes: refused with both figures, nothing allocated.
    const uint64_t available = available_host_memory();
    if (available == 0) {
        WARN("skipped: this system does not say how much memory is available");
        return;
    }
    const NetworkPlan huge = make_network_plan(b0, 4096, 2048, 2048);
    CHECK_THROWS_WITH(cpu::check_forward_memory(huge, false),
                      Catch::Contains("[4096, 3, 2048, 2048]") && Catch::Contains("needs about") &&
                          Catch::Contains("is available") && Catch::Contains("smaller batch or image size"));
}
