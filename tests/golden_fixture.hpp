#pragma once
// The PyTorch golden fixtures of tests/data/golden (README.md there) as tests read them: where
// they are, each NAME.pth converted with the settings the fixture was made with, float64
// references as float32 tensors, and the relative error against them.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdlib>
#include <string>
#include <sys/stat.h>
#include <vector>

#include "effnet/safetensors.hpp"
#include "effnet/tensor.hpp"

namespace effnet::golden {

inline const std::string kGoldenDir = std::string(EFFNET_SOURCE_DIR) + "/tests/data/golden";

// ||ours - ref|| / ||ref|| in double, over the elements (shapes are checked by numel: PyTorch's
// avgpool keeps [N, C, 1, 1] where ours is [N, C]).
inline double rel_error(const Tensor& ours, const std::vector<double>& ref) {
    REQUIRE(size_t(ours.numel()) == ref.size());
    double num = 0, den = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
        const double d = double(ours.data[i]) - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
    }
    return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

inline Tensor to_tensor(const SafetensorsFile& f, const std::string& name) {
    Tensor t(f.info(name).shape);
    const std::vector<double> v = f.read_f64(name);
    for (size_t i = 0; i < v.size(); ++i) t.data[i] = float(v[i]);
    return t;
}

// Converts NAME.pth into out_dir with weights/convert.py and the settings the fixture was made
// with (its metadata); returns the output path.
inline std::string convert(const std::string& name, const SafetensorsFile& golden,
                           const std::string& out_dir) {
    ::mkdir(out_dir.c_str(), 0755);
    const std::string out = out_dir + "/" + name + ".safetensors";
    const auto& meta = golden.metadata();
    const std::string cmd = "python3 '" + std::string(EFFNET_SOURCE_DIR) + "/weights/convert.py' '" +
                            kGoldenDir + "/" + name + ".pth' '" + out + "' --padding " + meta.at("padding") +
                            " --bn-eps " + meta.at("bn_eps") + " --activation " + meta.at("activation") +
                            " > '" + out_dir + "/" + name + ".convert.log' 2>&1";
    INFO(cmd);
    REQUIRE(std::system(cmd.c_str()) == 0);
    return out;
}

} // namespace effnet::golden
