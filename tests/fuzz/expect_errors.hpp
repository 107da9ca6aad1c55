#pragma once
// What every harness allows a loader to do with hostile input: return, or throw effnet::Error
// with a message of bounded length (issue 15: an error once quoted 100 KB of a file). Any
// other exception (std::bad_alloc, a JSON library error, std::out_of_range...) names nothing
// useful to the user, so it aborts and libFuzzer records the input as a crash.
#include <cstdio>
#include <cstdlib>
#include <exception>

#include "effnet/error.hpp"

// Generous: a path, a tensor name and a quoted value each fit many times over.
constexpr size_t kMaxErrorMessageChars = 4096;

template <class Load>
void expect_only_effnet_errors(Load&& load) {
    try {
        load();
    } catch (const effnet::Error& e) {
        const std::string message = e.what();
        if (message.size() > kMaxErrorMessageChars) {
            std::fprintf(stderr, "effnet::Error message of %zu chars (limit %zu): %.300s...\n",
                         message.size(), kMaxErrorMessageChars, message.c_str());
            std::abort();
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "not an effnet::Error: %s\n", e.what());
        std::abort();
    }
}
