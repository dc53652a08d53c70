"""MobileNetV2 / V3 SSDLite feature extractors as the TF Object Detection API builds them."""

BASELINES = {}
