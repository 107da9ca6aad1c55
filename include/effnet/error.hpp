#pragma once
// effnet::Error: every failure the library reports. The message names the file, tensor or
// shape at fault. The library never calls exit(); programs print "error: ..." and exit non-zero.
#include <stdexcept>
#include <string>

#include "effnet/limits.hpp"

namespace effnet {

class Error : public std::runtime_error {
public:
    explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// A value read from a file, as an error message quotes it: at most limits::kMaxQuotedChars
// characters, the rest replaced by "... (N bytes)", so a hostile file cannot fill a terminal.
inline std::string excerpt(const std::string& text) {
    if (text.size() <= limits::kMaxQuotedChars) return text;
    return text.substr(0, limits::kMaxQuotedChars) + "... (" + std::to_string(text.size()) + " bytes)";
}

// EFFNET_CHECK(cond, message-expression): throw effnet::Error when cond is false.
#define EFFNET_CHECK(cond, msg)                                                                              \
    do {                                                                                                     \
        if (!(cond)) throw ::effnet::Error(msg);                                                             \
    } while (0)

} // namespace effnet
