// Builds a B0 with random weights through the installed package and runs one CPU forward.
#include <cmath>
#include <cstdio>

#include <effnet/config.hpp>
#include <effnet/cpu_engine.hpp>
#include <effnet/model.hpp>

int main() {
    try {
        effnet::Model model = effnet::random_model(effnet::preset("b0"), 7);
        effnet::cpu::Network net(model);
        effnet::Tensor input({1, 3, 64, 64});
        for (int64_t i = 0; i < input.numel(); ++i) input.data[i] = std::sin(0.01f * float(i));
        effnet::Tensor logits = net.forward(input).logits;
        for (float v : logits.data)
            if (!std::isfinite(v)) {
                std::fprintf(stderr, "error: non-finite logit\n");
                return 1;
            }
        std::printf("consumer: B0 (%lld parameters) gave %lld finite logits\n",
                    (long long)effnet::parameter_count(model.config), (long long)logits.numel());
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
