// Without CUDA: InferenceSession's feature calls, next to the other stubs of
// inference_common.cpp (a session cannot be built, so these are never reached on an object).
#include "effnet/error.hpp"
#include "effnet/inference.hpp"

namespace effnet {

#ifndef EFFNET_WITH_CUDA
void InferenceSession::run_features(const float*, float* const*, float*, bool) {
    throw Error("InferenceSession: built without CUDA");
}
const std::vector<FeatureInfo>& InferenceSession::features() const {
    static const std::vector<FeatureInfo> none;
    return none;
}
#endif

} // namespace effnet
