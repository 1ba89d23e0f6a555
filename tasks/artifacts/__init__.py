"""Artifacts: the store, their keys, reference inputs, image decoding, the manifest and contact sheet."""
