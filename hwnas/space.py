"""The search space: which layers may be dropped and which MLP widths each layer may take.

Declared in YAML (schema version 1, see `docs/formats.md`)::

    version: 1
    name: smollm2-135m-default
    base: {num_layers: 30, intermediate_size: 1536}   # optional when a model is given
    layers:
      mode: any          # any: drop any of `droppable`; prefix: keep the first N (LLaMA-NAS)
      min_depth: 24
      depths: null       # prefix mode: the allowed depths, e.g. [24, 28, 32]
      droppable: null    # any mode: layer indices that may be dropped (default: all)
    mlp:
      widths: [256, 512, 768, 1024, 1280, 1536]
    heads: null          # reserved for per-layer head / KV-group choices
    compression:         # optional: weight formats searched jointly with the architecture
      formats: [fp32, int8]   # gene values; the target backend must run each (`hwnas backends`)
      per: block         # block: attention and MLP of each layer apart; layer: one per layer;
                         # network: one format for every weight. Embedding and head: a gene each
                         # (block, layer), the network's (network).

Sizes are reported two ways: `encoding_size`, the product of the choices of every gene (how
LLaMA-NAS counts: 3 x 2^32 for depth {24,28,32} x 32 binary widths), and `distinct_subnets`, the
number of different architectures (widths and formats of dropped layers do not matter).
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .compression import bits_of
from .errors import SpaceError, is_int
from .fileio import read_yaml_file, write_yaml

WIDTH_MULTIPLE = 64  # hardware-friendly and what INT4 group-wise compression needs
SCHEMA_VERSION = 1
LAYER_MODES = ("any", "prefix")
COMPRESSION_PER = ("block", "layer", "network")


@dataclass(frozen=True)
class SearchSpace:
    num_layers: int
    intermediate_size: int
    mlp_widths: tuple[int, ...]
    min_depth: int
    mode: str = "any"
    depths: tuple[int, ...] | None = None
    droppable: tuple[int, ...] | None = None
    name: str = "unnamed"
    description: str = ""
    heads: Any = None
    weight_formats: tuple[str, ...] = ("fp32",)
    compression_per: str = "block"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        n = self.num_layers
        if n <= 0 or self.intermediate_size <= 0:
            raise SpaceError(f"space '{self.name}': num_layers and intermediate_size must be > 0")
        if self.mode not in LAYER_MODES:
            raise SpaceError(f"space '{self.name}': layers.mode must be one of {LAYER_MODES}, got '{self.mode}'")
        if not self.mlp_widths:
            raise SpaceError(f"space '{self.name}': mlp.widths is empty")
        bad = [w for w in self.mlp_widths if w <= 0 or w % WIDTH_MULTIPLE]
        if bad:
            raise SpaceError(
                f"space '{self.name}': MLP widths must be positive multiples of {WIDTH_MULTIPLE} "
                f"(hardware-friendly, and INT4 group-wise compression needs it); got {bad}"
            )
        if len(set(self.mlp_widths)) != len(self.mlp_widths) or list(self.mlp_widths) != sorted(self.mlp_widths):
            raise SpaceError(f"space '{self.name}': mlp.widths must be increasing with no repeats")
        if self.mlp_widths[-1] > self.intermediate_size:
            raise SpaceError(
                f"space '{self.name}': width {self.mlp_widths[-1]} exceeds the model's MLP width "
                f"{self.intermediate_size}"
            )
        if not 1 <= self.min_depth <= n:
            raise SpaceError(f"space '{self.name}': layers.min_depth must be in 1..{n}, got {self.min_depth}")
        if self.depths is not None:
            if self.mode != "prefix":
                raise SpaceError(f"space '{self.name}': layers.depths is only for mode: prefix")
            if any(not self.min_depth <= d <= n for d in self.depths):
                raise SpaceError(f"space '{self.name}': layers.depths must lie in {self.min_depth}..{n}")
        if self.droppable is not None:
            if self.mode != "any":
                raise SpaceError(f"space '{self.name}': layers.droppable is only for mode: any")
            if any(not 0 <= i < n for i in self.droppable) or len(set(self.droppable)) != len(self.droppable):
                raise SpaceError(f"space '{self.name}': layers.droppable must be distinct indices in 0..{n - 1}")
        if self.heads is not None:
            raise SpaceError(f"space '{self.name}': searching heads is not supported yet; set heads: null")
        fmts = self.weight_formats
        if not fmts or len(set(fmts)) != len(fmts) or not all(isinstance(f, str) and f for f in fmts):
            raise SpaceError(f"space '{self.name}': compression.formats must be distinct format names")
        bad = [f for f in fmts if bits_of(f) is None]
        if bad:
            raise SpaceError(f"space '{self.name}': unknown weight format(s) {bad}; a format is fp32, fp16, bf16, "
                             "intN (e.g. int8, int4) or a GGUF type (f16, q8_0, q5_0, q4_0)")
        if self.compression_per not in COMPRESSION_PER:
            raise SpaceError(f"space '{self.name}': compression.per must be one of {COMPRESSION_PER}")

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, num_layers: int | None = None,
                  intermediate_size: int | None = None, source: str = "<dict>") -> SearchSpace:
        """Build from parsed YAML; the model's shape (if given) must agree with `base:`."""
        if not isinstance(data, dict):
            raise SpaceError(f"{source}: a space file must be a YAML mapping")
        version = data.get("version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise SpaceError(f"{source}: unsupported space version {version!r} (this hwnas reads {SCHEMA_VERSION})")
        known = {"version", "name", "description", "base", "layers", "mlp", "heads", "model", "compression"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpaceError(f"{source}: unknown keys {unknown}; expected some of {sorted(known)}")
        base = _mapping(source, "base", data.get("base"))
        layers = _mapping(source, "layers", data.get("layers"))
        mlp = _mapping(source, "mlp", data.get("mlp"))
        n = _agree(source, "num_layers", _opt_int(source, "base.num_layers", base.get("num_layers")), num_layers)
        inter = _agree(source, "intermediate_size",
                       _opt_int(source, "base.intermediate_size", base.get("intermediate_size")), intermediate_size)
        widths = _int_list(source, "mlp.widths", mlp.get("widths")) or (inter,)
        mode = layers.get("mode", "any")
        if not isinstance(mode, str):
            raise SpaceError(f"{source}: layers.mode must be one of {LAYER_MODES}, got {mode!r}")
        depths = _int_list(source, "layers.depths", layers.get("depths"))
        min_depth = _opt_int(source, "layers.min_depth", layers.get("min_depth"))
        if min_depth is None:
            min_depth = min(depths) if depths else n
        droppable = _int_list(source, "layers.droppable", layers.get("droppable"))
        comp = _mapping(source, "compression", data.get("compression"))
        unknown = sorted(set(comp) - {"formats", "per"})
        if unknown:
            raise SpaceError(f"{source}: unknown keys under compression: {unknown}; expected formats, per")
        fmts = comp.get("formats", ["fp32"])
        if not isinstance(fmts, list) or not all(isinstance(f, str) for f in fmts):
            raise SpaceError(f"{source}: compression.formats must be a list of format names, e.g. [fp32, int8]")
        return cls(
            num_layers=n,
            intermediate_size=inter,
            mlp_widths=widths,
            min_depth=min_depth,
            mode=mode,
            depths=depths,
            droppable=droppable,
            name=str(data.get("name", Path(source).stem)),
            description=str(data.get("description", "")),
            heads=data.get("heads"),
            weight_formats=tuple(fmts),
            compression_per=str(comp.get("per", "block")),
            extra={k: data[k] for k in ("model",) if k in data},
        )

    @classmethod
    def load(cls, path: str | Path, *, num_layers: int | None = None,
             intermediate_size: int | None = None) -> SearchSpace:
        path = Path(path)
        data = read_yaml_file(path, "space file", SpaceError)
        return cls.from_dict(data, num_layers=num_layers, intermediate_size=intermediate_size, source=str(path))

    @classmethod
    def default_for(cls, num_layers: int, intermediate_size: int, name: str = "default") -> SearchSpace:
        """A generic space: six widths up to the full MLP (multiples of 64), keep >= 75 % of layers."""
        step = WIDTH_MULTIPLE
        widths = sorted({max(step, round(intermediate_size * k / 6 / step) * step) for k in range(1, 7)})
        widths = [w for w in widths if w <= intermediate_size] or [intermediate_size]
        return cls(num_layers=num_layers, intermediate_size=intermediate_size, mlp_widths=tuple(widths),
                   min_depth=math.ceil(0.75 * num_layers), name=name,
                   description="generic default: six MLP widths, any 25 % of layers droppable")

    @classmethod
    def for_model(cls, spec: str, num_layers: int, intermediate_size: int) -> SearchSpace:
        """The default space of a model: the packaged one of an embedded model, or of a folder
        fine-tuned from one (`hwnas finetune` records its base), else the generic one."""
        name = packaged_space_name(spec)
        if name:
            return cls.packaged(name, num_layers=num_layers, intermediate_size=intermediate_size)
        return cls.default_for(num_layers, intermediate_size, name=f"{Path(spec).name}-default")

    @classmethod
    def packaged(cls, name: str, **shape: int) -> SearchSpace:
        """A space shipped inside hwnas (`hwnas/spaces/<name>.yaml`)."""
        res = resources.files("hwnas") / "spaces" / f"{name}.yaml"
        data = yaml.safe_load(res.read_text(encoding="utf-8"))
        return cls.from_dict(data, source=f"hwnas/spaces/{name}.yaml", **shape)

    # --- what it holds --------------------------------------------------------------------------

    @property
    def allowed_depths(self) -> tuple[int, ...]:
        if self.depths is not None:
            return tuple(sorted(self.depths))
        low = self.min_depth if self.mode == "prefix" else max(self.min_depth, self.num_layers - len(self.droppable_layers))
        return tuple(range(low, self.num_layers + 1))

    @property
    def droppable_layers(self) -> tuple[int, ...]:
        if self.mode == "prefix":
            return ()
        return self.droppable if self.droppable is not None else tuple(range(self.num_layers))

    @property
    def compressed(self) -> bool:
        """Whether weight formats are genes (more than one format declared)."""
        return len(self.weight_formats) > 1

    def format_genes(self) -> tuple[int, int]:
        """(genes per layer, genes for the whole network) of the compression section."""
        if not self.compressed:
            return 0, 0
        return {"block": (2, 2), "layer": (1, 2), "network": (0, 1)}[self.compression_per]

    @property
    def encoding_size(self) -> int:
        """Product of every gene's choices (depth or keep/drop genes, one width gene per layer, and
        the compression section's format genes)."""
        per_layer, whole = self.format_genes()
        nf = len(self.weight_formats)
        w = len(self.mlp_widths) ** self.num_layers * nf ** (per_layer * self.num_layers + whole)
        if self.mode == "prefix":
            return len(self.allowed_depths) * w
        return 2 ** len(self.droppable_layers) * w

    @property
    def distinct_subnets(self) -> int:
        """Number of different sub-networks (architecture x weight formats) in the space."""
        per_layer, whole = self.format_genes()
        nf = len(self.weight_formats)
        nw = len(self.mlp_widths) * nf**per_layer
        if self.mode == "prefix":
            return sum(nw**d for d in self.allowed_depths) * nf**whole
        r = len(self.droppable_layers)
        return sum(math.comb(r, self.num_layers - d) * nw**d for d in self.allowed_depths) * nf**whole

    @property
    def distinct_architectures(self) -> int:
        """Number of different architectures (layers and widths; formats not counted)."""
        return dataclasses.replace(self, weight_formats=("fp32",)).distinct_subnets

    def sample(self, rng: random.Random) -> dict[str, list[int]]:
        """A random sub-network description: uniform depth, then uniform layers and widths."""
        depth = rng.choice(self.allowed_depths)
        if self.mode == "prefix":
            layers = list(range(depth))
        else:
            dropped = set(rng.sample(self.droppable_layers, self.num_layers - depth))
            layers = [i for i in range(self.num_layers) if i not in dropped]
        out: dict[str, Any] = {"layers": layers, "mlp_widths": [rng.choice(self.mlp_widths) for _ in layers]}
        if self.compressed:
            pick = lambda: rng.choice(self.weight_formats)  # noqa: E731
            if self.compression_per == "network":
                f = pick()
                out["compression"] = {"attn": [f] * depth, "mlp": [f] * depth, "embed": f, "head": f}
            else:
                attn = [pick() for _ in layers]
                mlp = attn if self.compression_per == "layer" else [pick() for _ in layers]
                out["compression"] = {"attn": attn, "mlp": list(mlp), "embed": pick(), "head": pick()}
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {
            "version": SCHEMA_VERSION,
            "name": self.name,
            "description": self.description,
            **({"model": self.extra["model"]} if "model" in self.extra else {}),
            "base": {"num_layers": self.num_layers, "intermediate_size": self.intermediate_size},
            "layers": {"mode": self.mode, "min_depth": self.min_depth,
                       "depths": list(d["depths"]) if self.depths is not None else None,
                       "droppable": list(d["droppable"]) if self.droppable is not None else None},
            "mlp": {"widths": list(self.mlp_widths)},
            "heads": self.heads,
            **({"compression": {"formats": list(self.weight_formats), "per": self.compression_per}}
               if self.compressed else {}),
        }

    def summary(self) -> dict[str, Any]:
        enc, distinct = self.encoding_size, self.distinct_subnets
        return {
            **self.to_dict(),
            "size": {
                "encoding_size": enc,
                "encoding_size_sci": f"{enc:.3g}",
                "distinct_subnets": distinct,
                "distinct_subnets_sci": f"{distinct:.3g}",
                "distinct_architectures": self.distinct_architectures,
                "allowed_depths": list(self.allowed_depths),
            },
        }

    def save(self, path: str | Path) -> None:
        write_yaml(path, self.to_dict())




def _mapping(source: str, key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpaceError(f"{source}: {key} must be a mapping, got {type(value).__name__}")
    return value


def _opt_int(source: str, key: str, value: Any) -> int | None:
    if value is None:
        return None
    if not is_int(value):
        raise SpaceError(f"{source}: {key} must be an integer, got {value!r}"[:300])
    return value


def _int_list(source: str, key: str, value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(is_int(x) for x in value):
        raise SpaceError(f"{source}: {key} must be a list of integers, got {value!r}"[:300])
    return tuple(value)


def _agree(source: str, key: str, declared: Any, actual: int | None) -> int:
    if declared is None and actual is None:
        raise SpaceError(f"{source}: base.{key} is not given and no model was given to read it from")
    if declared is not None and actual is not None and int(declared) != int(actual):
        raise SpaceError(f"{source}: base.{key} is {declared} but the model has {actual}")
    return int(actual if actual is not None else declared)


FINETUNE_RECORD = "hwnas_finetune.yaml"  # written by `hwnas finetune` into its output folder


def packaged_space_name(spec: str, _depth: int = 0) -> str | None:
    """The embedded model whose packaged space applies to `spec`, following fine-tune records."""
    from .model import EMBEDDED

    if not spec:
        return None
    if spec in EMBEDDED:
        return spec
    record = Path(spec) / FINETUNE_RECORD
    if _depth > 8 or not record.is_file():
        return None
    data = read_yaml_file(record, "fine-tune record", SpaceError)
    base = (data.get("base") if isinstance(data, dict) else None) or {}
    spec_ = base.get("spec") if isinstance(base, dict) else None
    return packaged_space_name(str(spec_), _depth + 1) if spec_ else None
