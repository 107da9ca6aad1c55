// InferenceSession against misuse (issue 15): a batch that cannot fit in GPU memory is one
// error naming the bytes needed and free; two threads in one session are refused, never mixed.
#include <catch2/catch.hpp>

#include <atomic>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "effnet/config.hpp"
#include "effnet/error.hpp"
#include "effnet/inference.hpp"
#include "effnet/model.hpp"
#include "gpu/gpu_test_util.hpp"

using namespace effnet;

TEST_CASE("session: a batch too large for GPU memory names the bytes needed and free", "[gpu]") {
    EFFNET_SKIP_WITHOUT_GPU();
    const Model model = random_model(preset("b0", 1000), 3);
    // B0 at 16384 images of 600x600: terabytes of activations on any GPU of today.
    CHECK_THROWS_WITH(InferenceSession(model, 16384, 600, 600, Precision::FP32),
                      Catch::Contains("needs") && Catch::Contains("of GPU memory") &&
                          Catch::Contains("free of") && Catch::Contains("smaller batch"));
    // The device is usable afterwards: a normal session builds and runs.
    InferenceSession ok(model, 2, 64, 64, Precision::FP32);
    std::vector<float> x(size_t(2) * 3 * 64 * 64, 0.5f), logits(size_t(2) * 1000);
    ok.run(x.data(), logits.data());
    CHECK(std::isfinite(logits[0]));
}

TEST_CASE("session: concurrent run() from two threads is refused, sequential use is exact", "[gpu]") {
    EFFNET_SKIP_WITHOUT_GPU();
    const Model model = random_model(preset("b0", 1000), 4);
    InferenceSession session(model, 8, 128, 128, Precision::FP32, {});
    std::vector<float> x(size_t(8) * 3 * 128 * 128);
    for (size_t i = 0; i < x.size(); ++i) x[i] = float(std::sin(0.01 * double(i)));
    std::vector<float> expected(size_t(8) * 1000);
    session.run(x.data(), expected.data());

    std::atomic<int> refused{0}, wrong{0}, done{0};
    auto worker = [&] {
        std::vector<float> logits(expected.size());
        for (int i = 0; i < 200; ++i) {
            try {
                session.run(x.data(), logits.data());
                ++done;
                if (logits != expected) ++wrong;
            } catch (const Error& e) {
                if (std::string(e.what()).find("in use by another thread") != std::string::npos) ++refused;
            }
        }
    };
    std::thread a(worker), b(worker);
    a.join();
    b.join();
    INFO("completed " << done << ", refused " << refused);
    CHECK(wrong == 0); // a call that ran alone gave the single-threaded answer bit for bit
    CHECK(done + refused == 400);
    CHECK(refused > 0); // two threads looping over a ~ms call collide at least once in 400
    CHECK(done > 0);
}
