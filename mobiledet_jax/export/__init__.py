"""Checkpoint -> TFLite export: conversion, QAT conversion, post-processing op, metadata, delegate
rules, report, deployment bundle.

Modules: ``convert`` (jax2tf -> SavedModel -> TFLite, float32/float16/int8), ``qat_convert`` (the
int8 file of a QAT model), ``postprocess_op`` (``TFLite_Detection_PostProcess``), ``metadata``
(labels and normalization), ``delegate_rules`` (what the EdgeTPU / Hexagon DSP delegates accept),
``inputs`` (label names, calibration images and the evaluation split, each from a stated source,
checked against the model), ``bundle`` (``<file>.labels.txt``, ``<file>.frigate.yml``, how to run
the file), ``report``, ``exporter`` (the command's library). Reading and running files is
``tflite/``; running a model on images is ``inference/``.
Command: ``python -m mobiledet_jax.export``; see ``__main__``.
"""
