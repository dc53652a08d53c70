"""TFLite_Detection_PostProcess splice, metadata, and MediaPipe's ObjectDetector on our export."""

import dataclasses

import numpy as np
import pytest
from flatbuffers import flexbuffers

from mobiledet_jax import config as config_lib
from mobiledet_jax.detection import anchors as anchors_lib
from mobiledet_jax.detection import box_coder
from mobiledet_jax.export import convert, exporter, metadata, postprocess_op
from mobiledet_jax.models import build_model, random_weights
from mobiledet_jax.tflite import flatbuffer, runtime

SIZE = (128, 128)
NAMES = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def tiny():
    mc = config_lib.model_config("mobiledet_edgetpu")
    mc.image_size, mc.width_multiplier, mc.num_classes = SIZE[0], 0.25, len(NAMES)
    model = build_model(mc)
    # spread the class scores so that detections are not tied
    return model, random_weights.random_variables(model, SIZE, seed=2, class_logit_scale=3.0)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(5).integers(0, 256, (*SIZE, 3)).astype(np.uint8)


@pytest.fixture(scope="module")
def bodies(tiny):
    model, variables = tiny
    rep = list(np.random.default_rng(1).integers(0, 256, (16, *SIZE, 3)).astype(np.uint8))
    return {
        fmt: convert.convert(model, variables, SIZE, fmt, "scores", representative_images=rep)
        for fmt in ("float32", "int8")
    }


@pytest.fixture(scope="module")
def float_file(bodies, tmp_path_factory):
    anchors = anchors_lib.anchors_for_image(*SIZE)
    tfl = postprocess_op.append_postprocess(bodies["float32"], anchors, len(NAMES))
    md = metadata.build_metadata("postprocessed", "tiny", "test model")
    tfl = metadata.attach(tfl, md, metadata.label_lines(NAMES, with_background=False))
    path = tmp_path_factory.mktemp("pp") / "tiny.tflite"
    path.write_bytes(tfl)
    return path


def _jax_detections(tiny, image, mediapipe_boxes=False):
    """Our post-processing of the JAX outputs: ``[(box, class, score)]``.

    ``mediapipe_boxes``: in MediaPipe's convention, which clamps a rectangle's origin to the image
    but keeps its unclipped height and width (observed with mediapipe 1.2.3).
    """
    model, variables = tiny
    boxes, logits = exporter.jax_raw(model, variables, image[None])
    import jax.numpy as jnp

    from mobiledet_jax.detection import postprocess

    anchors = anchors_lib.anchors_for_image(*SIZE)
    out = postprocess.postprocess(jnp.asarray(boxes), jnp.asarray(logits), jnp.asarray(anchors))
    n = int(out.num_detections[0])
    unclipped = np.asarray(box_coder.decode(boxes[0], anchors))
    result = []
    for i in range(n):
        box = np.asarray(out.boxes[0, i])
        if mediapipe_boxes:
            y0, x0, y1, x1 = unclipped[int(out.anchor_indices[0, i])]
            oy, ox = max(y0, 0.0), max(x0, 0.0)
            box = np.array([oy, ox, oy + (y1 - y0), ox + (x1 - x0)])
        result.append((box, int(out.classes[0, i]), float(out.scores[0, i])))
    return result


def test_custom_options_carry_the_spec_settings():
    opts = flexbuffers.Loads(
        postprocess_op.custom_options(90, postprocess_op.NmsConfig.from_settings())
    )
    assert opts["nms_score_threshold"] == pytest.approx(1e-8)
    assert opts["nms_iou_threshold"] == pytest.approx(0.6)
    assert (opts["max_detections"], opts["detections_per_class"]) == (100, 100)
    assert opts["use_regular_nms"] is True and opts["num_classes"] == 90
    assert [opts[k] for k in ("y_scale", "x_scale", "h_scale", "w_scale")] == [10, 10, 5, 5]


def test_float_op_detections_equal_jax_postprocessing(tiny, float_file, image):
    ours = _jax_detections(tiny, image)
    m = runtime.TFLiteModel(str(float_file))
    assert m.kind == "postprocessed"
    out = m.invoke(image[None])
    n = int(out["num_detections"][0])
    assert n == len(ours) == 100
    theirs = [
        (np.clip(out["detection_boxes"][0, i], 0, 1), int(out["detection_classes"][0, i]),
         float(out["detection_scores"][0, i]))
        for i in range(n)
    ]  # fmt: skip
    _assert_same_detections(ours, theirs, box_tol=2e-5)


def _assert_same_detections(ours, theirs, box_tol, top=60):
    """Every one of our ``top`` detections is in ``theirs`` (same class and score, close box).

    Matched as sets: detections with equal scores may come out in another order.
    """
    for box, cls, score in ours[:top]:
        match = [t for t in theirs if t[1] == cls and abs(t[2] - score) < 2e-6]
        assert match, (box, cls, score)
        assert min(np.abs(t[0] - np.asarray(box)).max() for t in match) <= box_tol, (box, match)


def test_int8_op_decodes_its_own_dequantized_outputs(bodies, tiny, image):
    """Each uint8-model detection is (decode(box_encodings[a]), c, class_scores[a, c+1])."""
    anchors = anchors_lib.anchors_for_image(*SIZE)
    body = runtime.TFLiteModel(bodies["int8"])
    raw = body.invoke(image[None])
    decoded = np.asarray(box_coder.decode(raw["box_encodings"][0], anchors))
    full = postprocess_op.append_postprocess(bodies["int8"], anchors, len(NAMES))
    ops = flatbuffer.op_counts(full)
    assert ops["DEQUANTIZE"] == 2 and ops[postprocess_op.OP_NAME] == 1
    out = runtime.TFLiteModel(full).invoke(image[None])
    n = int(out["num_detections"][0])
    assert n == 100
    for i in range(n):
        box, cls = out["detection_boxes"][0, i], int(out["detection_classes"][0, i])
        a = int(np.argmin(np.abs(decoded - box).sum(axis=1)))
        np.testing.assert_allclose(decoded[a], box, atol=1e-5)
        assert raw["class_scores"][0, a, cls + 1] == pytest.approx(out["detection_scores"][0, i])


def _np_fast_nms(box_encodings, class_scores, anchors, score_threshold, iou_threshold, max_det):
    """Independent statement of the op's fast (class-agnostic) NMS, ``use_regular_nms=False``
    with one class per detection: every anchor is ranked by its best foreground class score;
    those with ``score >= score_threshold`` enter one greedy NMS that drops a box whose IoU with
    a kept box is ``> iou_threshold``; at most ``max_det`` are kept, each labelled with its best
    class. Returns ``[(box, class, score, anchor)]`` in score order; boxes are the decoded,
    unclipped (ymin, xmin, ymax, xmax) of the op's centre-size decode."""
    a = np.asarray(anchors, np.float64)
    ah, aw = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    ay, ax = a[:, 0] + ah / 2, a[:, 1] + aw / 2
    ty, tx, th, tw = (box_encodings[:, i].astype(np.float64) for i in range(4))
    yc, xc = ty / 10 * ah + ay, tx / 10 * aw + ax
    h, w = np.exp(th / 5) * ah, np.exp(tw / 5) * aw
    boxes = np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=1)
    fg = class_scores[:, 1:]  # column 0 is the background
    best_class, best = fg.argmax(axis=1), fg.max(axis=1)

    def iou(i, j):
        (y0, x0, y1, x1), (v0, u0, v1, u1) = boxes[i], boxes[j]
        area_i, area_j = (y1 - y0) * (x1 - x0), (v1 - v0) * (u1 - u0)
        if area_i <= 0 or area_j <= 0:
            return 0.0
        inter = max(min(y1, v1) - max(y0, v0), 0) * max(min(x1, u1) - max(x0, u0), 0)
        return inter / (area_i + area_j - inter)

    order = sorted((i for i in range(len(best)) if best[i] >= score_threshold),
                   key=lambda i: -best[i])  # fmt: skip
    kept = []
    for i in order:
        if len(kept) == max_det:
            break
        if all(iou(k, i) <= iou_threshold for k in kept):
            kept.append(i)
    return [(boxes[i], int(best_class[i]), float(best[i]), i) for i in kept]


@pytest.mark.parametrize("iou_threshold", [None, 0.2])
def test_fast_nms_option_equals_a_numpy_oracle(bodies, image, iou_threshold):
    nms = postprocess_op.NmsConfig.from_settings(use_regular_nms=False)
    assert nms.max_classes_per_detection == 1
    if iou_threshold is not None:  # suppress enough that NMS, not the cap, sets the count
        nms = dataclasses.replace(nms, iou_threshold=iou_threshold)
    anchors = anchors_lib.anchors_for_image(*SIZE)
    # the oracle runs on the outputs of the body the op is appended to
    raw = runtime.TFLiteModel(bodies["float32"]).invoke(image[None])
    expected = _np_fast_nms(raw["box_encodings"][0], raw["class_scores"][0], anchors,
                            nms.score_threshold, nms.iou_threshold, nms.max_detections)  # fmt: skip
    scores = [e[2] for e in expected]
    assert len(set(scores)) == len(scores), "tied scores: the order would be unspecified"
    if iou_threshold is not None:
        assert len(expected) < nms.max_detections
    full = postprocess_op.append_postprocess(bodies["float32"], anchors, len(NAMES), nms)
    out = runtime.TFLiteModel(full).invoke(image[None])
    n = int(out["num_detections"][0])
    assert n == len(expected)
    np.testing.assert_array_equal(out["detection_classes"][0, :n], [e[1] for e in expected])
    np.testing.assert_allclose(out["detection_scores"][0, :n], scores, rtol=1e-6)
    np.testing.assert_allclose(
        out["detection_boxes"][0, :n], np.stack([e[0] for e in expected]), atol=1e-5
    )
    # class-agnostic: one detection per kept box, none overlapping another above the threshold
    assert len({e[3] for e in expected}) == n


def test_splice_rejects_a_raw_model(bodies, tiny):
    model, variables = tiny
    raw = convert.name_io(bodies["float32"], ("box_encodings", "class_logits"))
    with pytest.raises(ValueError, match="expected outputs"):
        postprocess_op.append_postprocess(raw, anchors_lib.anchors_for_image(*SIZE), 3)


def test_metadata_round_trip(float_file):
    meta, files = metadata.read(float_file.read_bytes())
    assert files == {"labelmap.txt": "circle\nsquare\ntriangle\n"}
    sub = meta.subgraphMetadata[0]
    (image,) = sub.inputTensorMetadata
    norm = image.processUnits[0].options
    assert (list(norm.mean), list(norm.std)) == ([127.5], [127.5])
    names = [t.name.decode() for t in sub.outputTensorMetadata]
    assert names == ["location", "category", "score", "number of detections"]
    assert meta.minParserVersion.decode() == metadata.MIN_PARSER_VERSION
    # the outputs carrying the metadata are the op's, in its order
    _, outs = flatbuffer.io_tensors(float_file.read_bytes())
    assert [o.name for o in outs] == list(postprocess_op.OUTPUT_NAMES)


@pytest.mark.slow
def test_mediapipe_object_detector_matches_jax(tiny, float_file, image):
    import mediapipe as mp
    from mediapipe.tasks.python.core import base_options
    from mediapipe.tasks.python.vision import object_detector

    options = object_detector.ObjectDetectorOptions(
        base_options=base_options.BaseOptions(model_asset_path=str(float_file)),
        max_results=100,
        score_threshold=0.0,
    )
    with object_detector.ObjectDetector.create_from_options(options) as detector:
        result = detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=image))
    h, w = SIZE
    theirs = []  # MediaPipe merges the classes of one box into one detection: flatten
    for d in result.detections:
        bb = d.bounding_box
        box = np.array([bb.origin_y / h, bb.origin_x / w, (bb.origin_y + bb.height) / h,
                        (bb.origin_x + bb.width) / w])  # fmt: skip
        theirs += [(box, NAMES.index(c.category_name), c.score) for c in d.categories]
    ours = _jax_detections(tiny, image, mediapipe_boxes=True)
    assert len(theirs) == len(ours) == 100
    # MediaPipe reports integer pixel rectangles (origin and size each truncated): < 2 px
    _assert_same_detections(ours, theirs, box_tol=2.0 / SIZE[0])
