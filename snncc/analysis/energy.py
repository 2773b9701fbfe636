"""Energy per inference (pJ) in several cost models, next to the ANN's MAC energy.

    E_SNN = e_mac * MACs (analog layers) + e_ac * SynOps + e_neuron * neuron updates
    E_ANN = e_mac(digital45nm) * ANN MACs

ANN MACs are neurons.md 7.2's MACs_l = k_h k_w C_in H_out W_out C_out, which counts the kernel taps
on a conv's zero padding too; the SNN side has no synapse there. ``ratio_in_bounds`` divides the
ANN energy without those (``ann_macs_in_bounds`` of the count) by the same SNN energy.

Constants (configurable; every model carries its source):

* ``digital45nm``: Horowitz, "Computing's Energy Problem", ISSCC 2014, 45 nm: FP32 MAC 4.6 pJ
  (mult 3.7 + add 0.9), accumulate (AC) 0.9 pJ per synaptic operation, neuron updates not charged
  (the convention of the conversion literature, neurons.md §7.1).
* ``loihi``: Davies et al., "Loihi: A Neuromorphic Manycore Processor with On-Chip Learning",
  IEEE Micro 38(1), 2018, Table 2 (pre-silicon, 0.75 V): 23.6 pJ per synaptic op (also charged
  per analog MAC, since the input arrives as graded spikes), 81 pJ per active neuron update
  (every neuron is updated every slice).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping

__all__ = ["EnergyModel", "DEFAULT_MODELS", "estimate"]


@dataclass(frozen=True)
class EnergyModel:
    name: str
    e_mac_pj: float
    e_ac_pj: float
    e_neuron_pj: float
    source: str


DEFAULT_MODELS: dict[str, EnergyModel] = {
    "digital45nm": EnergyModel(
        "digital45nm", 4.6, 0.9, 0.0,
        "Horowitz, ISSCC 2014, 45 nm: FP32 MAC 4.6 pJ (3.7 mult + 0.9 add), AC 0.9 pJ"),
    "loihi": EnergyModel(
        "loihi", 23.6, 23.6, 81.0,
        "Davies et al., IEEE Micro 38(1) 2018, Table 2 (pre-silicon): 23.6 pJ per synaptic "
        "op, 81 pJ per active neuron update"),
}


def estimate(synops: Mapping[str, Any], *,
             models: Mapping[str, EnergyModel | Mapping[str, float]] | None = None
             ) -> dict[str, Any]:
    """Energy per inference from a :func:`snncc.analysis.synops.count_synops` report, or from
    the ``synops`` section of a ``compile --report`` (its measured counts).

    ``models`` adds models or overrides constants, e.g. ``{"loihi": {"e_neuron_pj": 52.0}}``.
    Returns ``{"ann_pj", "models": {name: {"snn_pj", "ann_pj", "ratio", "breakdown",
    "constants"}}}`` where ``ratio`` = E_ANN / E_SNN (> 1: the SNN saves energy) and
    ``ratio_in_bounds`` the same with the ANN's MACs on the zero padding left out.
    """
    synops = _counts(synops)
    chosen = dict(DEFAULT_MODELS)
    for name, value in (models or {}).items():
        if isinstance(value, EnergyModel):
            chosen[name] = value
        else:
            base = chosen.get(name, EnergyModel(name, 0.0, 0.0, 0.0, "user"))
            params = dict(value)
            params.setdefault("source", base.source + " (modified)")
            chosen[name] = replace(base, **params)
    ann = synops["ann_macs"] * chosen["digital45nm"].e_mac_pj
    ann_in = synops.get("ann_macs_in_bounds", synops["ann_macs"]) * chosen["digital45nm"].e_mac_pj
    out = {}
    for name, m in chosen.items():
        parts = {"macs_pj": m.e_mac_pj * synops["total_macs"],
                 "synops_pj": m.e_ac_pj * synops["total_synops"],
                 "neurons_pj": m.e_neuron_pj * synops["neuron_updates"]}
        snn = sum(parts.values())
        out[name] = {"snn_pj": snn, "ann_pj": ann, "ratio": ann / snn if snn else float("inf"),
                     "ratio_in_bounds": ann_in / snn if snn else float("inf"),
                     "breakdown": parts, "constants": asdict(m)}
    return {"ann_pj": ann, "ann_macs": synops["ann_macs"],
            "ann_in_bounds_pj": ann_in, "models": out}


def _counts(synops: Mapping[str, Any]) -> Mapping[str, Any]:
    """``synops`` with the per-inference totals :func:`estimate` reads: a ``count_synops``
    report as it is; a report's ``synops`` section (format ``snncc-synops``) from its measured
    counts (it had been a bare KeyError 'total_macs')."""
    if "total_macs" in synops or synops.get("format") != "snncc-synops":
        return synops
    from snncc.errors import OptionError

    measured = synops.get("measured")
    if not synops.get("available", True) or not measured:
        raise OptionError("this synops section has no measured counts "
                          f"({synops.get('reason') or 'structure only'})", code="SNN-E349",
                          hint="compile with calibration samples, or pass count_synops(...)")
    return {**synops, "total_macs": measured["macs_per_inference"],
            "total_synops": measured["synops_per_inference"],
            "neuron_updates": measured["neuron_updates"]}
