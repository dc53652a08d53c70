"""``inference.Detector``: a workdir and its float32 exports (post-processed and raw) give the same
detections on the same images, with the export's preprocessing (TF1 bilinear resize, RGB uint8)."""

import numpy as np
import pytest
import tensorflow as tf

from mobiledet_jax import workdir as workdir_lib
from mobiledet_jax.export import exporter
from mobiledet_jax.inference import Detector, images
from mobiledet_jax.models import build_model, random_weights
from tests.helpers import quickstart_model
from tests.helpers.detections import assert_same_detections


@pytest.mark.parametrize("half_pixel_centers", [False, True])
@pytest.mark.parametrize("shape,size", [((480, 640), (320, 320)), ((37, 53), (160, 128)),
                                        ((321, 500), (123, 77))])  # fmt: skip
def test_resize_is_the_input_pipelines(shape, size, half_pixel_centers):
    x = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    ref = tf.raw_ops.ResizeBilinear(images=x[None], size=size, align_corners=False,
                                    half_pixel_centers=half_pixel_centers)[0].numpy()  # fmt: skip
    np.testing.assert_array_equal(images.resize_bilinear(x, size, half_pixel_centers), ref)
    pixels = images.model_pixels(x, size, half_pixel_centers)
    assert pixels.dtype == np.uint8 and pixels.shape == (*size, 3)
    np.testing.assert_array_equal(pixels, np.clip(np.round(ref), 0, 255))


def test_sources_and_spread(tmp_path):
    (tmp_path / "b.png").write_bytes(b"")
    (tmp_path / "a.JPG").write_bytes(b"")
    (tmp_path / "c.txt").write_text("")
    assert [p.name for p in images.list_images(tmp_path)] == ["a.JPG", "b.png"]
    assert [p.name for p in images.list_images(f"{tmp_path}/*.png")] == ["b.png"]
    with pytest.raises(FileNotFoundError):
        images.list_images(tmp_path / "none")
    with pytest.raises(ValueError, match="holds no image files"):
        images.list_images(f"{tmp_path}/*.txt")
    assert images.spread(list(range(100)), 5) == [0, 25, 50, 74, 99]
    assert images.spread([1, 2], 5) == [1, 2]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A quickstart-like workdir (random weights, its config.json) and its float32 exports."""
    root = tmp_path_factory.mktemp("detector")
    workdir = quickstart_model.workdir(root / "workdir")
    files = {}
    for outputs in ("postprocessed", "raw"):
        files[outputs] = root / f"{outputs}.tflite"
        opts = exporter.ExportOptions(format="float32", outputs=outputs, parity_images=0,
                                      eval_images=0, latency_runs=0)  # fmt: skip
        exporter.export_checkpoint(str(workdir), str(files[outputs]), opts)
    return workdir, files


def _images():
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in
            ((160, 160, 3), (240, 320, 3), (97, 131, 3))]  # fmt: skip


@pytest.mark.slow
def test_workdir_and_its_float_exports_detect_the_same(model):
    workdir, files = model
    ours = Detector.load(workdir)
    assert ours.names == list(quickstart_model.CLASS_NAMES) and ours.input_size == (160, 160)
    for outputs, path in files.items():
        theirs = Detector.load(path)
        assert theirs.names == ours.names, outputs
        for image in _images():
            a, b = ours.predict(image), theirs.predict(image)
            k = assert_same_detections(
                (a.boxes_normalized, a.class_ids, a.scores),
                (b.boxes_normalized, b.class_ids, b.scores),
            )
            assert k >= 50, outputs
            assert a.names == [ours.names[c] for c in a.class_ids]
            h, w = image.shape[:2]  # pixel boxes: x_min, y_min, x_max, y_max of the given image
            expected = a.boxes_normalized[:, [1, 0, 3, 2]] * [w, h, w, h]
            np.testing.assert_allclose(a.boxes, expected, rtol=1e-6)


@pytest.mark.slow
def test_labels_and_errors(model, tmp_path):
    workdir, files = model
    names = tmp_path / "names.txt"
    names.write_text("w\nx\ny\nz\n")
    assert Detector.load(files["postprocessed"], labels=names).names == ["w", "x", "y", "z"]
    assert Detector.load(workdir, labels=["a", "b", "c", "d"]).names_source == "given"
    with pytest.raises(ValueError, match="3 label names"):
        Detector.load(workdir, labels=["a", "b", "c"])
    with pytest.raises(ValueError, match="checkpoint_step applies to a workdir"):
        Detector.load(files["raw"], checkpoint_step="best")
    with pytest.raises(FileNotFoundError, match="no such workdir or .tflite file"):
        Detector.load(tmp_path / "nothing")
    # a workdir without config and labels still loads, with placeholder names
    loaded = workdir_lib.load_model(str(workdir))
    bare = tmp_path / "bare"
    mc = workdir_lib.model_config_from_meta(loaded.meta)
    mc.num_classes = 7
    v = random_weights.random_variables(build_model(mc), (160, 160), seed=1)
    workdir_lib.save_model(str(bare), v, mc)
    d = Detector.load(bare)
    assert d.names == [f"class_{i}" for i in range(7)] and d.names_source.startswith("placeholders")
