#pragma once
// effnet::Error: every failure the library reports. The message names the file, tensor or
// shape at fault. The library never calls exit(); programs print "error: ..." and exit non-zero.
#include <stdexcept>
#include <string>

namespace effnet {

class Error : public std::runtime_error {
public:
    explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// EFFNET_CHECK(cond, message-expression): throw effnet::Error when cond is false.
#define EFFNET_CHECK(cond, msg)                                                                              \
    do {                                                                                                     \
        if (!(cond)) throw ::effnet::Error(msg);                                                             \
    } while (0)

} // namespace effnet
