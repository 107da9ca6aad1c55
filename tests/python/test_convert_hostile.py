#!/usr/bin/env python3
"""Hostile and damaged checkpoints against weights/convert.py (issue 15, item 6), each built
here by code (no committed binaries), each run in a subprocess under RLIMIT_AS = 1 GiB:

- blow-ups: a zip member inflating to 2 GiB (the pickle, a storage whose record is small, a
  storage whose record agrees); a 2^28-element stride-0 tensor over a 1-element storage; sizes
  2^47 x 2^47 with stride 0; a memo index of 2^31 (the C unpickler allocates an array that
  long); a dict key nested 300,000 deep (hashing it overflowed the C stack: SIGSEGV); a list copied
  over and over through OrderedDict(...) calls; a bytearray declaring 10^9 bytes (found by
  tests/fuzz/convert_fuzz.py);
- malformed records that gave tracebacks: 100-dim tensors, an unsupported compression method, a
  10,000-digit integer in an error message, a scalar where torchvision's head weight goes;
- a tensor named __metadata__ (it replaced the file's metadata), the output naming the input, a
  failed write (RLIMIT_FSIZE) leaving nothing behind;
- the effnet.checksum: XXH3-64 of the data section, computed here independently; and the
  warning, with no checksum, when xxhash cannot be imported.

A failure must be exit 1, exactly one `error:` line naming the cause (never "out of memory"),
no traceback, no output or temporary file, and the child's peak RSS under 400 MB.
EFFNET_CONVERT=path runs the same tests against another convert.py (e.g. the one before the fix).

Prints "N passed, M failed" and exits non-zero on any failure.
"""
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import convert_fixtures as fx  # noqa: E402

SOURCE_DIR = os.environ.get("EFFNET_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "fuzz"))
import convert_fuzz as fz  # noqa: E402  (its zip writer can lie and build zip bombs)

CONVERT = os.environ.get("EFFNET_CONVERT") or os.path.join(SOURCE_DIR, "weights", "convert.py")
MEMORY_LIMIT = 1 << 30
MAX_RSS_BYTES = 400 << 20

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


class Result:
    def __init__(self, returncode, stderr, max_rss):
        self.returncode, self.stderr, self.max_rss = returncode, stderr, max_rss


def run_convert_rss(src, dst, *options, **kw):
    """Like run_convert, with the child's own peak RSS (os.wait4 on it, not Popen.wait)."""
    def limits():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if kw.get("fsize") is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (kw["fsize"], kw["fsize"]))
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, CONVERT, str(src), str(dst), *options],
                                stdout=subprocess.DEVNULL, stderr=err, preexec_fn=limits,
                                env=dict(os.environ, **(kw.get("env") or {})))
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return Result(proc.returncode, err.read().decode("utf-8", "replace"), usage.ru_maxrss * 1024)


def convert_fails(src, dst, expect):
    """Exit 1, one `error:` line containing every string in `expect`, no traceback, no
    out-of-memory, no output or temporary file, peak RSS bounded."""
    r = run_convert_rss(src, dst)
    assert r.returncode == 1, f"exit {r.returncode}, stderr: {r.stderr[-2000:]!r}"
    assert "Traceback" not in r.stderr and "MemoryError" not in r.stderr, r.stderr[-2000:]
    lines = [l for l in r.stderr.splitlines() if not l.startswith(("note:", "warning:"))]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"stderr: {r.stderr[-2000:]!r}"
    assert "out of memory" not in lines[0], lines[0]
    for e in ([expect] if isinstance(expect, str) else expect):
        assert e in lines[0], f"expected {e!r} in {lines[0]!r}"
    assert len(lines[0]) < 1000, f"error line of {len(lines[0])} chars"
    assert not os.path.exists(dst), "output written despite the error"
    leftovers = [n for n in os.listdir(os.path.dirname(dst)) if n.endswith(".tmp")]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    assert r.max_rss < MAX_RSS_BYTES, f"peak RSS {r.max_rss >> 20} MiB"
    return lines[0]


def hostile(name, make, expect):
    """Registers a test: make(path) writes the input; the conversion must fail cleanly."""
    def case():
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "in.pth")
            make(src)
            convert_fails(src, os.path.join(tmp, "out.safetensors"), expect)
    case.__name__ = name
    test(case)


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


# ----------------------------------------------------------------------------------------------
# Zip archives built member by member (so members can be bombs and records can lie)


def torch_zip(pickled, storages, extra=()):
    """A torch.save-like zip: archive/data.pkl, byteorder, data/<key> for each (key, bytes)."""
    entries = [fz.zip_entry("archive/data.pkl", pickled), fz.zip_entry("archive/byteorder", b"little")]
    entries += [fz.zip_entry(f"archive/data/{k}", v) for k, v in storages]
    entries += list(extra)
    entries.append(fz.zip_entry("archive/version", b"3\n"))
    return fz.build_zip(entries)


def state_pickle(state):
    return fx.dumps(state, lambda o: o.record(False) if isinstance(o, fx.FakeStorage) else None)


def tensor(key, numel, size, stride, offset=0, dtype=np.float32):
    """A FakeTensor over a storage of `numel` elements (only its record matters here)."""
    storage = fx.FakeStorage(key, np.zeros(numel, dtype))
    return fx.FakeTensor(storage, offset, size, stride)


def bomb_entry(name, size=1 << 31, declared=None):
    stream, crc = fz.zeros_deflated(size)
    return {"name": name.encode(), "method": 8, "payload": stream, "crc": crc,
            "size": size if declared is None else declared}


def zip_bomb_pickle(path):
    # The pickle member declares and inflates to 2 GiB from 2 MB.
    entries = [bomb_entry("archive/data.pkl"), fz.zip_entry("archive/version", b"3\n")]
    write(path, fz.build_zip(entries))


def zip_bomb_storage(path):
    # A storage member inflating to 2 GiB behind a 3-element record.
    pickled = state_pickle({"features.0.0.weight": tensor("0", 3, (3,), (1,))})
    write(path, fz.build_zip([fz.zip_entry("archive/data.pkl", pickled), bomb_entry("archive/data/0")]))


def zip_bomb_storage_consistent(path):
    # The record agrees (2^29 floats = 2 GiB): only the compression ratio gives it away.
    t = fx.FakeTensor(fx.FakeStorage("0", np.zeros(1, np.float32)), 0, (1 << 29,), (1,))
    pickled = state_pickle({"features.0.0.weight": t}).replace(b"K\x01t", b"J\x00\x00\x00\x20t", 1)
    write(path, fz.build_zip([fz.zip_entry("archive/data.pkl", pickled), bomb_entry("archive/data/0")]))


def stride0(size, stride):
    def make(path):
        t = fx.FakeTensor(fx.FakeStorage("0", np.ones(1, np.float32)), 0, size, stride)
        fx.write_zip_checkpoint(path, {"features.0.0.weight": t})
    return make


def legacy_stride0(path):
    t = fx.FakeTensor(fx.FakeStorage("0", np.ones(1, np.float32)), 0, (1 << 28,), (0,))
    fx.write_legacy_checkpoint(path, {"features.0.0.weight": t})


def raw_pickle_zip(body):
    """A zip whose data.pkl is `body` (protocol 2 opcodes after PROTO, up to STOP)."""
    def make(path):
        write(path, torch_zip(b"\x80\x02" + body + b".", []))
    return make


# A dict whose key is a tuple nested 300,000 deep: hashing it recursed in C until SIGSEGV.
DEEP_KEY = b"}" + b")" + b"\x85" * 300_000 + b"K\x01s"
# LONG_BINPUT at index 2^31 - 1: the C unpickler grows its memo array to 2^32 entries.
MEMO_BOMB = b"}r\xff\xff\xff\x7f"
# BYTEARRAY8 declaring 10^9 bytes with 3 present: Python's unpickler allocated first.
BYTEARRAY_BOMB = b"\x96" + struct.pack("<Q", 10**9) + b"abc"
# A 20,000-item list copied 20,000 times by OrderedDict(list): 4 * 10^8 entries from ~120 KB.
COPY_BOMB = (b"ccollections\nOrderedDict\nq\x00" + b"](" + b"".join(b"(J" + struct.pack("<i", i) + b"K\x01t"
                                                                 for i in range(20000)) + b"eq\x01"
             + b"0" + b"}" + b"(" + b"".join(b"J" + struct.pack("<i", i) + b"h\x00h\x01\x85R"
                                               for i in range(20000)) + b"u")


def many_dims(path):
    t = fx.FakeTensor(fx.FakeStorage("0", np.ones(1, np.float32)), 0, (1,) * 100, (1,) * 100)
    fx.write_zip_checkpoint(path, {"features.0.0.weight": t})


def bad_compression(path):
    pickled = state_pickle({"features.0.0.weight": fx.contiguous("0", np.ones(3, np.float32))})
    entries = [fz.zip_entry("archive/data.pkl", pickled), fz.zip_entry("archive/data/0", np.ones(3, np.float32).tobytes())]
    entries[1]["method"] = 99  # AES in WinZip's numbering; zipfile raises NotImplementedError
    write(path, fz.build_zip(entries))


def huge_int_key(path):
    # A state dict key that is a 10,000-digit integer: repr() of it raised ValueError in the
    # error message itself (Python limits int -> str conversion to 4300 digits).
    fx.write_zip_checkpoint(path, {"features.0.0.weight": fx.contiguous("0", np.ones(3, np.float32)),
                                   10**10000: fx.contiguous("1", np.ones(3, np.float32))})


def metadata_named_tensor(path):
    fx.write_zip_checkpoint(path, {"features.0.0.weight": fx.contiguous("0", np.ones(3, np.float32)),
                                   "__metadata__": fx.contiguous("1", np.ones(2, np.float32))})


def newline_name(path):
    fx.write_zip_checkpoint(path, {"features.0.0.weight": fx.contiguous("0", np.ones(3, np.float32)),
                                   "a\nb": fx.FakeTensor(fx.FakeStorage("1", np.ones(2, np.float32)), 0, (5,), (1,))})


hostile("zip_bomb_pickle_2GiB", zip_bomb_pickle, ["data.pkl", "past the limit"])
hostile("zip_bomb_storage_2GiB", zip_bomb_storage, ["storage '0'", "needs 12"])
hostile("zip_bomb_storage_2GiB_record_agrees", zip_bomb_storage_consistent, ["archive/data/0", "zip bomb"])
hostile("stride0_2p28_elements", stride0((1 << 28,), (0,)), ["features.0.0.weight", "stride 0"])
hostile("stride0_2p28_elements_legacy", legacy_stride0, ["features.0.0.weight", "stride 0"])
hostile("stride0_2p47_x_2p47", stride0((1 << 47, 1 << 47), (0, 0)), ["features.0.0.weight", "stride 0"])
hostile("deep_nested_dict_key", raw_pickle_zip(DEEP_KEY), ["data.pkl", "dict key"])
hostile("memo_index_2p31", raw_pickle_zip(MEMO_BOMB), ["no tensors"])
hostile("bytearray8_1e9_fuzz_found", raw_pickle_zip(BYTEARRAY_BOMB), ["data.pkl", "truncated"])
hostile("ordered_dict_copy_bomb", raw_pickle_zip(COPY_BOMB), ["data.pkl", "copies more items"])
hostile("tensor_with_100_dims", many_dims, ["data.pkl", "at most 8 dims"])
hostile("compression_method_99", bad_compression, ["archive/data", "compression method 99"])
hostile("huge_int_state_dict_key", huge_int_key, ["integer"])
hostile("tensor_named___metadata__", metadata_named_tensor, ["__metadata__"])
hostile("newline_in_tensor_name", newline_name, ["'a\\nb'", "reaches element"])


@test
def scalar_head_weight_is_not_a_crash():
    # torchvision names with a 0-dim features.8.0.weight: shape[0] of it raised IndexError.
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "in.pth"), os.path.join(tmp, "out.safetensors")
        fx.write_zip_checkpoint(src, {"features.0.0.weight": fx.contiguous("0", np.ones(3, np.float32)),
                                      "features.8.0.weight": fx.FakeTensor(fx.FakeStorage("1", np.ones(1, np.float32)), 0, (), ())})
        r = run_convert_rss(src, out)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
        tensors, _ = fx.read_safetensors(out)
        assert tensors["features.8.0.weight"][1] == []


@test
def failed_write_leaves_nothing():
    # RLIMIT_FSIZE makes the write fail (EFBIG) after the temporary file exists.
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "in.pth"), os.path.join(tmp, "out.safetensors")
        fx.write_zip_checkpoint(src, {"features.0.0.weight": fx.contiguous("0", np.ones(100_000, np.float32))})
        r = run_convert_rss(src, out, fsize=64 << 10)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
        lines = [l for l in r.stderr.splitlines() if not l.startswith(("note:", "warning:"))]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "cannot write" in lines[0], r.stderr
        assert os.listdir(tmp) == ["in.pth"], f"left behind: {os.listdir(tmp)}"


@test
def output_naming_the_input_is_refused():
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "in.pth")
        fx.write_zip_checkpoint(src, {"features.0.0.weight": fx.contiguous("0", np.ones(3, np.float32))})
        with open(src, "rb") as f:
            before = f.read()
        r = run_convert_rss(src, src)
        assert r.returncode == 1 and "names the input" in r.stderr, r.stderr
        with open(src, "rb") as f:
            assert f.read() == before, "the input was changed"


# ----------------------------------------------------------------------------------------------
# Checksum


def data_section(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack_from("<Q", blob, 0)
    return blob[8 + n:]


@test
def checksum_matches_an_independent_xxh3():
    try:
        import xxhash
    except ImportError:
        print("  (xxhash not installed: checksum not checked)")
        return
    for writer in (fx.write_zip_checkpoint, fx.write_legacy_checkpoint):
        with tempfile.TemporaryDirectory() as tmp:
            src, out = os.path.join(tmp, "in.pth"), os.path.join(tmp, "out.safetensors")
            rng = np.random.default_rng(3)
            writer(src, {"features.0.0.weight": fx.contiguous("0", rng.standard_normal((8, 3)).astype(np.float32)),
                         "features.0.1.running_mean": fx.contiguous("1", rng.standard_normal(8)),
                         "features.0.1.num_batches_tracked": fx.contiguous("2", np.array([5], np.int64)),
                         "half": fx.contiguous("3", rng.standard_normal(5).astype(np.float16))})
            r = run_convert_rss(src, out)
            assert r.returncode == 0, r.stderr
            _, meta = fx.read_safetensors(out)
            data = data_section(out)
            want = "xxh3_64:" + format(xxhash.xxh3_64_intdigest(data, seed=0), "016x")
            assert meta.get("effnet.checksum") == want, f"{meta.get('effnet.checksum')} vs {want}"
            # A flipped data byte changes it (so the reader can tell).
            flipped = bytearray(data)
            flipped[len(flipped) // 2] ^= 1
            assert "xxh3_64:" + xxhash.xxh3_64_hexdigest(bytes(flipped)) != want


@test
def without_xxhash_a_warning_and_no_checksum():
    with tempfile.TemporaryDirectory() as tmp:
        shadow = os.path.join(tmp, "shadow")
        os.mkdir(shadow)
        with open(os.path.join(shadow, "xxhash.py"), "w") as f:
            f.write("raise ImportError('xxhash hidden by the test')\n")
        src, out = os.path.join(tmp, "in.pth"), os.path.join(tmp, "out.safetensors")
        fx.write_zip_checkpoint(src, {"features.0.0.weight": fx.contiguous("0", np.ones(3, np.float32))})
        r = run_convert_rss(src, out, env={"PYTHONPATH": shadow})
        assert r.returncode == 0, r.stderr
        assert any(l.startswith("warning:") and "no effnet.checksum" in l for l in r.stderr.splitlines()), r.stderr
        _, meta = fx.read_safetensors(out)
        assert "effnet.checksum" not in meta, meta


def main():
    passed = failed = 0
    print(f"converter: {CONVERT}")
    for fn in TESTS:
        start = time.monotonic()
        try:
            fn()
        except Exception:
            failed += 1
            print(f"FAIL {fn.__name__}")
            traceback.print_exc()
        else:
            passed += 1
            print(f"ok   {fn.__name__} ({time.monotonic() - start:.1f} s)")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
