"""The sub-network description shared by every command that takes `--subnet FILE`.

    {"layers": [0, 1, 2, 5, ...], "mlp_widths": [1536, 1024, ...],
     "compression": {"attn": ["int8", ...], "mlp": ["int8", ...], "embed": "int8", "head": "fp32"}}

`layers` are the base model's layer indices kept, increasing; `mlp_widths[i]` is the MLP width of
the i-th kept layer (omitted: full width); `compression` (optional, `hwnas.compression`) the weight
format of each kept layer's attention and MLP, of the embedding and of the head (omitted, or all
fp32: uncompressed). Anything else is a `SubnetError` with one line of text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .compression import Compression, CompressionError
from .errors import SubnetError, is_int
from .space import SearchSpace

KEYS = ("layers", "mlp_widths", "compression")


@dataclass(frozen=True)
class Subnet:
    layers: tuple[int, ...]
    mlp_widths: tuple[int, ...]
    compression: Compression | None = None  # None: every weight fp32 (an all-fp32 one is stored as None)

    def __post_init__(self) -> None:
        if self.compression is not None and self.compression.plain:
            object.__setattr__(self, "compression", None)

    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def architecture(self) -> Subnet:
        """The same layers and widths, uncompressed."""
        return Subnet(self.layers, self.mlp_widths) if self.compression is not None else self

    def compressed(self, compression: Compression | None) -> Subnet:
        return Subnet(self.layers, self.mlp_widths, compression)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"layers": list(self.layers), "mlp_widths": list(self.mlp_widths)}
        if self.compression is not None:
            d["compression"] = self.compression.to_dict()
        return d

    def key(self) -> str:
        """A canonical string: equal sub-networks have equal keys (dedup in the search store)."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def full(cls, num_layers: int, intermediate_size: int) -> Subnet:
        return cls(tuple(range(num_layers)), (intermediate_size,) * num_layers)

    @classmethod
    def dropping(cls, space: SearchSpace, layer_scores: list[float] | None, drop: int, width: int) -> Subnet:
        """The space's `drop` least influential droppable layers removed (lowest `layer_scores`,
        ShortGPT's block influence; the space's own order when None; the last layers for a
        prefix space), every kept layer at MLP `width`."""
        n = space.num_layers
        if space.mode == "prefix":
            layers = list(range(n - drop))
        else:
            cand = list(space.droppable_layers)
            if layer_scores:
                cand.sort(key=lambda i: layer_scores[i])
            dropped = set(cand[:drop])
            layers = [i for i in range(n) if i not in dropped]
        return cls(tuple(layers), (width,) * len(layers))

    @classmethod
    def smallest(cls, space: SearchSpace, layer_scores: list[float] | None = None) -> Subnet:
        """The space's smallest sub-network: its least influential layers dropped down to its minimum
        depth (`dropping`), every kept layer at its narrowest MLP width. One definition for the
        sandwich rule's smallest network and the latency fit's smallest sample."""
        return cls.dropping(space, layer_scores, space.num_layers - min(space.allowed_depths), space.mlp_widths[0])

    @classmethod
    def parse(cls, data: Any, *, num_layers: int, intermediate_size: int | list[int],
              space: SearchSpace | None = None, source: str = "subnet") -> Subnet:
        """Validate a decoded JSON object against the base model (and the space, if given).

        `intermediate_size` is the base width, or the list of per-layer widths of a base that is
        itself heterogeneous."""
        def fail(msg: str) -> SubnetError:
            return SubnetError(f"{source}: {msg}")

        if not isinstance(data, dict):
            raise fail('must be a JSON object like {"layers": [0, 1, ...], "mlp_widths": [...]}')
        unknown = sorted(set(data) - set(KEYS))
        if unknown:
            raise fail(f"unknown keys {unknown}; expected {list(KEYS)}")
        if "layers" not in data:
            raise fail('missing "layers" (the indices of the base layers kept)')
        layers = data["layers"]
        if not isinstance(layers, list) or not all(is_int(i) for i in layers):
            raise fail('"layers" must be a list of integers')
        if not layers:
            raise fail('"layers" is empty: keep at least one layer')
        out = [i for i in layers if not 0 <= i < num_layers]
        if out:
            raise fail(f"layer index {out[0]} out of range: the base model has layers 0..{num_layers - 1}")
        if len(set(layers)) != len(layers):
            dup = next(i for i in layers if layers.count(i) > 1)
            raise fail(f"layer {dup} is listed twice")
        if layers != sorted(layers):
            raise fail('"layers" must be in increasing order (the base order is kept)')
        base_widths = (list(intermediate_size) if isinstance(intermediate_size, (list, tuple))
                       else [intermediate_size] * num_layers)
        widths = data.get("mlp_widths")
        if widths is None:
            widths = [base_widths[i] for i in layers]
        if not isinstance(widths, list) or not all(is_int(w) for w in widths):
            raise fail('"mlp_widths" must be a list of integers')
        if len(widths) != len(layers):
            raise fail(f'"mlp_widths" has {len(widths)} entries but "layers" has {len(layers)}')
        for layer, w in zip(layers, widths):
            if w <= 0:
                raise fail(f"MLP width {w} of layer {layer} must be positive")
            if w > base_widths[layer]:
                raise fail(f"MLP width {w} of layer {layer} is larger than the base's {base_widths[layer]}")
        if space is not None:
            _check_space(layers, widths, space, fail)
        return cls(tuple(layers), tuple(widths), _compression(data, len(layers), source, space))

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> Subnet:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise SubnetError(f"sub-network file not found: {path}") from exc
        except json.JSONDecodeError as exc:
            raise SubnetError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
        except RecursionError as exc:
            raise SubnetError(f"{path}: nested too deeply to be a sub-network file") from exc
        except IsADirectoryError as exc:
            raise SubnetError(f"{path} is a folder; give a sub-network JSON file") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise SubnetError(f"{path}: cannot read it as a JSON text file ({type(exc).__name__})") from exc
        return cls.parse(data, source=str(path), **kwargs)

    @classmethod
    def from_dict(cls, data: Any, source: str = "subnet") -> Subnet:
        """The structural part of `parse` for sub-networks stored by hwnas itself (records of a run
        or a latency model): lists of integers of equal length, no model needed."""
        ok = (isinstance(data, dict) and isinstance(data.get("layers"), list)
              and isinstance(data.get("mlp_widths"), list) and len(data["layers"]) == len(data["mlp_widths"])
              and all(is_int(x) for x in data["layers"] + data["mlp_widths"]))
        if not ok:
            raise SubnetError(f'{source}: not a sub-network (expected {{"layers": [...], "mlp_widths": [...]}} '
                              "with integer lists of equal length)")
        return cls(tuple(data["layers"]), tuple(data["mlp_widths"]), _compression(data, len(data["layers"]), source))


def _compression(data: dict[str, Any], depth: int, source: str, space: SearchSpace | None = None) -> Compression | None:
    if data.get("compression") is None:
        return None
    try:
        comp = Compression.parse(data["compression"], depth, f"{source}: compression")
    except CompressionError as exc:
        raise SubnetError(str(exc)) from exc
    if space is not None and not comp.plain:
        allowed = set(space.weight_formats)
        bad = sorted(set(comp.formats()) - allowed)
        if bad:
            raise SubnetError(f"{source}: weight format(s) {bad} are not in the space's compression formats "
                              f"{sorted(allowed)}")
    return comp



def _check_space(layers: list[int], widths: list[int], space: SearchSpace, fail) -> None:
    if space.num_layers and max(layers) >= space.num_layers:
        raise fail(f"layer {max(layers)} is outside the space's {space.num_layers} layers")
    allowed = set(space.mlp_widths)
    for layer, w in zip(layers, widths):
        if w not in allowed:
            raise fail(f"MLP width {w} of layer {layer} is not in the space's widths {sorted(allowed)}")
    if len(layers) not in space.allowed_depths:
        raise fail(f"depth {len(layers)} is not allowed by the space (allowed: {list(space.allowed_depths)})")
    if space.mode == "prefix":
        if layers != list(range(len(layers))):
            raise fail("the space keeps a prefix of layers (mode: prefix); layers must be 0..N-1")
    else:
        dropped = set(range(space.num_layers)) - set(layers)
        fixed = dropped - set(space.droppable_layers)
        if fixed:
            raise fail(f"layer {min(fixed)} may not be dropped in this space")
