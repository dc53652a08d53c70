"""SSD multiple-grid anchors (TF OD API ``ssd_anchor_generator``; docs/reference/head_and_anchors.md).

Anchors are normalized ``[ymin, xmin, ymax, xmax]`` boxes, not clipped. Order: map, then row y, then
column x, then anchor type (fastest), which matches the box predictor's output layout. The anchor
types are ``AnchorSettings`` (``config.detection.anchors``); the reference values live in the config.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mobiledet_jax import config as config_lib

NUM_LAYERS = 6  # SSDLite's six feature maps (C4, C5, four extra layers): structural, not a setting


@dataclasses.dataclass(frozen=True)
class AnchorSettings:
    """Anchor types per map (``config.detection.anchors``; ``reference()`` = the published recipe)."""

    min_scale: float
    max_scale: float
    aspect_ratios: tuple[float, ...]
    interpolated_scale_aspect_ratio: float
    reduce_boxes_in_lowest_layer: bool
    lowest_layer_boxes: tuple[tuple[float, float], ...]

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict) -> AnchorSettings:
        return cls(
            min_scale=float(cfg.min_scale),
            max_scale=float(cfg.max_scale),
            aspect_ratios=tuple(float(a) for a in cfg.aspect_ratios),
            interpolated_scale_aspect_ratio=float(cfg.interpolated_scale_aspect_ratio),
            reduce_boxes_in_lowest_layer=bool(cfg.reduce_boxes_in_lowest_layer),
            lowest_layer_boxes=tuple((float(s), float(a)) for s, a in cfg.lowest_layer_boxes),
        )

    @classmethod
    def reference(cls) -> AnchorSettings:
        return cls.from_config(config_lib.detection_config().anchors)


def anchors_per_location(settings: AnchorSettings | None = None) -> tuple[int, ...]:
    """Anchor types per location of each map: ``(3, 6, 6, 6, 6, 6)`` for the reference. The box
    predictor is sized from this, so the head always matches the anchors."""
    return tuple(len(layer) for layer in layer_box_specs(settings))


def _ceil_div(n: int, d: int) -> int:
    return -(-n // d)


def feature_map_sizes(image_height: int, image_width: int) -> tuple[tuple[int, int], ...]:
    """The six SSD feature-map sizes ``((H0, W0), ..., (H5, W5))`` of SSDLite-MobileDet.

    Map 0 is the stride-16 backbone endpoint (C4), map 1 the stride-32 one (C5), and each extra layer
    is a stride-2 TF-SAME conv, so every size is a ceil division: 320 -> 20, 10, 5, 3, 2, 1.
    """
    if image_height < 1 or image_width < 1:
        raise ValueError(f"bad image size {(image_height, image_width)}")
    sizes = [
        (_ceil_div(image_height, 16), _ceil_div(image_width, 16)),
        (_ceil_div(image_height, 32), _ceil_div(image_width, 32)),
    ]
    while len(sizes) < NUM_LAYERS:
        h, w = sizes[-1]
        sizes.append((_ceil_div(h, 2), _ceil_div(w, 2)))
    return tuple(sizes)


def layer_box_specs(settings: AnchorSettings | None = None) -> list[list[tuple[float, float]]]:
    """Per-layer ``(scale, aspect_ratio)`` anchor types, as ``create_ssd_anchors`` builds them."""
    s = settings or AnchorSettings.reference()
    n = NUM_LAYERS
    scales = [s.min_scale + (s.max_scale - s.min_scale) * i / (n - 1) for i in range(n)]
    scales.append(1.0)
    specs = []
    for layer, (scale, scale_next) in enumerate(zip(scales[:-1], scales[1:], strict=True)):
        if layer == 0 and s.reduce_boxes_in_lowest_layer:
            specs.append(list(s.lowest_layer_boxes))
            continue
        layer_specs = [(scale, ar) for ar in s.aspect_ratios]
        if s.interpolated_scale_aspect_ratio > 0.0:
            layer_specs.append((math.sqrt(scale * scale_next), s.interpolated_scale_aspect_ratio))
        specs.append(layer_specs)
    return specs


def grid_anchors(
    grid_height: int,
    grid_width: int,
    box_specs: Sequence[tuple[float, float]],
    base_anchor_size: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """Anchors of one feature map, float64 ``[H * W * len(box_specs), 4]``.

    Centres at ``((i + 0.5) / H, (j + 0.5) / W)``; height ``s / sqrt(ar) * base_h`` and width
    ``s * sqrt(ar) * base_w``; order y, x, anchor type (fastest).
    """
    scales = np.array([s for s, _ in box_specs], np.float64)
    ratio_sqrts = np.sqrt(np.array([ar for _, ar in box_specs], np.float64))
    heights = scales / ratio_sqrts * base_anchor_size[0]
    widths = scales * ratio_sqrts * base_anchor_size[1]
    y_centers = (np.arange(grid_height, dtype=np.float64) + 0.5) / grid_height
    x_centers = (np.arange(grid_width, dtype=np.float64) + 0.5) / grid_width
    yc = np.broadcast_to(y_centers[:, None, None], (grid_height, grid_width, len(box_specs)))
    xc = np.broadcast_to(x_centers[None, :, None], (grid_height, grid_width, len(box_specs)))
    h = np.broadcast_to(heights, yc.shape)
    w = np.broadcast_to(widths, xc.shape)
    boxes = np.stack([yc - 0.5 * h, xc - 0.5 * w, yc + 0.5 * h, xc + 0.5 * w], axis=-1)
    return boxes.reshape(-1, 4)


def multiple_grid_anchors(
    sizes: Sequence[tuple[int, int]],
    image_size: tuple[int, int] | None = None,
    box_specs: Sequence[Sequence[tuple[float, float]]] | None = None,
) -> np.ndarray:
    """Anchors for any list of feature-map sizes ``[(H, W), ...]``: numpy float32 ``[A, 4]``.

    Args:
      sizes: one ``(H, W)`` per feature map, in map order.
      image_size: ``(height, width)`` of the network input. As in TF
        (``MultipleGridAnchorGenerator``), the base anchor size becomes
        ``(min(h, w) / h, min(h, w) / w)``, so anchors are square in pixels on a non-square input.
        ``None`` means a square input (base size 1 x 1).
      box_specs: per-map ``(scale, aspect_ratio)`` lists; defaults to ``layer_box_specs()``.

    Returns:
      float32 ``[A, 4]`` normalized ``[ymin, xmin, ymax, xmax]``, not clipped (2034 at 320x320).
    """
    specs = layer_box_specs() if box_specs is None else box_specs
    if len(specs) != len(sizes):
        raise ValueError(f"{len(sizes)} feature maps but {len(specs)} anchor layers")
    base = (1.0, 1.0)
    if image_size is not None:
        h, w = image_size
        base = (min(h, w) / h, min(h, w) / w)
    parts = [grid_anchors(gh, gw, s, base) for (gh, gw), s in zip(sizes, specs, strict=True)]
    return np.concatenate(parts, axis=0).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _cached_anchors(image_height: int, image_width: int, settings: AnchorSettings) -> np.ndarray:
    anchors = multiple_grid_anchors(
        feature_map_sizes(image_height, image_width),
        (image_height, image_width),
        layer_box_specs(settings),
    )
    anchors.setflags(write=False)
    return anchors


def anchors_for_image(
    image_height: int, image_width: int, settings: AnchorSettings | None = None
) -> np.ndarray:
    """SSDLite-MobileDet anchors for an input size: read-only numpy float32 ``[A, 4]`` (cached).

    ``settings`` default to the reference (``AnchorSettings.reference()``)."""
    settings = settings or AnchorSettings.reference()
    return _cached_anchors(int(image_height), int(image_width), settings)


def anchors_jnp(
    image_height: int, image_width: int, settings: AnchorSettings | None = None
) -> jax.Array:
    """``anchors_for_image`` as a ``jax.Array`` ``[A, 4]`` (float32, on the default device)."""
    return jnp.asarray(anchors_for_image(image_height, image_width, settings))


def anchors_from_config(
    anchor_config: ml_collections.ConfigDict, image_height: int, image_width: int
) -> jax.Array:
    """The anchors of ``config.detection.anchors`` for an input size, as a ``jax.Array``."""
    return anchors_jnp(image_height, image_width, AnchorSettings.from_config(anchor_config))


def num_anchors(image_height: int, image_width: int, settings: AnchorSettings | None = None) -> int:
    """Total anchor count ``A`` for an input size (2034 at 320x320 with the reference)."""
    sizes = feature_map_sizes(image_height, image_width)
    per_location = anchors_per_location(settings)
    return sum(h * w * a for (h, w), a in zip(sizes, per_location, strict=True))
