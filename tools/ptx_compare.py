#!/usr/bin/env python3
"""Compare the device code of kernels/*.cu between two source trees, kernel by kernel.

Kernels are matched by mangled name with anonymous-namespace hashes removed, so a kernel that
moved to another file still matches. Comments, debug directives and blank lines are ignored.

    tools/ptx_compare.py emit ROOT OUTDIR            one .ptx per kernels/*.cu of ROOT
    tools/ptx_compare.py compare BASE_PTX NEW_PTX [--diff NAME]
        per kernel: identical | RENAMED (register names only) | REORDERED (the same
        instructions in another order) | DIFFERS (with the instructions added / removed)
    tools/ptx_compare.py sass BASE_PTX NEW_PTX WORKDIR
        assembles both with ptxas and compares each kernel's machine code byte for byte (no
        disassembler needed), with registers / stack / spills: the check behind a REORDERED
    tools/ptx_compare.py run BASE_ROOT NEW_ROOT WORKDIR   all three

A baseline tree: git worktree add /tmp/ptx-base HEAD (git worktree remove --force afterwards).
Flags follow the effnet target's CUDA flags (sm_90, -O3, --expt-relaxed-constexpr) without
-lineinfo, so that line numbers do not count as differences. PTX_JOBS sets the parallelism.
"""
import collections
import concurrent.futures
import difflib
import glob
import os
import re
import shutil
import struct
import subprocess
import sys

NVCC = os.environ.get("NVCC", "/usr/local/cuda/bin/nvcc")
PTXAS = os.environ.get("PTXAS", "/usr/local/cuda/bin/ptxas")
ARCH = os.environ.get("PTX_ARCH", "sm_90")


def emit(root, outdir):
    os.makedirs(outdir, exist_ok=True)
    sources = sorted(glob.glob(os.path.join(root, "kernels", "*.cu")))
    flags = ["-ptx", f"-arch={ARCH}", "-std=c++17", "-O3", "-DNDEBUG", "-DEFFNET_WITH_CUDA=1",
             "--expt-relaxed-constexpr", f"-I{root}/include", f"-I{root}/libeffnet", f"-I{root}",
             "-isystem=/usr/local/cuda/include"]

    def one(src):
        out = os.path.join(outdir, os.path.basename(src)[:-3] + ".ptx")
        r = subprocess.run([NVCC, *flags, src, "-o", out], capture_output=True, text=True)
        return src, r.returncode, r.stderr

    jobs = int(os.environ.get("PTX_JOBS", "2"))
    failed = False
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        for src, rc, err in pool.map(one, sources):
            if rc != 0:
                failed = True
                print(f"FAILED {src}\n{err}", file=sys.stderr)
    return not failed


ANON = re.compile(r"(\d+)(_GLOBAL__N__|_INTERNAL_)")


def normalise(text):
    """Anonymous-namespace and internal names carry a hash of the translation unit (its path, its file name):
    replace each, by its mangled length, with one fixed name, so that a kernel keeps its name
    when the tree or the file it lives in changes."""
    out, pos = [], 0
    for m in ANON.finditer(text):
        if m.start() < pos:
            continue
        length = int(m.group(1))
        out.append(text[pos:m.start()])
        out.append("4ANON")
        pos = m.start(2) + length
    out.append(text[pos:])
    return "".join(out)


# Names numbered by a function's position in its file: labels, local depots.
PER_FILE = re.compile(r"(\$L__BB|__local_depot)\d+")

FUNC_START = re.compile(r"^\s*(?:\.visible\s+|\.weak\s+)?(\.entry|\.func)\s+(?:\([^)]*\)\s*)?([\w$]+)")


def functions(ptx_dir):
    """mangled name -> (file, normalised body lines)"""
    result = {}
    for path in sorted(glob.glob(os.path.join(ptx_dir, "*.ptx"))):
        lines = normalise(open(path).read()).splitlines()
        i = 0
        while i < len(lines):
            m = FUNC_START.match(lines[i])
            if not m or lines[i].rstrip().endswith(";"):  # skip prototypes
                i += 1
                continue
            name = m.group(2)
            depth, body, started = 0, [], False
            while i < len(lines):
                line = re.sub(r"//.*", "", lines[i]).strip()
                i += 1
                if line and not line.startswith(".loc") and not line.startswith(".file"):
                    body.append(PER_FILE.sub(lambda m: m.group(1), line))
                depth += line.count("{") - line.count("}")
                started = started or "{" in line
                if started and depth == 0:
                    break
            if name in result and result[name][1] != body:
                print(f"note: {name} defined differently in {result[name][0]} and {path}",
                      file=sys.stderr)
            result.setdefault(name, (os.path.basename(path), body))
    return result


def demangle(names):
    try:
        r = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
        return r.stdout.splitlines()
    except OSError:
        return names


REGISTER = re.compile(r"%[a-z]+\d+")


def renamed(body):
    """The body with registers numbered by first use: equal when only register names differ."""
    names = {}
    return [REGISTER.sub(lambda m: names.setdefault(m.group(0), f"%r{len(names)}"), l)
            for l in body if not l.startswith(".reg")]


def opcodes(body):
    """Instruction mnemonics (with their type suffixes) and how often each occurs."""
    counts = collections.Counter()
    for l in body:
        l = re.sub(r"^@!?%\w+\s+", "", l)
        if l.startswith(".") or l.endswith(":") or l in ("{", "}", "(", ")", ")", "ret;"):
            continue
        counts[l.split()[0].rstrip(";")] += 1
    return counts


def classify(a, b):
    """identical | renamed (register names only) | reordered (the same instructions in another
    order) | differs (instructions added or removed: the delta says which)."""
    if a == b:
        return "identical", ""
    if renamed(a) == renamed(b):
        return "renamed", ""
    ca, cb = opcodes(a), opcodes(b)
    if ca == cb:
        return "reordered", ""
    delta = [f"-{ca[k] - cb[k]} {k}" for k in sorted(ca) if ca[k] > cb[k]]
    delta += [f"+{cb[k] - ca[k]} {k}" for k in sorted(cb) if cb[k] > ca[k]]
    return "differs", ", ".join(delta)


def compare(base_dir, new_dir, show_diff=None):
    base, new = functions(base_dir), functions(new_dir)
    names = sorted(set(base) | set(new))
    pretty = dict(zip(names, demangle(names)))
    kinds = collections.Counter()
    for name in names:
        if name not in new:
            print(f"GONE       {pretty[name]}   [{base[name][0]}]")
            continue
        if name not in base:
            print(f"NEW        {pretty[name]}   [{new[name][0]}]")
            continue
        kind, delta = classify(base[name][1], new[name][1])
        kinds[kind] += 1
        moved = "" if base[name][0] == new[name][0] else f" (moved {base[name][0]} -> {new[name][0]})"
        if kind != "identical":
            print(f"{kind.upper():10} {pretty[name]}   [{new[name][0]}]{moved}" + (f"\n           {delta}" if delta else ""))
        if show_diff and kind != "identical" and (show_diff in name or show_diff in pretty[name]):
            sys.stdout.writelines(l + "\n" for l in difflib.unified_diff(base[name][1], new[name][1], "base", "new", n=1))
    moved = [n for n in names if n in base and n in new and base[n][0] != new[n][0]]
    print(f"\n{kinds['identical']} identical, {kinds['renamed']} differ in register names only, "
          f"{kinds['reordered']} in instruction order only, {kinds['differs']} in instructions; "
          f"{len(moved)} moved between files, {len(set(base) - set(new))} gone, {len(set(new) - set(base))} new")


def assemble(ptx_dir, out_dir):
    """ptxas (sm_90, -O3, as nvcc runs it) each .ptx into a cubin; returns {file: ptxas -v text}."""
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)

    def one(path):
        cubin = os.path.join(out_dir, os.path.basename(path)[:-4] + ".cubin")
        r = subprocess.run([PTXAS, f"-arch={ARCH}", "-O3", "-v", path, "-o", cubin],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"FAILED ptxas {path}\n{r.stderr}", file=sys.stderr)
        return path, r.stderr

    jobs = int(os.environ.get("PTX_JOBS", "2"))
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        return dict(pool.map(one, sorted(glob.glob(os.path.join(ptx_dir, "*.ptx")))))


def elf_sections(path):
    """{section name: bytes} of an ELF64 little-endian file (a cubin)."""
    data = open(path, "rb").read()
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab = headers[shstrndx]
    names = data[strtab[4]:strtab[4] + strtab[5]]
    out = {}
    for h in headers:
        name = names[h[0]:names.index(b"\0", h[0])].decode()
        out[name] = data[h[4]:h[4] + h[5]] if h[1] != 8 else b""  # SHT_NOBITS: no bytes
    return out


def machine_code(cubin_dir, resources):
    """mangled name -> (SASS bytes of .text.<name>, 'registers / stack / spills' from ptxas -v)."""
    usage = {}
    for text in resources.values():
        name = None
        for line in text.splitlines():
            m = re.search(r"Compiling entry function '([^']+)'", line)
            if m:
                name = normalise(m.group(1))
            m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
            if m and name:
                usage[name] = f"stack {m.group(1)}, spills {m.group(2)}/{m.group(3)}"
            m = re.search(r"Used (\d+) registers", line)
            if m and name:
                usage[name] = f"{m.group(1)} registers, " + usage.get(name, "")
    code = {}
    for path in sorted(glob.glob(os.path.join(cubin_dir, "*.cubin"))):
        for section, data in elf_sections(path).items():
            if section.startswith(".text."):
                name = normalise(section[len(".text."):])
                code[name] = (data, usage.get(name, "?"))
    return code


def compare_sass(base_ptx, new_ptx, work):
    """Assembles both PTX trees and compares each kernel's machine code byte for byte (no
    disassembler needed): the check behind a PTX difference in order or types only."""
    base = machine_code(os.path.join(work, "base_cubin"), assemble(base_ptx, os.path.join(work, "base_cubin")))
    new = machine_code(os.path.join(work, "new_cubin"), assemble(new_ptx, os.path.join(work, "new_cubin")))
    names = sorted(set(base) & set(new))
    pretty = dict(zip(names, demangle(names)))
    same = 0
    for n in names:
        (a, ua), (b, ub) = base[n], new[n]
        if a == b:
            same += 1
            continue
        print(f"SASS DIFFERS {pretty[n]}\n           {len(a)} -> {len(b)} bytes; {ua} -> {ub}")
    print(f"\nmachine code: {same} of {len(names)} kernels byte-identical")


def main(argv):
    if len(argv) >= 3 and argv[0] == "emit":
        return 0 if emit(argv[1], argv[2]) else 1
    if len(argv) >= 3 and argv[0] == "compare":
        show = argv[argv.index("--diff") + 1] if "--diff" in argv else None
        compare(argv[1], argv[2], show)
        return 0
    if len(argv) >= 4 and argv[0] == "sass":
        compare_sass(argv[1], argv[2], argv[3])
        return 0
    if len(argv) == 4 and argv[0] == "run":
        work = argv[3]
        ok = emit(argv[1], os.path.join(work, "base")) and emit(argv[2], os.path.join(work, "new"))
        compare(os.path.join(work, "base"), os.path.join(work, "new"))
        compare_sass(os.path.join(work, "base"), os.path.join(work, "new"), work)
        return 0 if ok else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
