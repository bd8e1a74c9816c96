"""Data input: image sources (shapes, image folders, tfds), transforms and host-side batching.

Submodules are imported explicitly (e.g. `from titok_var.data import pipeline`) so that
tensorflow_datasets is only imported by code that reads a tfds dataset.
"""
