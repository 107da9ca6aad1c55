"""effnet.preprocess and effnet.classify against the effnet-classify program (`--json`): the
same preprocessed input bit for bit, the same classes, labels and probabilities. On a tiny
converted golden model with generated images (always), and on the real EfficientNet-Lite0
weights with the sample photos in data/ when they are there (weights/fetch.sh)."""
import json
import os
import subprocess

import numpy as np
import pytest
from PIL import Image

import effnet
from conftest import SOURCE, convert, program

LITE0 = os.path.join(SOURCE, "data", "efficientnet_lite0.safetensors")
SAMPLES = os.path.join(SOURCE, "data", "samples")


def photo_like(width, height, seed):
    """Smooth gradients plus noise: something a resize filter has work to do on."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)),
                     ((x + y) * 127 // max(width + height - 2, 1))], axis=-1)
    return np.clip(base + rng.integers(-40, 41, size=base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """tv_tiny converted with preprocessing 40 -> 32 (as tests/python/test_classify.py), and a
    folder of generated images of several sizes and formats."""
    d = tmp_path_factory.mktemp("classify")
    weights = convert(os.path.join(SOURCE, "tests", "data", "golden", "tv_tiny.pth"), str(d / "tiny.safetensors"),
                      "--meta", "preprocess.resize=40", "preprocess.crop=32", "preprocess.interpolation=bicubic")
    images = d / "images"
    (images / "sub").mkdir(parents=True)
    paths = []
    for i, (w, h, ext) in enumerate([(64, 48, "png"), (37, 91, "png"), (120, 80, "jpg"), (40, 40, "bmp"),
                                     (300, 200, "png"), (31, 29, "jpg"), (50, 70, "png"), (90, 60, "png"),
                                     (77, 55, "tga")]):
        p = images / ("sub" if i % 3 == 0 else "") / ("img%02d.%s" % (i, ext))
        Image.fromarray(photo_like(w, h, i)).save(p)
        paths.append(str(p))
    (images / "notes.txt").write_text("not an image")
    labels = d / "labels.txt"
    labels.write_text("".join("label %d\r\n" % i for i in range(10)))
    return weights, str(images), str(labels)


def classify_program(weights, paths, *extra):
    exe = program("effnet-classify")
    r = subprocess.run([exe, "--weights", weights, "--device", "cpu", "--json", "--quiet", *extra, *paths],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def compare(results, doc, files):
    assert [r["path"] for r in doc["results"]] == files
    worst = 0.0
    for ours, theirs in zip(results, doc["results"]):
        assert [(i, label) for i, label, _ in ours] == [(t["class"], t["label"]) for t in theirs["top"]]
        for (_, _, p), t in zip(ours, theirs["top"]):
            worst = max(worst, abs(p - t["probability"]))
    return worst


def test_preprocess_equals_program(tiny, tmp_path):
    weights, images, _ = tiny
    exe = program("effnet-classify")
    files = effnet.find_images(images)
    dump = str(tmp_path / "input.npy")
    r = subprocess.run([exe, "--weights", weights, "--quiet", "--dump-input", dump, "--device", "cpu", *files],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    ref = np.load(dump)
    model = effnet.load_weights(weights)
    ours = np.stack([effnet.preprocess(f, model) for f in files])
    assert ours.shape == ref.shape == (len(files), 3, 32, 32)
    assert np.array_equal(ours, ref)
    # The same from decoded pixels (PNG is lossless: PIL's pixels are the decoder's).
    png = [f for f in files if f.endswith(".png")][0]
    from_array = effnet.preprocess(np.asarray(Image.open(png).convert("RGB")), model)
    assert np.array_equal(from_array, effnet.preprocess(png, model))
    assert np.array_equal(effnet.load_image(png), np.asarray(Image.open(png).convert("RGB")))


def test_find_images_is_the_programs_order(tiny):
    _, images, _ = tiny
    files = effnet.find_images(images)
    assert len(files) == 9 and not any(f.endswith(".txt") for f in files)
    assert files == sorted(files)


def test_classify_equals_program(tiny):
    weights, images, labels = tiny
    files = effnet.find_images(images)
    doc = classify_program(weights, [images], "--labels", labels, "--top-k", "3")
    model = effnet.load_weights(weights)
    results = effnet.classify(model, [images], top_k=3, labels=labels, device="cpu")
    worst = compare(results, doc, files)
    print("tiny model, %d generated images: probabilities vs effnet-classify, max abs diff %.3g" % (len(files), worst))
    assert worst <= 1e-9
    assert results[0][0][1].startswith("label ")
    # A session, arrays, and preprocessed arrays give the same answers.
    s = effnet.Session(model, device="cpu")
    pixels = [effnet.load_image(f) for f in files]
    assert effnet.classify(s, pixels, top_k=3, labels=labels) == results
    pre = np.stack([effnet.preprocess(f, model) for f in files])
    again = effnet.classify(s, pre, top_k=3, labels=labels)
    assert [[c for c, _, _ in r] for r in again] == [[c for c, _, _ in r] for r in results]
    # Default labels: "class N".
    assert effnet.classify(model, files[0], top_k=1, device="cpu")[0][0][1].startswith("class ")


def test_classify_errors(tiny, tmp_path):
    weights, images, labels = tiny
    model = effnet.load_weights(weights)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(effnet.Error) as e:
        effnet.classify(model, [str(bad)], device="cpu")
    assert str(bad) in str(e.value)
    with pytest.raises(effnet.Error, match="no such file"):
        effnet.classify(model, [str(tmp_path / "missing.jpg")], device="cpu")
    short = tmp_path / "short.txt"
    short.write_text("a\nb\n")
    with pytest.raises(effnet.Error, match="2 labels, but the model has 10 classes"):
        effnet.classify(model, images, labels=str(short), device="cpu")
    with pytest.raises(ValueError, match="top_k"):
        effnet.classify(model, images, top_k=0, device="cpu")
    with pytest.raises(TypeError, match="uint8"):
        effnet.preprocess(np.zeros((8, 8, 3), np.float64), model)
    with pytest.raises(ValueError, match=r"\[height, width, 3\]"):
        effnet.preprocess(np.zeros((8, 8, 4), np.uint8), model)
    with pytest.raises(TypeError, match="Model, Session or Preprocess"):
        effnet.preprocess(np.zeros((8, 8, 3), np.uint8), "model")


@pytest.mark.skipif(not os.path.exists(LITE0) or not os.path.isdir(SAMPLES),
                    reason="data/efficientnet_lite0.safetensors and data/samples not fetched (weights/fetch.sh)")
def test_lite0_samples_equal_program():
    files = effnet.find_images(SAMPLES)
    doc = classify_program(LITE0, [SAMPLES])
    model = effnet.load_weights(LITE0)
    results = effnet.classify(model, [SAMPLES], device="cpu")
    worst = compare(results, doc, files)
    print("Lite0, %d sample photos: probabilities vs effnet-classify, max abs diff %.3g" % (len(files), worst))
    assert worst <= 1e-9
    top = {os.path.basename(f): r[0] for f, r in zip(files, results)}
    print({k: (v[1], round(v[2], 3)) for k, v in top.items()})
    assert 281 <= top["chelsea.png"][0] <= 285  # a cat (tabby, tiger cat, Persian, Siamese, Egyptian)
