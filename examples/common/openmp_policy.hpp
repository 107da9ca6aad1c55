#pragma once
// OpenMP threads that wait by spinning (libgomp's default) make a busy machine crawl: the
// reference engine's many short parallel loops ran 30x slower on two loaded cores. libgomp reads
// OMP_WAIT_POLICY once, when it is loaded, so a program that wants "passive" by default must set
// it before it starts: it executes itself again with the variable set, unless the user chose a
// policy. (The fast CPU path has its own threads and does not depend on this.)
#include <unistd.h>

#include <cstdlib>

namespace effnet::examples {

inline void use_passive_openmp(char** argv) {
    if (std::getenv("OMP_WAIT_POLICY") != nullptr) return; // the user's choice, or done already
    if (setenv("OMP_WAIT_POLICY", "passive", 1) != 0) return;
    execv("/proc/self/exe", argv); // returns only on failure: go on with libgomp's default
}

} // namespace effnet::examples
