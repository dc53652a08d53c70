"""``Detector``: one way to run a trained model on images, from a workdir or an exported file.

    detector = Detector.load("runs/quickstart")            # a workdir (latest checkpoint)
    detector = Detector.load("runs/quickstart", checkpoint_step="best")
    detector = Detector.load("model.tflite")               # an export (raw or post-processed)
    p = detector.predict(rgb_uint8_image, score_threshold=0.3)
    p.boxes        # [N, 4] pixels of the given image: x_min, y_min, x_max, y_max
    p.class_ids    # [N] 0-based class index;  p.names: their names;  p.scores: [N]

Both kinds see the same pixels (``images.model_pixels``: the model's input size, TF1 bilinear,
rounded to uint8). A workdir runs its model's jitted forward pass and ``detection.postprocess``
with ``config.detection`` of its saved config (a QAT checkpoint as its fake-quantized model); a
file runs in the LiteRT interpreter (``tflite.runtime.TFLiteModel.detect``): its own NMS op when
post-processed, our post-processing with ``<file>.anchors.npy`` when raw. A workdir and its
float32 export give the same detections.

Names: ``labels`` (a file or a list) if given; else a workdir's ``labels.txt`` or its data
config's categories, a file's embedded label map or the ``<file>.labels.txt`` beside it; else
``class_<i>`` (``names_source`` says which).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from collections.abc import Sequence

import numpy as np

from mobiledet_jax import labels as labels_lib
from mobiledet_jax.detection import postprocess
from mobiledet_jax.inference import images


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Detections on one image, best first."""

    boxes: np.ndarray  # [N, 4] float32 pixels of the given image: x_min, y_min, x_max, y_max
    class_ids: np.ndarray  # [N] int32, 0-based class index
    names: list[str]  # [N] class names
    scores: np.ndarray  # [N] float32, descending
    boxes_normalized: np.ndarray  # [N, 4] float32 [ymin, xmin, ymax, xmax] in [0, 1]
    image_size: tuple[int, int]  # (height, width) of the given image
    milliseconds: float = 0.0  # the model's time on it (preprocessing, forward pass, NMS)

    def __len__(self) -> int:
        return len(self.scores)


class _JaxBackend:
    """A workdir checkpoint: jitted forward pass + ``detection.postprocess``."""

    def __init__(self, workdir: str, checkpoint_step):
        import jax

        from mobiledet_jax import config as config_lib
        from mobiledet_jax import workdir as workdir_lib
        from mobiledet_jax.detection import anchors as anchors_lib
        from mobiledet_jax.models import build_model, input_size, preprocess

        loaded = workdir_lib.load_model(workdir, checkpoint_step)
        self.step = loaded.step
        self.config = workdir_lib.load_config(workdir) or config_lib.base_config()
        model_config = workdir_lib.model_config_from_meta(loaded.meta)
        self.num_classes = int(model_config.num_classes)
        self.input_size = input_size(model_config)
        self.half_pixel_centers = bool(self.config.data.half_pixel_centers)
        model = build_model(model_config, self.config.detection.anchors)
        if loaded.variables.get("quant_stats"):
            from mobiledet_jax.models import qat

            model = qat.qat_model(model, scheme=model_config.get("int8_scheme", "asymmetric"))
        anchors = anchors_lib.anchors_from_config(self.config.detection.anchors, *self.input_size)
        nms = postprocess.NmsSettings.from_config(self.config.detection.nms)

        def detect(variables, pixels):
            out = model.apply(variables, preprocess(pixels), train=False)
            return postprocess.postprocess(out["box_encodings"], out["class_logits"], anchors, nms)

        self._variables = jax.device_put(loaded.variables)
        self._detect = jax.jit(detect)
        self.kind = f"checkpoint step {loaded.step}"

    def __call__(self, pixels: np.ndarray) -> postprocess.Detections:
        import jax

        with jax.default_matmul_precision("float32"):
            det = self._detect(self._variables, pixels[None])
        return postprocess.Detections(*(np.asarray(x) for x in det))


class _TFLiteBackend:
    """An exported file in the LiteRT interpreter."""

    def __init__(self, path: pathlib.Path, num_threads: int):
        from mobiledet_jax.tflite import runtime

        self.model = runtime.TFLiteModel(str(path), num_threads=num_threads)
        if self.model.kind == "scores":
            raise ValueError(f"{path} has class scores but no post-processing op")
        _, h, w, _ = self.model.input_shape
        self.input_size = (h, w)
        self.half_pixel_centers = False  # config.data's default; the file does not record it
        self.anchors = None
        if self.model.kind == "raw":
            anchors_file = path.with_name(path.name + ".anchors.npy")
            if not anchors_file.exists():
                raise FileNotFoundError(
                    f"a raw export needs its anchors: {anchors_file} (written beside it by export)"
                )
            self.anchors = np.load(anchors_file)
        self.num_classes = self.model.num_classes
        self.kind = f"{self.model.kind} TFLite file"

    def __call__(self, pixels: np.ndarray) -> postprocess.Detections:
        return self.model.detect(pixels[None], self.anchors, postprocess.NmsSettings.reference())


def _workdir_names(workdir: str, backend: _JaxBackend) -> tuple[list[str] | None, str]:
    from mobiledet_jax import workdir as workdir_lib

    names = workdir_lib.load_labels(workdir)
    if names is not None:
        return names, f"{workdir}/labels.txt"
    try:
        from mobiledet_jax import data

        info = data.open_split(backend.config.data, backend.config.eval.split).info
    except Exception as e:  # the data may not be on this machine: names are not worth failing for
        return None, f"none (the data config's split could not be opened: {e})"
    if info.num_classes != backend.num_classes:
        return None, f"none (the data config has {info.num_classes} classes)"
    return [str(n) for n in info.category_names], f"data config ({backend.config.data.source})"


def _file_names(path: pathlib.Path, backend: _TFLiteBackend) -> tuple[list[str] | None, str]:
    from mobiledet_jax.tflite import flatbuffer, io_names

    text = flatbuffer.associated_files(path.read_bytes()).get(io_names.LABEL_FILE)
    if text is not None:
        names = labels_lib.parse_labels(text)
        if backend.model.kind == "raw" and names and names[0] == "background":
            names = names[1:]
        return names, f"{path.name} metadata"
    beside = path.with_name(path.name + ".labels.txt")
    if beside.exists():
        return labels_lib.read_labels(beside), str(beside)
    return None, "none"


class Detector:
    """A model (workdir checkpoint or .tflite file) that takes RGB images of any size."""

    def __init__(self, backend, names: Sequence[str], names_source: str, source: str):
        self._backend = backend
        self.names = list(names)
        self.names_source = names_source
        self.source = source

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        checkpoint_step: int | str | None = None,
        labels: str | os.PathLike | Sequence[str] | None = None,
        num_threads: int = 1,
    ) -> Detector:
        """A workdir (``checkpoint_step``: ``"latest"``, ``"best"`` or a number) or a .tflite file;
        ``labels``: a label file (one name per line) or the names themselves."""
        path = pathlib.Path(path)
        if path.is_file():
            if checkpoint_step is not None:
                raise ValueError("checkpoint_step applies to a workdir, not to a .tflite file")
            backend = _TFLiteBackend(path, num_threads)
            found = _file_names(path, backend) if labels is None else (None, "")
        elif path.is_dir():
            backend = _JaxBackend(str(path), checkpoint_step)
            found = _workdir_names(str(path), backend) if labels is None else (None, "")
        else:
            raise FileNotFoundError(f"no such workdir or .tflite file: {path}")
        names, names_source = found
        if labels is not None:
            if isinstance(labels, str | os.PathLike):
                names, names_source = labels_lib.read_labels(labels), os.fspath(labels)
            else:
                names, names_source = [str(n) for n in labels], "given"
        num_classes = backend.num_classes
        if names is not None and len(names) != num_classes:
            raise ValueError(
                f"{len(names)} label names ({names_source}) for a model with {num_classes} classes"
            )
        if names is None:
            names = labels_lib.placeholder_names(num_classes)
            names_source = f"placeholders: {names_source}"
        return cls(backend, names, names_source, f"{path} ({backend.kind})")

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self._backend.input_size)

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """RGB ``[h, w, 3]`` -> uint8 ``[H, W, 3]`` at the model's input size (``images``)."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"expected an RGB [H, W, 3] image, got shape {image.shape}")
        return images.model_pixels(image, self.input_size, self._backend.half_pixel_centers)

    def warmup(self) -> None:
        """One run on a black image (a workdir's first call compiles the model)."""
        self._backend(np.zeros((*self.input_size, 3), np.uint8))

    def name(self, class_id: int) -> str:
        return self.names[class_id] if 0 <= class_id < len(self.names) else f"class_{class_id}"

    def predict(self, image: np.ndarray, score_threshold: float = 0.0) -> Prediction:
        """Detections with ``score >= score_threshold`` on one RGB image (uint8 ``[H, W, 3]``)."""
        start = time.perf_counter()
        det = self._backend(self.preprocess(image))
        ms = 1000.0 * (time.perf_counter() - start)
        n = int(det.num_detections[0])
        scores = np.asarray(det.scores[0, :n], np.float32)
        keep = scores >= score_threshold
        boxes = np.asarray(det.boxes[0, :n], np.float32)[keep]
        class_ids = np.asarray(det.classes[0, :n], np.int32)[keep]
        h, w = np.asarray(image).shape[:2]
        pixel_boxes = boxes[:, [1, 0, 3, 2]] * np.asarray([w, h, w, h], np.float32)
        return Prediction(
            boxes=pixel_boxes,
            class_ids=class_ids,
            names=[self.name(int(c)) for c in class_ids],
            scores=scores[keep],
            boxes_normalized=boxes,
            image_size=(int(h), int(w)),
            milliseconds=ms,
        )
