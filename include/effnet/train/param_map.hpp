#pragma once
// The parameter map the training API exchanges: canonical parameter name -> tensor.
#include <map>
#include <string>

#include "effnet/tensor.hpp"

namespace effnet::train {

using ParamMap = std::map<std::string, Tensor>; // canonical name -> tensor

} // namespace effnet::train
