"""Running a trained model on images: ``Detector`` (a workdir checkpoint or an exported .tflite,
the same preprocessing for both), the model's input pixels (``images``), video in and out
(``video``) and ``predict_source``, the library of ``python -m mobiledet_jax.predict``.

The room sits above ``models``, ``tflite`` and ``visualization`` and below ``export`` (whose
``--calibration_images`` are read with ``images.model_pixels``)."""

from mobiledet_jax.inference.detector import Detector, Prediction

__all__ = ["Detector", "Prediction"]
