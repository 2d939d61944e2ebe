"""Normalizing-flow building blocks on vectors (see `gm.flows.layers`)."""

from gm.flows.layers import (
    MADE,
    Flow,
    FlowSequence,
    IAFLayer,
    MAFLayer,
    MaskedLinear,
    PlanarFlow,
    RadialFlow,
    iaf_flows,
    maf_flows,
    planar_flows,
    radial_flows,
)

__all__ = [
    "Flow", "FlowSequence", "PlanarFlow", "RadialFlow", "MaskedLinear", "MADE", "IAFLayer", "MAFLayer",
    "planar_flows", "radial_flows", "iaf_flows", "maf_flows",
]
