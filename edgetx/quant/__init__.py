"""Quantized variants: the schemes, applying them (onnxruntime.quantization), the graph work that
makes them fast or exact (outliers, grids), sensitivity, and the accuracy gates that decide which
are written."""
