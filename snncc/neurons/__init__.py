"""Neuron registry. Importing this package registers every neuron (explicit imports, no discovery)."""
from snncc.neurons.registry import NEURONS, NeuronSpec, get_neuron, register_neuron  # noqa: F401
from snncc.neurons import if_neuron, lif, group, multi_threshold, bitserial, srp  # noqa: F401
