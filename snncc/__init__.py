"""snncc: compile a trained ONNX CNN into an ultra-low-latency spiking neural network."""
__version__ = "0.1.0"
