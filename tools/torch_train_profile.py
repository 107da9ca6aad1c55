#!/usr/bin/env python3
"""PyTorch's training step under torch.profiler: torchvision EfficientNet, channels_last, SGD
momentum, AMP fp16 (GradScaler), as bench/pytorch_train_bench.py times it. Prints the CUDA
kernels summed over the profiled steps, per step.

  python3 tools/torch_train_profile.py --variant b0 --batch 128 [--precision fp32]
"""
import argparse

RESOLUTION = {"b0": 224, "b1": 240, "b2": 288, "b3": 300, "b4": 380, "b5": 456, "b6": 528, "b7": 600}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="b0", choices=sorted(RESOLUTION))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--precision", default="amp-fp16", choices=["amp-fp16", "fp32"])
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    import torch
    import torch.nn.functional as F
    import torchvision
    from torch.profiler import ProfilerActivity, profile

    torch.backends.cudnn.benchmark = True
    res = RESOLUTION[args.variant]
    model = getattr(torchvision.models, f"efficientnet_{args.variant}")(num_classes=1000)
    model = model.cuda().to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch, 3, res, res, device="cuda").to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.batch,), device="cuda")
    amp = args.precision == "amp-fp16"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
    def device_us(e):
        return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0) or 0

    events = [e for e in prof.key_averages() if device_us(e) > 0]
    total = sum(device_us(e) for e in events)
    print(f"{args.variant} b{args.batch} {args.precision}: kernels {total / 1e3 / args.steps:.3f} ms/step")
    events.sort(key=lambda e: -device_us(e))
    for e in events[:45]:
        t = device_us(e)
        print(f"{t / 1e3 / args.steps:9.3f} ms {100 * t / max(total, 1):5.1f}% {e.count / args.steps:7.1f}  {e.key[:140]}")


if __name__ == "__main__":
    main()
