"""Exact costs of sub-networks, the `params` and `size_mb` objectives: parameter count and stored
weight size, vectorised over genomes for the inner search and per sub-network for the store."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..subnet import Subnet


class CostModel:
    """Exact parameter count and weight size of sub-networks (vectorised over genomes): fp32, or
    with a compressed sub-network's per-block formats (bits per weight of each format; norms stay
    fp32; embedding and head are stored apart, as the runtimes store them)."""

    def __init__(self, config: Any) -> None:
        from ..modeling import ParamCounter

        self.counter = ParamCounter(config)

    def params(self, keep: np.ndarray, widths: np.ndarray) -> np.ndarray:
        return self.counter.params(keep, widths)

    def of_subnet(self, s: Subnet) -> dict[str, float]:
        p = self.counter.of_widths(s.mlp_widths)
        return {"params": p, "size_mb": self.size_bytes(s) / 1e6}

    def size_bytes(self, s: Subnet) -> float:
        from ..latency import format_bits, subnet_arrays

        keep, widths, formats = subnet_arrays([s], self.counter.num_layers, with_formats=True)
        bits = format_bits(formats) if s.compression is not None else None
        return float(self.counter.weight_bytes(keep, widths, bits)[0])
