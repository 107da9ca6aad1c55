"""effnet from Python: EfficientNet-B0..B7 / Lite0..4 on effnet's C++ engines.

    import effnet
    model = effnet.load_weights("b0.safetensors")          # torchvision / timm / lukemelas / effnet names
    session = effnet.Session(model, device="auto")           # the fast CPU path, or the GPU
    logits = session.run(x)                                  # x: float32 [N, 3, H, W] (NumPy, DLPack)
    effnet.classify(model, ["cat.jpg"], top_k=5)             # effnet-classify's preprocessing

Errors from the library are raised as effnet.Error (a RuntimeError) with the library's message;
bad arguments as ValueError / TypeError.
"""
import os as _os

from . import _effnet
from ._effnet import (  # noqa: F401
    Error,
    Model,
    Preprocess,
    cuda_available,
    cuda_device_description,
    has_image_extension,
    load_image,
    preset_names,
)

__version__ = _effnet.__version__
built_with_cuda = _effnet.built_with_cuda
has_features = _effnet.has_features

__all__ = [
    "Error", "Model", "Preprocess", "Session", "GpuTrainer", "load_weights", "load_image", "preprocess",
    "classify", "find_images", "read_labels", "cuda_available", "cuda_device_description", "preset_names",
    "has_image_extension", "__version__",
]


def load_weights(path, preset=None, padding=None, bn_eps=None, activation=None):
    """Loads a safetensors file with torchvision, timm, lukemelas or effnet names; the
    architecture is inferred from the tensor shapes.

    preset: if given ('b0'..'b7', 'lite0'..'lite4'), the inferred architecture must match it.
    padding ('symmetric' | 'tf_same'), bn_eps, activation ('silu' | 'relu6'): override what the
    file's metadata (or the family's default) says. Returns a Model; raises effnet.Error naming
    the file and tensor on anything wrong."""
    path = _os.fspath(path)
    model = _effnet._load_weights(path, preset, padding, bn_eps, activation)
    model.path = path
    return model


class Session(_effnet.Session):
    """An inference session.

    Session(model, device="auto", precision="fp32", batch=1, height=None, width=None,
            features=None, features_only=False, autotune=True, cuda_graph=True, device_index=0,
            engine="fast", threads=0)

    device: "cpu" (fp32, any batch and size; height/width, when given, fix the size; engine
    "fast": the fast CPU path on `threads` threads (0: every CPU), rebuilt for each new input
    size or a larger batch; "reference": the plain reference engine it is tested against;
    features always run on the reference engine), "cuda" (the GPU session: fixed batch, height and width, which default to the
    model's resolution; precision "fp32", "fp16" or "bf16"), or "auto" (cuda when usable).
    The session holds its own copy of the weights (later changes to `model` do not reach it).

    features: backbone feature indices (0..4 = strides 2, 4, 8, 16, 32, strictly increasing),
    read with features(); features_only=True skips the head and classifier (all five features
    when `features` is None), and run() is refused.

    run(x, out=None, stream=None) -> logits [N, classes]
        x: float32 [N, 3, H, W], C-contiguous: a NumPy array, a PyTorch tensor, or anything with
        __dlpack__ or the buffer protocol. Host input -> host output (a NumPy array; a
        torch.Tensor for a torch input). On a GPU session, a CUDA input (e.g. a torch CUDA
        tensor) is read in place and the logits stay on the GPU: a new device array (a
        torch.Tensor for torch input, else a DLPack-capable array: torch.from_dlpack(y),
        cupy.from_dlpack(y)), or `out` when given (float32 [N, classes] on the same device).
        Device runs are ordered after the work already queued on the legacy default stream
        (PyTorch's default) or on `stream` (a cudaStream_t as int, e.g.
        torch.cuda.current_stream().cuda_stream), and work queued there later runs after them.
        Host logits are checked: a non-finite one raises effnet.Error naming the first layer
        that went non-finite.

    features(x, with_logits=False, stream=None) -> [feature arrays NCHW] (and the logits with
        with_logits=True), one per requested index, placed as run()'s outputs.
    """

    def __init__(self, model, device="auto", precision="fp32", batch=1, height=None, width=None, features=None,
                 features_only=False, autotune=True, cuda_graph=True, device_index=0, engine="fast", threads=0):
        if not isinstance(model, Model):
            raise TypeError("model must be an effnet.Model (effnet.load_weights), got %s" % type(model).__name__)
        if features is not None:
            if isinstance(features, int):
                features = [features]
            features = [_index(i, "features") for i in features]
        super().__init__(model, device, precision, _index(batch, "batch"), _opt_index(height, "height"),
                         _opt_index(width, "width"), features, bool(features_only), bool(autotune), bool(cuda_graph),
                         _index(device_index, "device_index"), str(engine), int(threads))
        self.model = model

    def __repr__(self):
        size = "%sx%s" % (self.height, self.width) if self.height else "any size"
        return "<effnet.Session %s, batch %d, %s, %d classes>" % (self.description, self.batch, size,
                                                                  self.num_classes)


class GpuTrainer(_effnet.GpuTrainer):
    """The GPU training step: forward, softmax cross-entropy, backward and the optimizer update,
    all on the GPU, for a fixed (batch, height, width).

    GpuTrainer(model, batch, height, width, precision="amp-fp16", optimizer="sgd", momentum=0.9,
               nesterov=False, weight_decay=0.0, label_smoothing=0.0, clip_grad_norm=0.0,
               loss_scale=None, dynamic_loss_scale=None, deterministic=True, dropout=False,
               allow_tf32=False, device_index=0)

    precision: "fp32", "amp-fp16" or "amp-bf16"; optimizer: "sgd", "rmsprop" (TF-style) or
    "adamw". dynamic_loss_scale (default: on for amp-fp16) grows and backs off the loss scale as
    effnet-train does; a step whose gradients are not finite is skipped.

    step(images, labels, lr, seed=0) -> mean loss. images: host float32 [batch, 3, height, width];
        labels: host integers [batch] in [0, classes).
    download(model) writes the trained parameters and running statistics into `model`;
    upload(model) replaces the trainer's. Also compute_gradients / apply_update / gradients() /
    logits(). Without CUDA (or a GPU) constructing one raises effnet.Error.
    """

    def __init__(self, model, batch, height, width, precision="amp-fp16", optimizer="sgd", momentum=0.9,
                 nesterov=False, weight_decay=0.0, label_smoothing=0.0, clip_grad_norm=0.0, loss_scale=None,
                 dynamic_loss_scale=None, deterministic=True, dropout=False, allow_tf32=False, device_index=0):
        if not isinstance(model, Model):
            raise TypeError("model must be an effnet.Model, got %s" % type(model).__name__)
        super().__init__(model, _index(batch, "batch"), _index(height, "height"), _index(width, "width"), precision,
                         optimizer, float(momentum), bool(nesterov), float(weight_decay), float(label_smoothing),
                         float(clip_grad_norm), None if loss_scale is None else float(loss_scale),
                         dynamic_loss_scale, bool(deterministic), bool(dropout), bool(allow_tf32),
                         _index(device_index, "device_index"))

    def step(self, images, labels, lr, seed=0):
        """One training step (forward, loss, backward, update); returns the mean loss."""
        return super().step(images, _labels(labels), float(lr), _index(seed, "seed"))

    def compute_gradients(self, images, labels, seed=0):
        """Forward, loss and backward only (no update); returns the mean loss."""
        return super().compute_gradients(images, _labels(labels), _index(seed, "seed"))


def _labels(labels):
    if isinstance(labels, (list, tuple)):
        import numpy as np

        return np.asarray(labels, dtype=np.int64)
    return labels


def _index(v, what):
    if isinstance(v, bool) or not hasattr(v, "__index__"):
        raise TypeError("%s must be an integer, got %r" % (what, v))
    return v.__index__()


def _opt_index(v, what):
    return None if v is None else _index(v, what)


def _preprocess_of(obj):
    if isinstance(obj, Preprocess):
        return obj
    if isinstance(obj, (Model, _effnet.Session)):
        return obj.preprocess
    raise TypeError("expected an effnet.Model, Session or Preprocess, got %s" % type(obj).__name__)


def preprocess(image, model):
    """effnet-classify's preprocessing of one image: float32 [3, crop, crop].

    image: a path (decoded by effnet, as effnet-classify does) or a uint8 [height, width, 3] RGB
    array. model: a Model, a Session or a Preprocess (model.preprocess: resize the shorter side,
    center crop, scale to [0, 1], normalise)."""
    pre = _preprocess_of(model)
    if isinstance(image, (str, bytes, _os.PathLike)):
        return _effnet._preprocess_file(_os.fsdecode(image), pre)
    return _effnet._preprocess_array(image, pre)


def find_images(paths):
    """The image files effnet-classify reads for `paths`: files as given, directories searched
    recursively for .jpg .jpeg .png .bmp .tga (sorted). A missing path raises effnet.Error."""
    if isinstance(paths, (str, bytes, _os.PathLike)):
        paths = [paths]
    files = []
    for p in paths:
        p = _os.fsdecode(p)
        if _os.path.isdir(p):
            found = []
            for root, _dirs, names in _os.walk(p):
                for n in names:
                    f = _os.path.join(root, n)
                    if _os.path.isfile(f) and has_image_extension(f):
                        found.append(f)
            files.extend(sorted(found, key=lambda s: s.encode("utf-8", "surrogateescape")))
        elif _os.path.exists(p):
            files.append(p)
        else:
            raise Error(p + ": no such file or directory")
    return files


def read_labels(path):
    """Class names, one a line (as effnet-classify reads them)."""
    with open(path, "rb") as f:
        lines = f.read().decode("utf-8", "surrogateescape").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _choose_labels(labels, model, num_classes):
    if labels is not None:
        if isinstance(labels, (str, bytes, _os.PathLike)):
            path = _os.fsdecode(labels)
            labels = read_labels(path)
            if len(labels) != num_classes:
                raise Error("%s: %d labels, but the model has %d classes" % (path, len(labels), num_classes))
            return labels
        labels = [str(x) for x in labels]
        if len(labels) != num_classes:
            raise ValueError("%d labels, but the model has %d classes" % (len(labels), num_classes))
        return labels
    weights = getattr(model, "path", None)
    if weights:
        beside = _os.path.join(_os.path.dirname(weights), "imagenet_classes.txt")
        if _os.path.isfile(beside):
            found = read_labels(beside)
            if len(found) == num_classes:
                return found
    return ["class %d" % i for i in range(num_classes)]


def classify(model_or_session, images, top_k=5, labels=None, batch=8, device="auto", precision="fp32"):
    """Classifies images as effnet-classify does (same decoding, preprocessing, softmax and
    ordering). Returns one list per image of (class index, label, probability), best first.

    images: one or a list of paths (directories are searched as effnet-classify does: see
    find_images) or uint8 [height, width, 3] RGB arrays, or already preprocessed float32
    [3, crop, crop] arrays. model_or_session: a Model (a Session is made with `device`,
    `precision` and `batch`) or a Session (a GPU session's size must be the crop size; partial
    batches are padded). labels: a list of names, or a path to a file of one name a line;
    default: imagenet_classes.txt beside the weights when its line count matches, else
    "class N". An unreadable image raises effnet.Error naming it."""
    import numpy as np

    if isinstance(model_or_session, _effnet.Session):
        session = model_or_session
        model = getattr(session, "model", None)
    elif isinstance(model_or_session, Model):
        model = model_or_session
        crop = model.preprocess.crop
        session = Session(model, device=device, precision=precision, batch=batch, height=crop, width=crop)
    else:
        raise TypeError("expected an effnet.Model or Session, got %s" % type(model_or_session).__name__)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError("top_k must be an integer >= 1, got %r" % (top_k,))
    pre = session.preprocess
    classes = session.num_classes
    names = _choose_labels(labels, model, classes)

    if isinstance(images, (str, bytes, _os.PathLike)) or (hasattr(images, "ndim") and images.ndim == 3):
        images = [images]
    elif hasattr(images, "ndim") and images.ndim == 4:
        images = list(images)  # a batch of preprocessed images
    items = []
    for im in images:
        if isinstance(im, (str, bytes, _os.PathLike)):
            items.extend(find_images([im]))
        else:
            items.append(im)

    def prepared(im):
        if isinstance(im, str):
            return preprocess(im, pre)
        a = np.asarray(im)
        if a.dtype == np.float32 and a.shape == (3, pre.crop, pre.crop):
            return np.ascontiguousarray(a)
        return preprocess(a, pre)

    step = session.batch if session.device == "cuda" else max(1, int(batch))
    results = []
    for first in range(0, len(items), step):
        chunk = [prepared(im) for im in items[first:first + step]]
        x = np.stack(chunk).astype(np.float32, copy=False)
        n = len(chunk)
        if session.device == "cuda" and n < session.batch:
            x = np.concatenate([x, np.zeros((session.batch - n,) + x.shape[1:], np.float32)])
        logits = np.asarray(session.run(np.ascontiguousarray(x)))[:n]
        for row in logits:
            top = _effnet._top_k(np.ascontiguousarray(row, dtype=np.float32), top_k)
            results.append([(int(i), names[i], float(p)) for i, p in top])
    return results
