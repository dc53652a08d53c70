"""Checkpoint -> TFLite export: conversion, post-processing op, metadata, preflight, report.

Modules: ``convert`` (jax2tf -> SavedModel -> TFLite, float32/float16/int8), ``postprocess_op``
(``TFLite_Detection_PostProcess``), ``metadata`` (labels and normalization), ``preflight``
(EdgeTPU / DSP op tables), ``tflite_predict`` (running a file), ``report``, ``pipeline`` (the
command's library), ``tflite_model`` (flatbuffer helpers). Command: ``python -m
mobiledet_jax.export``; see ``__main__``.
"""
