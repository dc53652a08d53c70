"""Video in and out for ``predict`` (OpenCV): RGB frames read from a file, annotated frames written.

OpenCV comes with ``opencv-contrib-python`` (pinned in requirements.txt; MediaPipe needs it too).
Frames are converted between OpenCV's BGR and the RGB every model here takes. The writer uses the
``mp4v`` codec for ``.mp4`` / ``.m4v`` / ``.mov`` and ``MJPG`` otherwise, both in every OpenCV wheel.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator

import numpy as np


def _cv2():
    import cv2

    return cv2


def video_info(path: str | os.PathLike) -> dict:
    """``{"fps", "frames", "width", "height"}`` of a video file; ValueError if OpenCV cannot open
    it."""
    cv2 = _cv2()
    cap = cv2.VideoCapture(os.fspath(path))
    try:
        if not cap.isOpened():
            raise ValueError(f"OpenCV cannot open the video {path}")
        return {
            "fps": float(cap.get(cv2.CAP_PROP_FPS)) or 25.0,
            "frames": int(cap.get(cv2.CAP_PROP_FRAME_COUNT)),
            "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        }
    finally:
        cap.release()


def read_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """The frames of a video file as uint8 ``[H, W, 3]`` RGB, in order."""
    cv2 = _cv2()
    cap = cv2.VideoCapture(os.fspath(path))
    if not cap.isOpened():
        raise ValueError(f"OpenCV cannot open the video {path}")
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


class VideoWriter:
    """Writes RGB frames of one size to a video file (``with VideoWriter(path, fps) as w``)."""

    def __init__(self, path: str | os.PathLike, fps: float):
        self.path = pathlib.Path(path)
        self.fps = float(fps)
        self._writer = None

    def write(self, frame: np.ndarray) -> None:
        cv2 = _cv2()
        frame = np.asarray(frame, np.uint8)
        if self._writer is None:
            suffix = self.path.suffix.lower()
            codec = "mp4v" if suffix in (".mp4", ".m4v", ".mov") else "MJPG"
            h, w = frame.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*codec)
            self._writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, (w, h))
            if not self._writer.isOpened():
                raise ValueError(f"OpenCV cannot write {self.path} with codec {codec}")
        self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
