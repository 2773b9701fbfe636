"""A neuron parameter that fixes the levels per slice must match the clip's own L (SNN-E314),
also when L comes from a QCFS-trained graph rather than from -L."""
from __future__ import annotations

import numpy as np
import pytest

from snncc.context import QuantClipParams
from snncc.driver import make_options
from snncc.errors import OptionError
from snncc.neurons import get_neuron


@pytest.mark.parametrize("neuron, params, levels", [
    ("gn", {"tau": 3}, 8),                       # tau*T = 12 != 8
    ("mt", {"n": 3}, 8),                         # equidistant n*T = 12 != 8
    ("mt", {"n": 2, "preset": "pow2"}, 8),       # (2^n - 1)*T = 12 != 8
])
def test_graph_levels_that_the_parameter_cannot_reach_are_refused(neuron, params, levels):
    options = make_options(neuron=neuron, timesteps=4, neuron_params=params)
    clip = QuantClipParams(lam=np.float32(1.0), levels=levels)
    with pytest.raises(OptionError) as err:
        get_neuron(neuron).from_quant_clip(clip, options)
    assert err.value.code == "SNN-E314" and "L=8" in str(err.value)


@pytest.mark.parametrize("neuron, params", [("gn", {"tau": 2}), ("mt", {"n": 2})])
def test_matching_levels_convert(neuron, params):
    options = make_options(neuron=neuron, timesteps=4, neuron_params=params)
    attrs = get_neuron(neuron).from_quant_clip(QuantClipParams(lam=np.float32(1.0), levels=8),
                                               options)
    assert attrs["theta"]
