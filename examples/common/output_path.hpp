#pragma once
// Refusing an output path that names one of the program's inputs: writing there would destroy
// the input (effnet-run --output W.safetensors --weights W.safetensors once replaced the weights
// with the logits). Header-only, shared by the programs.
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "effnet/error.hpp"

namespace effnet::examples {

// inputs: (option name, path) pairs, e.g. {"weights", "w.safetensors"}. Throws naming both
// options when `output` is the same file as an input, however it is spelled (relative path,
// symbolic link, hard link). An output that does not exist yet names no input.
inline void check_output_is_not_input(const std::string& output_option, const std::string& output,
                                      const std::vector<std::pair<std::string, std::string>>& inputs) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (!fs::exists(output, ec)) return;
    for (const auto& [option, input] : inputs) {
        if (input.empty()) continue;
        std::error_code eq;
        const bool same = fs::equivalent(output, input, eq);
        EFFNET_CHECK(eq || !same, "--" + output_option + " '" + output + "' is the same file as --" + option +
                                      " '" + input + "'; refusing to overwrite an input");
    }
}

} // namespace effnet::examples
