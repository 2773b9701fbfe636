"""The NIR backend: export IF/LIF networks as a Neuromorphic Intermediate Representation file."""
