"""PyTorch -> ONNX exporters, one module per model family. torch is imported here and nowhere in the runtime path."""
