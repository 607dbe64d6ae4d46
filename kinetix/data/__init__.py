"""Video data: decoding, sampling, transforms, annotations, datasets, synthetic data.

This package imports nothing from ``kinetix.layers``/``models``/``detection``/``engine``.
"""
