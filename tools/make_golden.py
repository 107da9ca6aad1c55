#!/usr/bin/env python3
"""Generate the golden fixtures under tests/data/golden/ from real PyTorch.

    python3 tools/make_golden.py [--out DIR] [--only NAME ...] [--compare DIR]

--compare DIR checks what was just written against the fixtures in DIR (normally the committed
tests/data/golden, with --out elsewhere): the same tensor names, dtypes, shapes and metadata
(version strings aside), and weights/convert.py turns the new .pth into exactly its param.* tensors.

Needs torch, torchvision and timm (a GPU machine has them; everything runs on the CPU). For each of
four tiny EfficientNets (width 0.25, depth 0.34, 10 classes, no dropout, no stochastic depth,
random BatchNorm statistics) it writes:

  NAME.pth                  torch.save(model.state_dict()), float32: the converter's input
  NAME_golden.safetensors   param.<key>          the same float32 parameters (int64 num_batches_tracked)
                            input                float64 NCHW batch
                            eval.logits          eval-mode (running statistics) output
                            eval.act.<module>    eval-mode output of each named stage
                            train.logits, train.loss, train.target
                                                 one train-mode forward (batch statistics) and
                                                 cross_entropy(logits, arange(N) % 10)
                            grad.input, grad.<parameter>   its backward
                            after_train.<buffer> running statistics after that forward

All math is float64 so the fixtures are exact to ~1e-15; the C++ tests state their own tolerances.
See tests/data/golden/README.md for the table of models.
"""
import argparse
import importlib.util
import json
import os
import struct
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTH, DEPTH, NUM_CLASSES, BATCH = 0.25, 0.34, 10, 2
BN_EPS_TF = 1e-3  # timm's BN_EPS_TF_DEFAULT: TensorFlow's BatchNorm epsilon

# name -> how to build it and what to record
MODELS = {
    "tv_tiny": dict(kind="torchvision", input_hw=(64, 72), seed=1),
    "timm_tiny": dict(kind="timm", variant="efficientnet_b0", input_hw=(65, 64), seed=2),
    "timm_tf_tiny": dict(kind="timm", variant="tf_efficientnet_b0", input_hw=(65, 64), seed=3),
    "timm_lite_tiny": dict(kind="timm", variant="tf_efficientnet_lite0", input_hw=(65, 64), seed=4),
}


def build_torchvision():
    import torchvision
    from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf

    setting, last_channel = _efficientnet_conf("efficientnet_b0", width_mult=WIDTH, depth_mult=DEPTH)
    model = EfficientNet(setting, dropout=0.0, stochastic_depth_prob=0.0, num_classes=NUM_CLASSES,
                         last_channel=last_channel)
    stages = [f"features.{i}" for i in range(len(model.features))] + ["avgpool"]
    metadata = {
        "source": "torchvision",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "width_mult": str(WIDTH),
        "depth_mult": str(DEPTH),
        "num_classes": str(NUM_CLASSES),
        "dropout": "0.0",
        "stochastic_depth_prob": "0.0",
        "bn_momentum": "0.1",
        "bn_eps": "1e-05",
        "padding": "symmetric",
        "activation": "silu",
    }
    return model, stages, metadata


def build_timm(variant):
    import timm
    import torchvision
    from timm.models.efficientnet import _gen_efficientnet, _gen_efficientnet_lite

    common = dict(channel_multiplier=WIDTH, depth_multiplier=DEPTH, pretrained=False,
                  num_classes=NUM_CLASSES, drop_rate=0.0, drop_path_rate=0.0)
    if variant == "efficientnet_b0":
        model = _gen_efficientnet(variant, **common)
        padding, bn_eps, activation = "symmetric", "1e-05", "silu"
    elif variant == "tf_efficientnet_b0":
        model = _gen_efficientnet(variant, bn_eps=BN_EPS_TF, pad_type="same", **common)
        padding, bn_eps, activation = "tf_same", "0.001", "silu"
    elif variant == "tf_efficientnet_lite0":
        # Lite: no squeeze-excite, ReLU6, stem fixed at 32 and head at 1280 channels.
        model = _gen_efficientnet_lite(variant, bn_eps=BN_EPS_TF, pad_type="same", **common)
        padding, bn_eps, activation = "tf_same", "0.001", "relu6"
    else:
        raise ValueError(f"unknown timm variant {variant}")
    stages = (["conv_stem", "bn1"] + [f"blocks.{i}" for i in range(len(model.blocks))]
              + ["conv_head", "bn2", "global_pool"])
    metadata = {
        "source": f"timm {timm.__version__}",
        "timm_variant": variant,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "width_mult": str(WIDTH),
        "depth_mult": str(DEPTH),
        "num_classes": str(NUM_CLASSES),
        "bn_eps": bn_eps,
        "padding": padding,
        "activation": activation,
    }
    return model, stages, metadata


def randomize_batchnorm(model, generator):
    """Every BatchNorm gets random affine parameters and running statistics, so a BN that is
    skipped, mis-folded or given the wrong eps changes the outputs visibly. (timm's BatchNormAct2d
    subclasses BatchNorm2d.)"""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(torch.rand(c, generator=generator) + 0.5)        # [0.5, 1.5)
                module.bias.copy_(torch.randn(c, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)   # [0.5, 1.5)


def record(model, stages, input_hw, generator):
    """Runs eval forward, one train forward + backward; returns name -> tensor (float64 math)."""
    out = {}
    model = model.double()
    x = torch.randn(BATCH, 3, *input_hw, generator=generator, dtype=torch.float64)
    out["input"] = x

    # Eval mode: running statistics; the named stages' outputs through forward hooks.
    modules = dict(model.named_modules())
    acts = {}
    hooks = [modules[name].register_forward_hook(
        lambda _m, _i, output, name=name: acts.__setitem__(name, output.detach().clone()))
        for name in stages]
    model.eval()
    with torch.no_grad():
        out["eval.logits"] = model(x)
    for h in hooks:
        h.remove()
    missing = [s for s in stages if s not in acts]
    if missing:
        raise RuntimeError(f"stages never ran: {missing}")
    for name in stages:
        out["eval.act." + name] = acts[name]

    # Train mode: batch statistics, one backward of the cross-entropy loss.
    model.train()
    model.zero_grad(set_to_none=True)
    x_grad = x.clone().requires_grad_(True)
    target = torch.arange(BATCH, dtype=torch.int64) % NUM_CLASSES
    logits = model(x_grad)
    loss = F.cross_entropy(logits, target)
    loss.backward()
    out["train.logits"] = logits.detach()
    out["train.loss"] = loss.detach().reshape(1)
    out["train.target"] = target
    out["grad.input"] = x_grad.grad
    for name, p in model.named_parameters():
        if p.grad is None:
            raise RuntimeError(f"parameter {name} got no gradient")
        out["grad." + name] = p.grad
    for name, b in model.named_buffers():
        out["after_train." + name] = b.detach()  # running_mean/var (momentum 0.1, unbiased), count
    return out


def save_safetensors(path, tensors, metadata):
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    try:
        from safetensors.torch import save_file
    except ImportError:
        save_file = None
    if save_file is not None:
        save_file(tensors, path, metadata=metadata)
        return
    # Fallback: the converter's own writer (numpy arrays + safetensors dtype names).
    convert = load_converter()
    names = {torch.float64: "F64", torch.float32: "F32", torch.int64: "I64"}
    arrays = {k: (v.numpy(), names[v.dtype]) for k, v in tensors.items()}
    convert.write_safetensors(path, arrays, metadata)


def load_converter():
    spec = importlib.util.spec_from_file_location("effnet_convert", os.path.join(ROOT, "weights", "convert.py"))
    convert = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(convert)
    return convert


def read_header(path):
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    metadata = header.pop("__metadata__", {})
    return {k: (v["dtype"], v["shape"]) for k, v in header.items()}, metadata


def read_raw(path):
    """name -> (dtype, shape, raw bytes) of every tensor in a safetensors file."""
    with open(path, "rb") as f:
        blob = f.read()
    (length,) = struct.unpack_from("<Q", blob, 0)
    header = json.loads(blob[8:8 + length])
    header.pop("__metadata__", None)
    base = 8 + length
    return {k: (v["dtype"], v["shape"], blob[base + v["data_offsets"][0]:base + v["data_offsets"][1]])
            for k, v in header.items()}


def compare(name, out_dir, reference_dir):
    """Returns a list of differences between the new fixture pair and the reference one."""
    problems = []
    new, new_meta = read_header(os.path.join(out_dir, name + "_golden.safetensors"))
    ref, ref_meta = read_header(os.path.join(reference_dir, name + "_golden.safetensors"))
    for key in sorted(set(new) ^ set(ref)):
        problems.append(f"{key}: only in {'new' if key in new else 'reference'}")
    for key in sorted(set(new) & set(ref)):
        if new[key] != ref[key]:
            problems.append(f"{key}: {new[key]} vs reference {ref[key]}")
    versions = ("torch", "torchvision", "source")
    for key in sorted(set(new_meta) | set(ref_meta)):
        if key not in versions and new_meta.get(key) != ref_meta.get(key):
            problems.append(f"metadata {key}: {new_meta.get(key)!r} vs reference {ref_meta.get(key)!r}")
    # The converter (no torch) must read the new .pth back to exactly the recorded parameters.
    convert = load_converter()
    path = os.path.join(out_dir, name + ".pth")
    obj, byteorder = convert.load_checkpoint(path)
    state, _ = convert.find_state_dict(obj, path)
    converted = convert.collect_tensors(state, path, byteorder)
    golden = read_raw(os.path.join(out_dir, name + "_golden.safetensors"))
    for key, (array, dtype) in converted.items():
        want = golden.get("param." + key)
        got = (dtype, list(array.shape), array.tobytes())
        if want != got:
            problems.append(f"converter: {key} differs from param.{key}")
    if len(converted) != sum(k.startswith("param.") for k in golden):
        problems.append(f"converter: {len(converted)} tensors, golden has a different number of param.*")
    return problems


def make(name, spec, out_dir):
    torch.manual_seed(spec["seed"])  # default inits (conv, linear) draw from the global generator
    generator = torch.Generator().manual_seed(1000 + spec["seed"])
    if spec["kind"] == "torchvision":
        model, stages, metadata = build_torchvision()
    else:
        model, stages, metadata = build_timm(spec["variant"])
    randomize_batchnorm(model, generator)

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for key, value in state.items():
        expected = torch.int64 if key.endswith("num_batches_tracked") else torch.float32
        if value.dtype != expected:
            raise RuntimeError(f"{name}: {key} is {value.dtype}, expected {expected}")
    pth = os.path.join(out_dir, name + ".pth")
    torch.save(model.state_dict(), pth)

    tensors = {"param." + k: v for k, v in state.items()}
    tensors.update(record(model, stages, spec["input_hw"], generator))
    golden = os.path.join(out_dir, name + "_golden.safetensors")
    save_safetensors(golden, tensors, metadata)
    print(f"wrote {pth} and {golden}: {len(state)} params, {len(tensors)} tensors, "
          f"eval logits {tuple(tensors['eval.logits'].shape)}, loss {tensors['train.loss'].item():.6f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "golden"))
    parser.add_argument("--only", nargs="+", choices=sorted(MODELS), help="models to regenerate")
    parser.add_argument("--compare", metavar="DIR", help="check the new files against the fixtures in DIR")
    args = parser.parse_args()
    if args.compare and os.path.realpath(args.compare) == os.path.realpath(args.out):
        parser.error("--compare needs --out to be another folder")
    os.makedirs(args.out, exist_ok=True)
    torch.set_default_dtype(torch.float32)
    failed = False
    for name in args.only or MODELS:
        make(name, MODELS[name], args.out)
        if args.compare:
            problems = compare(name, args.out, args.compare)
            for p in problems[:20]:
                print(f"  {name}: {p}")
            print(f"{name}: {'matches' if not problems else f'{len(problems)} differences from'} {args.compare}")
            failed = failed or bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
