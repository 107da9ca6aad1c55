// Catch2 v2 main of the GPU test binary (effnet_gpu_tests). Test cases that need a GPU and find
// none return early through EFFNET_SKIP_WITHOUT_GPU, which Catch counts as passed; this main
// counts them, and when every test case it ran was skipped it prints why and exits with
// kSkipExitCode (77), which ctest reports as skipped (SKIP_RETURN_CODE, tests/CMakeLists.txt).
// A run with some test cases skipped and others run keeps Catch's exit status and says which
// were skipped.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>

#include "gpu/gpu_test_util.hpp"

namespace {

int test_cases_run = 0;

struct CountTestCases : Catch::TestEventListenerBase {
    using TestEventListenerBase::TestEventListenerBase;
    void testCaseEnded(const Catch::TestCaseStats& stats) override {
        ++test_cases_run;
        TestEventListenerBase::testCaseEnded(stats);
    }
};

} // namespace

CATCH_REGISTER_LISTENER(CountTestCases)

int main(int argc, char* argv[]) {
    Catch::Session session;
    const int rc = session.applyCommandLine(argc, argv);
    if (rc != 0) return rc;
    const int result = session.run();
    const int skipped = effnet::gpu_test::skipped_test_cases();
    if (skipped > 0) {
        std::printf("skipped: %d of %d test case(s) (no usable GPU: %s)\n", skipped, test_cases_run,
                    effnet::cuda_device_description().c_str());
        if (result == 0 && skipped == test_cases_run) return effnet::gpu_test::kSkipExitCode;
    }
    return result;
}
