#!/usr/bin/env python3
"""How much of the GPU training step's gradient error is inherent to its storage precision?

Needs torch (CPU build is enough) and numpy. Usage:

    python tools/amp_error_study.py --dump-dir DIR [--make-dump LIBEFFNET_A] [--bf16-autocast]
                                    [--realisations K] [--out FILE]

bench/results/2026-11-27-amp-error-study.txt is the output of
    --make-dump <CPU build>/libeffnet/libeffnet.a --bf16-autocast --realisations 6
(about 4 minutes on 2 cores).

DIR holds tiny.safetensors and b0.safetensors: the exact models, inputs and targets of
tests/gpu/test_training.cpp (test_model(config, 17), random_tensor(.., 23, -2, 2), targets
(3n+1) % K) plus the CPU reference's (libeffnet/cpu, fp32 storage, double accumulation) step-1
logits, loss and gradients. Make them with --make-dump LIBEFFNET_A, which compiles and runs the
small C++ program embedded below (DUMP_CPP) against a CPU build of libeffnet
(cmake -DEFFNET_ENABLE_CUDA=OFF, target effnet).

The network is written out here with torch ops (NCHW, same layers as libeffnet/cpu/network.cpp)
and run in float64. Half precision is emulated by rounding exactly where the GPU trainer
(libeffnet/cuda/train_step.cpp) stores a tensor in fp16 / bf16, and nowhere else:
  forward:  the stem's im2col input; the GEMM weights (stem, expand, project, head convs; the
            depthwise, squeeze-excite, BN and classifier weights stay fp32); every conv output
            z (BN input); every BN(+act) output; the squeeze-excite output x * gate; the block
            output (after the residual add); the head's activated output;
  backward: the gradient of each of those activations (the GPU keeps the backward's
            activation gradients in half, multiplied by the loss scale 1024; fp16 is rounded
            at scale 1024, which only matters for underflow), i.e. dz of every BN backward, the
            dgrad of every GEMM (summed with the residual gradient in fp32 before rounding, as
            cuBLAS beta = 1 does), the squeeze-excite dx and the depthwise dx.
Everything between rounding points is float64, so the result is the error that storage
rounding alone causes (the GPU's fp32 accumulation adds ~1e-6, negligible at half precision).
Rounding is done by a torch.autograd.Function: forward rounds the value, backward rounds the
incoming gradient. torch.autocast is not used for the main numbers because its casting rules
(which ops run in half, where BN reads fp32) are not the GPU trainer's; --bf16-autocast adds a
stock CPU autocast bf16 run as a cross-check of "what PyTorch AMP does".

Reported: relative norm error ||g - g_ref|| / ||g_ref|| per parameter against the float64
reference (BN bias gradients normalised by the same BN's weight-gradient norm, as the test does),
for: float32 (torch's fp32 arithmetic), fp16 / bf16 storage emulation, forward-only and
backward-only rounding (to attribute the error), and the two-step fp32 Nesterov + label
smoothing 0.1 case (SGD lr 0.1, momentum 0.9, weight decay 1e-2 on conv/linear weights).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

LOSS_SCALE = 1024.0

# ---------------------------------------------------------------------------------------------
# Model data


def read_safetensors(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    out = {}
    for name, h in header.items():
        assert h["dtype"] == "F32", name
        a, b = h["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=np.float32).reshape(h["shape"]).copy()
    return out, json.loads(meta["config"])


# ---------------------------------------------------------------------------------------------
# Rounding points


class Round(torch.autograd.Function):
    """Forward: round to `fwd` (a torch dtype or None); backward: round the gradient to `bwd`
    at the loss scale."""

    @staticmethod
    def forward(ctx, x, fwd, bwd):
        ctx.bwd = bwd
        return x.to(fwd).to(x.dtype) if fwd is not None else x.clone()

    @staticmethod
    def backward(ctx, g):
        if ctx.bwd is None:
            return g, None, None
        return (g * LOSS_SCALE).to(ctx.bwd).to(g.dtype) / LOSS_SCALE, None, None


class Policy:
    """Where to round: fwd / bwd dtypes (None: keep the compute dtype)."""

    def __init__(self, name, fwd=None, bwd=None, weights=None):
        self.name, self.fwd, self.bwd = name, fwd, bwd
        self.weights = weights if weights is not None else fwd

    def act(self, x):  # a stored activation: rounded in the forward, its gradient in the backward
        if self.fwd is None and self.bwd is None:
            return x
        return Round.apply(x, self.fwd, self.bwd)

    def gemm_weight(self, w):  # the half copy of a master weight; its gradient stays fp32
        return w if self.weights is None else Round.apply(w, self.weights, None)

    def input(self, x):  # im2col columns
        return x if self.fwd is None else Round.apply(x, self.fwd, None)


# ---------------------------------------------------------------------------------------------
# The network (libeffnet/cpu/network.cpp, train mode, no dropout)


def bn_train(z, p, prefix, eps):
    # batch statistics, biased variance (running statistics do not affect the gradients)
    mean = z.mean(dim=(0, 2, 3), keepdim=True)
    var = ((z - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    xhat = (z - mean) / torch.sqrt(var + eps)
    return xhat * p[prefix + ".bn.weight"].view(1, -1, 1, 1) + p[prefix + ".bn.bias"].view(1, -1, 1, 1)


def forward(p, cfg, x, pol):
    eps = cfg["bn_eps"]
    act = F.silu
    # stem: im2col in half, GEMM with half weights, z and y stored
    z = pol.act(F.conv2d(pol.input(x), pol.gemm_weight(p["stem.conv.weight"]), stride=2, padding=1))
    h = pol.act(act(bn_train(z, p, "stem", eps)))
    for i, (cin, e, cout, k, s, se) in enumerate(cfg["blocks"]):
        q = "blocks.%d." % i
        inp = h
        if e != cin:
            z = pol.act(F.conv2d(h, pol.gemm_weight(p[q + "expand.conv.weight"])))
            h = pol.act(act(bn_train(z, p, q + "expand", eps)))
        # depthwise: fp32 weights, half input and output
        z = pol.act(F.conv2d(h, p[q + "dw.conv.weight"], stride=s, padding=(k - 1) // 2, groups=e))
        h = pol.act(act(bn_train(z, p, q + "dw", eps)))
        if se > 0:  # small tensors in fp32; only the gated output is stored
            sq = h.mean(dim=(2, 3), keepdim=True)
            r = act(F.conv2d(sq, p[q + "se.reduce.weight"], p[q + "se.reduce.bias"]))
            gate = torch.sigmoid(F.conv2d(r, p[q + "se.expand.weight"], p[q + "se.expand.bias"]))
            h = pol.act(h * gate)
        z = pol.act(F.conv2d(h, pol.gemm_weight(p[q + "project.conv.weight"])))
        h = bn_train(z, p, q + "project", eps)
        if s == 1 and cin == cout:
            h = h + inp
        h = pol.act(h)  # block output
    z = pol.act(F.conv2d(h, pol.gemm_weight(p["head.conv.weight"])))
    h = pol.act(act(bn_train(z, p, "head", eps)))
    pooled = h.mean(dim=(2, 3))  # fp32
    return F.linear(pooled, p["classifier.weight"], p["classifier.bias"])


def trainable(name):
    return not (name.endswith("running_mean") or name.endswith("running_var"))


def decays(name):
    return name.endswith(".weight") and ".bn." not in name


def step_grads(params, cfg, x, target, pol, ls, dtype, dither=None):
    """dither: (seed, amplitude); multiplies the input by (1 + amplitude * N(0, 1)) for another
    rounding realisation (how far that moves the float64 reference is in the report)."""
    p = {k: torch.tensor(v, dtype=dtype, requires_grad=True) for k, v in params.items() if trainable(k)}
    if dither is not None:
        x = x * (1.0 + dither[1] * np.random.default_rng(dither[0]).standard_normal(x.shape))
    logits = forward(p, cfg, torch.tensor(x, dtype=dtype), pol)
    loss = F.cross_entropy(logits, torch.tensor(target, dtype=torch.long), label_smoothing=ls)
    grads = torch.autograd.grad(loss, list(p.values()))
    return {k: g.detach().double().numpy() for k, g in zip(p.keys(), grads)}, logits.detach().double().numpy(), float(loss)


def sgd_steps(params, cfg, x, target, pol, ls, dtype, steps, lr=0.1, mu=0.9, wd=1e-2, nesterov=True, dither=None):
    """The test's steps: gradients, then PyTorch SGD (dampening 0); returns each step's grads."""
    w = {k: np.array(v, dtype=np.float64) for k, v in params.items() if trainable(k)}
    buf = {k: np.zeros_like(v) for k, v in w.items()}
    out = []
    npdt = np.float32 if dtype == torch.float32 else np.float64
    for _ in range(steps):
        g, logits, loss = step_grads({k: v.astype(npdt) for k, v in w.items()}, cfg, x, target, pol, ls, dtype, dither)
        out.append((g, logits, loss))
        for k in w:
            gi = g[k] + (wd * w[k] if decays(k) else 0.0)
            buf[k] = mu * buf[k] + gi
            u = gi + mu * buf[k] if nesterov else buf[k]
            w[k] = (w[k] - lr * u).astype(npdt).astype(np.float64)
    return out


# ---------------------------------------------------------------------------------------------
# Error measures (as tests/gpu/test_training.cpp's grad_error)


def grad_errors(got, want):
    errs = {}
    for k, ref in want.items():
        den = np.linalg.norm(ref)
        if k.endswith(".bn.bias"):
            den = max(den, np.linalg.norm(want[k[: -len("bias")] + "weight"]))
        errs[k] = np.linalg.norm(got[k].astype(np.float64) - ref) / den if den > 0 else np.linalg.norm(got[k])
    return errs


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def summarize(errs):
    v = np.array(list(errs.values()))
    worst = max(errs, key=errs.get)
    return "median %.2e  p90 %.2e  max %.2e (%s)" % (np.median(v), np.percentile(v, 90), v.max(), worst)


def group_of(name):
    if ".se.reduce." in name:
        return "se.reduce"
    if ".se.expand." in name:
        return "se.expand"
    for part in ("stem", "head", "classifier"):
        if name.startswith(part):
            return part
    return name.split(".")[2] + (".bn" if ".bn." in name else ".conv")


def by_group(errs):
    groups = {}
    for k, e in errs.items():
        groups.setdefault(group_of(k), []).append(e)
    return "  ".join("%s %.1e" % (g, max(v)) for g, v in sorted(groups.items()))


# ---------------------------------------------------------------------------------------------


def study(label, path, args, out):
    data, cfg = read_safetensors(path)
    params = {k[len("param."):]: v for k, v in data.items() if k.startswith("param.")}
    x, target = data["input"].astype(np.float64), data["target"].astype(np.int64)
    cpu_grads = {k[len("cpu.grad."):]: v for k, v in data.items() if k.startswith("cpu.grad.")}
    say = lambda s="": (print(s), out.append(s))
    say("=" * 100)
    say("%s: input %s, %d blocks, %d trainable tensors" % (label, "x".join(map(str, x.shape)), len(cfg["blocks"]), len(cpu_grads)))
    f64 = Policy("float64")
    ref, ref_logits, ref_loss = step_grads(params, cfg, x, target, f64, 0.0, torch.float64)
    cpu_e = grad_errors(cpu_grads, ref)
    say("check: CPU reference (libeffnet/cpu) vs this float64 torch model: logits %.1e, loss %.1e, grads %s"
        % (rel(data["cpu.logits"], ref_logits), abs(float(data["cpu.loss"][0]) - ref_loss) / ref_loss, summarize(cpu_e)))
    h, b = torch.float16, torch.bfloat16
    policies = [
        ("float32 (torch fp32 arithmetic)", Policy("fp32"), torch.float32),
        ("fp32 storage, float64 math (~ the CPU reference)", Policy("fp32s", torch.float32, torch.float32), torch.float64),
        ("amp-fp16 storage (GPU rounding points)", Policy("fp16", h, h), torch.float64),
        ("amp-fp16 storage, fp32 math (2nd rounding realisation)", Policy("fp16", h, h), torch.float32),
        ("amp-fp16 forward rounding only", Policy("fp16f", h, None), torch.float64),
        ("amp-fp16 backward rounding only", Policy("fp16b", None, h, weights=None), torch.float64),
        ("amp-bf16 storage (GPU rounding points)", Policy("bf16", b, b), torch.float64),
        ("amp-bf16 storage, fp32 math (2nd rounding realisation)", Policy("bf16", b, b), torch.float32),
        ("amp-bf16 forward rounding only", Policy("bf16f", b, None), torch.float64),
        ("amp-bf16 backward rounding only", Policy("bf16b", None, b, weights=None), torch.float64),
    ]
    results = {}
    for name, pol, dt in policies:
        g, lg, loss = step_grads(params, cfg, x, target, pol, 0.0, dt)
        e = grad_errors(g, ref)
        results[name] = (e, g)
        say()
        say("%s: loss %.1e  logits %.1e" % (name, abs(loss - ref_loss) / ref_loss, rel(lg, ref_logits)))
        say("  grads: " + summarize(e))
        say("  worst per group: " + by_group(e))
    # the two rounding realisations against each other: how much the error itself moves
    for prec in ("fp16", "bf16"):
        g1 = results["amp-%s storage (GPU rounding points)" % prec][1]
        g2 = results["amp-%s storage, fp32 math (2nd rounding realisation)" % prec][1]
        say()
        say("amp-%s realisation 1 vs 2 (same rounding points, fp64 vs fp32 math between them): %s"
            % (prec, summarize(grad_errors(g1, g2))))
    # per-parameter table of the parameters the GPU log flagged
    names = [k for k in ref if ".se." in k and ("blocks.0." in k or "blocks.1." in k or "blocks.2." in k or "blocks.5." in k)]
    names += [k for k in ref if k.startswith("stem") or k.startswith("blocks.0.") or k.startswith("head.conv")]
    seen = set()
    say()
    cols = ["float32 (torch fp32 arithmetic)", "amp-fp16 storage (GPU rounding points)",
            "amp-fp16 storage, fp32 math (2nd rounding realisation)", "amp-bf16 storage (GPU rounding points)",
            "amp-bf16 storage, fp32 math (2nd rounding realisation)"]
    say("%-34s %10s %10s %10s %10s %10s %10s" % ("parameter", "|g64|", "fp32", "fp16", "fp16(2)", "bf16", "bf16(2)"))
    for k in names:
        if k in seen:
            continue
        seen.add(k)
        say("%-34s %10.2e " % (k, np.linalg.norm(ref[k])) + " ".join("%10.2e" % results[c][0][k] for c in cols))
    return cfg, params, x, target


def nesterov_study(cfg, params, x, target, out):
    say = lambda s="": (print(s), out.append(s))
    say()
    say("two steps, SGD lr 0.1 momentum 0.9 nesterov, weight decay 1e-2, label smoothing 0.1:")
    ref = sgd_steps(params, cfg, x, target, Policy("f64"), 0.1, torch.float64, 2)
    for name, pol, dt in [("float32 (torch fp32 arithmetic)", Policy("fp32"), torch.float32),
                          ("fp32 storage, float64 math (~ the CPU reference)", Policy("s", torch.float32, torch.float32), torch.float64)]:
        got = sgd_steps(params, cfg, x, target, pol, 0.1, dt, 2)
        for s in range(2):
            e = grad_errors(got[s][0], ref[s][0])
            say("  %s step %d: logits %.1e  grads %s" % (name, s + 1, rel(got[s][1], ref[s][1]), summarize(e)))
            se = {k: v for k, v in e.items() if ".se.reduce." in k}
            top = sorted(se, key=se.get, reverse=True)[:4]
            say("    se.reduce worst: " + "  ".join("%s %.1e" % (k, se[k]) for k in top))
    # without label smoothing / nesterov, for contrast
    ref0 = sgd_steps(params, cfg, x, target, Policy("f64"), 0.0, torch.float64, 2, nesterov=False)
    got0 = sgd_steps(params, cfg, x, target, Policy("fp32"), 0.0, torch.float32, 2, nesterov=False)
    e = grad_errors(got0[1][0], ref0[1][0])
    say("  contrast, plain momentum, no smoothing, float32 step 2: grads " + summarize(e))


def realisations(label, runs, ref, out):
    """runs: list of (grads, logits, loss) from dithered realisations; one line each plus the
    largest of each measure, which is what a test bound has to cover."""
    say = lambda s="": (print(s), out.append(s))
    rows = []
    for g, lg, loss in runs:
        e = grad_errors(g, ref[0])
        v = np.array(list(e.values()))
        rows.append((v.max(), np.median(v), rel(lg, ref[1]), abs(loss - ref[2]) / ref[2], max(e, key=e.get)))
    say("%s, %d realisations:" % (label, len(runs)))
    for r in rows:
        say("    worst grad %.2e (%s)  median grad %.2e  logits %.2e  loss %.2e" % (r[0], r[4], r[1], r[2], r[3]))
    m = np.array([r[:4] for r in rows]).max(axis=0)
    say("  LARGEST: worst grad %.2e  median grad %.2e  logits %.2e  loss %.2e" % tuple(m))


def realisation_study(cfg, params, x, target, kinds, k, out):
    ref = step_grads(params, cfg, x, target, Policy("f64"), 0.0, torch.float64)
    say = lambda s="": (print(s), out.append(s))
    say()
    for amp in (1e-7, 1e-5):
        moved = grad_errors(step_grads(params, cfg, x, target, Policy("f64"), 0.0, torch.float64, (99, amp))[0], ref[0])
        say("the dither itself at %.0e (float64 dithered vs float64): grads %s" % (amp, summarize(moved)))
    for name, pol, dt in kinds:
        # bf16's ulp is 2^-8: a 1e-7 dither rarely changes any bf16 rounding, 1e-5 does
        amp = 1e-5 if "bf16" in name else 1e-7
        realisations("%s (input dithered by %.0e)" % (name, amp),
                     [step_grads(params, cfg, x, target, pol, 0.0, dt, (100 + i, amp)) for i in range(k)], ref, out)


def nesterov_realisations(cfg, params, x, target, k, out):
    ref = sgd_steps(params, cfg, x, target, Policy("f64"), 0.1, torch.float64, 2)
    runs = [sgd_steps(params, cfg, x, target, Policy("fp32"), 0.1, torch.float32, 2, dither=(200 + i, 1e-7))
            for i in range(k)]
    out_ref = lambda s: (ref[s][0], ref[s][1], ref[s][2])
    for s in range(2):
        realisations("  float32, nesterov + label smoothing 0.1, step %d (input dithered by 1e-7)" % (s + 1), [r[s] for r in runs], out_ref(s), out)
    ref0 = sgd_steps(params, cfg, x, target, Policy("f64"), 0.0, torch.float64, 2, nesterov=False)
    runs0 = [sgd_steps(params, cfg, x, target, Policy("fp32"), 0.0, torch.float32, 2, nesterov=False, dither=(300 + i, 1e-7))
             for i in range(k)]
    realisations("  float32, plain momentum, no smoothing, step 2 (input dithered by 1e-7)", [r[1] for r in runs0], ref0[1], out)


def autocast_check(cfg, params, x, target, out):
    say = lambda s="": (print(s), out.append(s))
    ref, _, _ = step_grads(params, cfg, x, target, Policy("f64"), 0.0, torch.float64)
    p = {k: torch.tensor(v, dtype=torch.float32, requires_grad=True) for k, v in params.items() if trainable(k)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = forward(p, cfg, torch.tensor(x, dtype=torch.float32), Policy("none"))
    loss = F.cross_entropy(logits.float(), torch.tensor(target, dtype=torch.long))
    g = dict(zip(p.keys(), [t.double().numpy() for t in torch.autograd.grad(loss, list(p.values()))]))
    e = grad_errors(g, ref)
    say()
    say("cross-check, stock torch.autocast('cpu', bfloat16) on the same model: grads " + summarize(e))
    say("  worst per group: " + by_group(e))


DUMP_CPP = r"""
#include <cstdio>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>
#include "effnet/config.hpp"
#include "effnet/cpu_engine.hpp"
#include "effnet/model.hpp"
#include "cpu/ops.hpp"
using namespace effnet;
// random_tensor and test_model exactly as tests/gpu/gpu_test_util.hpp / test_training.cpp
static Tensor random_tensor(const Shape &shape, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
    Tensor t(shape); std::mt19937_64 rng(seed); std::uniform_real_distribution<float> dist(lo, hi);
    for (float &v : t.data) v = dist(rng);
    return t;
}
static Model test_model(const ModelConfig &config, uint64_t seed) {
    Model m = random_model(config, seed);
    uint64_t s = seed * 1000;
    for (auto &[name, t] : m.params) {
        const auto ends = [&](const char *suf) { const std::string x(suf);
            return name.size() >= x.size() && name.compare(name.size() - x.size(), x.size(), x) == 0; };
        if (name.find(".bn.") == std::string::npos) continue;
        if (ends(".weight")) t = random_tensor(t.shape, ++s, 0.5f, 1.5f);
        else if (ends(".bias")) t = random_tensor(t.shape, ++s, -0.3f, 0.3f);
        else if (ends(".running_mean")) t = random_tensor(t.shape, ++s, -0.2f, 0.2f);
        else if (ends(".running_var")) t = random_tensor(t.shape, ++s, 0.5f, 1.5f);
    }
    return m;
}
static void write_st(const std::string &path, const std::map<std::string, Tensor> &ts, const std::string &meta) {
    std::string h = "{\"__metadata__\":{\"config\":" + meta + "}";
    size_t off = 0;
    for (auto &[n, t] : ts) {
        h += ",\"" + n + "\":{\"dtype\":\"F32\",\"shape\":[";
        for (size_t i = 0; i < t.shape.size(); ++i) h += (i ? "," : "") + std::to_string(t.shape[i]);
        h += "],\"data_offsets\":[" + std::to_string(off) + "," + std::to_string(off + t.data.size() * 4) + "]}";
        off += t.data.size() * 4;
    }
    h += "}";
    while (h.size() % 8) h += ' ';
    std::ofstream f(path, std::ios::binary);
    uint64_t len = h.size();
    f.write((const char *)&len, 8); f.write(h.data(), h.size());
    for (auto &[n, t] : ts) f.write((const char *)t.data.data(), t.data.size() * 4);
}
static std::string config_json(const ModelConfig &c) {
    std::string s = "\"{\\\"bn_eps\\\":" + std::to_string(c.bn_eps) + ",\\\"blocks\\\":[";
    for (size_t i = 0; i < c.blocks.size(); ++i) {
        const BlockConfig &b = c.blocks[i];
        s += std::string(i ? "," : "") + "[" + std::to_string(b.in_channels) + "," + std::to_string(b.expand_channels) + "," +
             std::to_string(b.out_channels) + "," + std::to_string(b.kernel) + "," + std::to_string(b.stride) + "," +
             std::to_string(b.se_channels) + "]";
    }
    return s + "]}\"";
}
static void dump(const std::string &dir, const std::string &label, const ModelConfig &config, int N, int H, int W) {
    const Model start = test_model(config, 17);
    Model m = start;
    const Tensor input = random_tensor({N, config.in_channels, H, W}, 23, -2.0f, 2.0f);
    std::vector<int64_t> targets;
    for (int n = 0; n < N; ++n) targets.push_back((n * 3 + 1) % config.num_classes);
    std::map<std::string, Tensor> out;
    for (auto &[n, t] : start.params) out["param." + n] = t;
    out["input"] = input;
    Tensor tt({N});
    for (int n = 0; n < N; ++n) tt.data[n] = float(targets[n]);
    out["target"] = tt;
    cpu::Network net(m);
    cpu::ForwardOptions fo; fo.train = true; fo.dropout = false; fo.seed = 1000;
    const cpu::ForwardResult fr = net.forward(input, fo);
    Tensor dlogits;
    const double loss = cpu::softmax_cross_entropy(fr.logits, targets, 0.0f, &dlogits);
    const cpu::Gradients g = net.backward(dlogits);
    out["cpu.logits"] = fr.logits;
    Tensor l({1}); l.data[0] = float(loss); out["cpu.loss"] = l;
    for (auto &[n, t] : g.params) out["cpu.grad." + n] = t;
    write_st(dir + "/" + label + ".safetensors", out, config_json(config));
}
int main(int argc, char **argv) {
    CustomOptions o; o.width = 0.25; o.depth = 0.34; o.num_classes = 10;
    dump(argv[1], "tiny", custom_config(o), 2, 64, 72);
    dump(argv[1], "b0", preset("b0"), 2, 64, 64);
}
"""


def make_dump(lib, dump_dir):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.makedirs(dump_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = os.path.join(tmp, "dump.cpp"), os.path.join(tmp, "dump")
        with open(src, "w") as f:
            f.write(DUMP_CPP)
        subprocess.run(["g++", "-O2", "-std=c++17", "-fopenmp", "-I" + os.path.join(root, "include"), "-I" + root,
                        "-I" + os.path.join(root, "libeffnet"), src, lib, "-o", exe], check=True)
        subprocess.run([exe, dump_dir], check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dump-dir", required=True)
    ap.add_argument("--make-dump", metavar="LIBEFFNET_A", help="first write the dumps with this CPU libeffnet.a")
    ap.add_argument("--bf16-autocast", action="store_true")
    ap.add_argument("--realisations", type=int, default=0, metavar="K",
                    help="K dithered rounding realisations per case (the spread a test bound must cover)")
    ap.add_argument("--out", help="also write the report here")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if args.make_dump:
        make_dump(args.make_dump, args.dump_dir)
    out = ["amp_error_study.py: torch %s, emulated storage rounding vs float64; see the docstring" % torch.__version__]
    print(out[0])
    cfg, params, x, target = study("tiny (width 0.25, depth 0.34, 10 classes), batch 2, 64x72",
                                   os.path.join(args.dump_dir, "tiny.safetensors"), args, out)
    nesterov_study(cfg, params, x, target, out)
    if args.bf16_autocast:
        autocast_check(cfg, params, x, target, out)
    h, b = torch.float16, torch.bfloat16
    if args.realisations:
        realisation_study(cfg, params, x, target, [("tiny float32", Policy("fp32"), torch.float32),
                                                   ("tiny amp-fp16", Policy("fp16", h, h), torch.float64),
                                                   ("tiny amp-bf16", Policy("bf16", b, b), torch.float64)],
                          args.realisations, out)
        nesterov_realisations(cfg, params, x, target, args.realisations, out)
    cfg, params, x, target = study("B0 (1000 classes), batch 2, 64x64", os.path.join(args.dump_dir, "b0.safetensors"),
                                   args, out)
    if args.realisations:
        realisation_study(cfg, params, x, target, [("b0 float32", Policy("fp32"), torch.float32),
                                                   ("b0 amp-fp16", Policy("fp16", h, h), torch.float64),
                                                   ("b0 amp-bf16", Policy("bf16", b, b), torch.float64)],
                          args.realisations, out)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
