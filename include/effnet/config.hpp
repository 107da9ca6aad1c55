#pragma once
// Model configuration: the exact list of MBConv blocks plus stem, head and classifier.
// Presets follow torchvision (B0..B7) and TF/timm (Lite0..4); custom configs scale the B0
// stage table by width and depth. Loading weights infers a config from tensor shapes instead.
#include <cstdint>
#include <string>
#include <vector>

namespace effnet {

enum class Activation { SiLU, ReLU6 };
// Symmetric: pad (k-1)/2 on every side (torchvision, timm). TfSame: TF "SAME", asymmetric,
// computed per input size: total = max((ceil(in/s)-1)*s + k - in, 0), top/left = total/2.
enum class Padding { Symmetric, TfSame };

const char* activation_name(Activation a);         // "silu" | "relu6"
const char* padding_name(Padding p);               // "symmetric" | "tf_same"
Activation parse_activation(const std::string& s); // throws effnet::Error on unknown names
Padding parse_padding(const std::string& s);

struct BlockConfig {
    int in_channels = 0;
    int expand_channels = 0; // == in_channels when there is no expand 1x1 (expand ratio 1)
    int out_channels = 0;
    int kernel = 3;      // depthwise kernel, 3 or 5
    int stride = 1;      // depthwise stride, 1 or 2
    int se_channels = 0; // squeeze-excite bottleneck; 0 = no squeeze-excite
    int stage = 0;       // index of the stage (0..6) this block belongs to
    int index_in_stage = 0;
    float drop_path = 0.0f; // stochastic-depth probability for this block (training only)

    bool has_expand() const { return expand_channels != in_channels; }
    bool has_se() const { return se_channels > 0; }
    bool has_residual() const { return stride == 1 && in_channels == out_channels; }
};

// How images must be prepared for a set of weights (used by effnet-classify).
struct Preprocess {
    int resize = 256;                       // shorter side is resized to this ...
    int crop = 224;                         // ... then center-cropped to crop x crop
    std::string interpolation = "bilinear"; // "bilinear" | "bicubic"
    float mean[3] = {0.485f, 0.456f, 0.406f};
    float std[3] = {0.229f, 0.224f, 0.225f};
};

struct ModelConfig {
    std::string name = "custom"; // "b0".."b7", "lite0".."lite4", or "custom"
    int in_channels = 3;
    int stem_channels = 32;
    int head_channels = 1280;
    int num_classes = 1000;
    std::vector<BlockConfig> blocks;
    Activation activation = Activation::SiLU;
    Padding padding = Padding::Symmetric;
    float bn_eps = 1e-5f;
    float bn_momentum = 0.1f; // PyTorch convention: running = (1-m)*running + m*batch
    float dropout = 0.2f;     // before the classifier, training only
    float stochastic_depth = 0.2f;
    int resolution = 224; // native input size of the preset
    Preprocess preprocess;

    int num_stages() const { return blocks.empty() ? 0 : blocks.back().stage + 1; }
    // Throws effnet::Error naming the first inconsistency (channel chain, kernel, stride...).
    void validate() const;
};

// "b0".."b7", "lite0".."lite4" (case-insensitive, "efficientnet_" / "efficientnet-" prefixes allowed).
ModelConfig preset(const std::string& name, int num_classes = 1000);
std::vector<std::string> preset_names();

struct CustomOptions {
    double width = 1.0;
    double depth = 1.0;
    int num_classes = 1000;
    Padding padding = Padding::Symmetric;
    Activation activation = Activation::SiLU;
    bool squeeze_excite = true;
    float bn_eps = 1e-5f;
    int resolution = 224;
};
// torchvision's rules applied to the B0 stage table.
ModelConfig custom_config(const CustomOptions& options);

// Number of trainable parameters (conv/BN/linear weights and biases; no running statistics).
int64_t parameter_count(const ModelConfig& config);

// torchvision's _make_divisible(v * width, 8).
int round_channels(double channels, double width, int divisor = 8);

// Spatial output size of a convolution with the config's padding rule.
int conv_output_size(int in, int kernel, int stride, Padding padding);
// Padding before (top/left) and after (bottom/right) along one axis.
void conv_padding(int in, int kernel, int stride, Padding padding, int& before, int& after);

} // namespace effnet
