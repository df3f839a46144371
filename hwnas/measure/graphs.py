"""What can be measured: a whole (sub-)network or one operator block, built from hwnas core.

A `GraphSpec` is plain data (it crosses process boundaries as JSON); `build` turns it into an
export-friendly module (`onnx_export`) and its `GraphIO`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

KINDS = ("model", "attention", "mlp", "head")
FORMAT_VERSION = 3  # bump when onnx_export changes what it writes (2: whole models composed from templates;
# 3: the head block's tied LM head stored apart from the embedding)


@dataclass(frozen=True)
class GraphSpec:
    """A graph to time: `model` (a whole sub-network), or an operator block of layer `layer`."""

    kind: str
    model: str  # hwnas model spec: embedded name, HF folder, .gguf, hub id
    subnet: dict[str, list[int]] | None = None  # kind == "model": which sub-network (None: full)
    width: int | None = None  # kind == "mlp": MLP width (first k channels)
    layer: int = 0
    weights: str | None = None  # an operator block's weight format (None: fp32); a model's is its subnet's
    dtype: str = "fp32"  # what torch loads the model's weights in before the graph is built

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["weights"] is None:
            del d["weights"]  # fp32 specs keep the keys (and graph caches) they had before formats
        if d["dtype"] == "fp32":
            del d["dtype"]  # likewise before dtypes
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GraphSpec:
        return cls(**d)


def compose_enabled(compose: bool | None = None) -> bool:
    """Whether whole-model graphs are composed from block templates (`onnx_compose`; the default)
    or exported whole by dynamo (`compose=False` or $HWNAS_GRAPH_COMPOSE=0: the reference)."""
    import os

    return compose if compose is not None else os.environ.get("HWNAS_GRAPH_COMPOSE", "1") != "0"


def graph_io(config, kind: str, n_layers: int) -> Any:
    """The GraphIO of a graph of this kind over a model with this config."""
    from hwnas.shape import ModelShape

    from .modules import GraphIO

    s = ModelShape.of(config)
    x_kind = "ids" if kind in ("model", "head") else "hidden"
    past = {"model": n_layers, "attention": 1}.get(kind, 0)
    return GraphIO(x_kind, s.hidden, s.vocab, past, s.kv_heads, s.head_dim)


def build_module(model: Any, kind: str, *, width: int | None = None, layer: int = 0,
                 weights: Any = None) -> tuple[Any, Any]:
    """The module and GraphIO of one graph over an in-memory transformers model. `weights`: the
    format(s) the runtime stores its weights in (`hwnas.compression.weight_plan`; None: fp32), kept
    on the module as `module.weights` for the backend's `convert`."""
    from .modules import AttentionBlock, CausalLMWithPast, HeadBlock, MLPBlock

    layers = model.model.layers
    if kind == "model":
        module = CausalLMWithPast(model)
    elif kind == "attention":
        module = AttentionBlock(layers[layer], model.model.rotary_emb, model.config)
    elif kind == "mlp":
        module = MLPBlock(layers[layer], width)
    elif kind == "head":
        module = HeadBlock(model)
    else:
        raise ValueError(f"unknown graph kind {kind!r}; expected one of {KINDS}")
    if weights not in (None, "fp32"):
        module.weights = weights
    if kind == "model":
        # the transformers (sub-)network itself, for writers of whole-model files (GGUF); kept out of
        # the module's children so exporters do not see its parameters twice
        module.__dict__["network"] = model
    return module.eval(), graph_io(model.config, kind, len(layers))


def build(spec: GraphSpec, loaded: Any = None) -> tuple[Any, Any]:
    """Load the model named by the spec (or use `loaded`, a LoadedModel) and build the graph."""
    from hwnas.model import load_model
    from hwnas.supernet import Supernet

    base = loaded if loaded is not None else load_model(spec.model, dtype=spec.dtype)
    model = base.model
    weights: Any = spec.weights
    if spec.kind == "model" and spec.subnet is not None:
        sn = Supernet(base)
        subnet = sn.parse_subnet(spec.subnet)
        model = sn.materialize(subnet.architecture, share_weights=True)
        weights = subnet.compression
    module, io = build_module(model, spec.kind, width=spec.width, layer=spec.layer, weights=weights)
    module.source, module.tokenizer = base.source, base.tokenizer  # where the vocabulary comes from (GGUF)
    return module, io


GRAPH_IO_FILE = "graph_io.json"


def save_graph_io(io: Any, workdir: Any) -> None:
    """Record the GraphIO beside converted files, so a measuring worker needs no model config."""
    import json
    from dataclasses import asdict
    from pathlib import Path

    from hwnas.fileio import write_text

    write_text(Path(workdir) / GRAPH_IO_FILE, json.dumps(asdict(io), sort_keys=True) + "\n")


def graph_io_for(spec: GraphSpec, workdir: Any = None) -> Any:
    """The GraphIO of a spec: recorded beside its converted files, else from the model's config
    alone (no weights loaded)."""
    import json
    from pathlib import Path

    from .modules import GraphIO

    recorded = Path(workdir) / GRAPH_IO_FILE if workdir is not None else None
    if recorded is not None and recorded.is_file():
        try:
            return GraphIO(**json.loads(recorded.read_text()))
        except (ValueError, TypeError):
            pass  # unreadable: derive it again below
    from hwnas.model import load_config

    config = load_config(spec.model)
    n_layers = len(spec.subnet["layers"]) if spec.kind == "model" and spec.subnet else config.num_hidden_layers
    return graph_io(config, spec.kind, n_layers)


def model_identity(spec: str) -> str:
    """Cheap identity of a model spec for caching converted graphs (changes when its files do)."""
    from pathlib import Path

    from hwnas.model import EMBEDDED, folder_hash

    path = Path(spec).expanduser()
    if spec in EMBEDDED:
        path = EMBEDDED[spec].locate()
    if path.is_dir():
        return folder_hash(path)
    if path.is_file():
        st = path.stat()
        return f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}"
    return spec


GRAPH_CACHE_GB = 20.0  # default size budget of the converted-graph cache ($HWNAS_GRAPH_CACHE_GB)
USED_MARK = ".used"  # touched whenever a cached graph is used: the least recently used go first


def graph_cache_root() -> Any:
    import os
    from pathlib import Path

    from hwnas.model import cache_root

    return Path(os.environ.get("HWNAS_GRAPH_CACHE") or cache_root() / "graphs")


def touch_graph(workdir: Any) -> None:
    """Record that a cached graph folder was just used (for `trim_graph_cache`)."""
    from pathlib import Path

    mark = Path(workdir) / USED_MARK
    if Path(workdir).is_dir():
        mark.touch()


def trim_graph_cache(keep: Any = None, budget_gb: float | None = None) -> list[Any]:
    """Remove the least recently used graph folders of the cache until it fits its budget
    (`$HWNAS_GRAPH_CACHE_GB`, default 20 GB): a 3B-class sub-network's fp32 graph is ~10 GB, and an
    unbounded cache filled this machine's disk in one latency fit. Block templates (KBs) and `keep`
    (the graph about to be used) stay. Returns the removed folders. Only folders of this cache's own
    naming (`<kind>-<hash>`) are touched."""
    import os
    import shutil
    from pathlib import Path

    root = graph_cache_root()
    if budget_gb is None:
        budget_gb = float(os.environ.get("HWNAS_GRAPH_CACHE_GB") or GRAPH_CACHE_GB)
    if not root.is_dir():
        return []
    keep = Path(keep).resolve() if keep is not None else None
    folders = []
    for d in root.iterdir():
        kind = d.name.partition("-")[0]
        if not d.is_dir() or kind not in KINDS or d.resolve() == keep:
            continue
        try:
            size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
            used = max((d / USED_MARK).stat().st_mtime if (d / USED_MARK).is_file() else 0, d.stat().st_mtime)
        except OSError:  # removed by another process meanwhile
            continue
        folders.append((used, size, d))
    total = sum(s for _, s, _ in folders)
    if keep is not None and keep.is_dir():
        total += sum(p.stat().st_size for p in keep.rglob("*") if p.is_file())
    removed = []
    for _, size, d in sorted(folders, key=lambda f: f[0]):
        if total <= budget_gb * 1e9:
            break
        shutil.rmtree(d, ignore_errors=True)
        total -= size
        removed.append(d)
    return removed


def graph_cache_dir(spec: GraphSpec) -> Any:
    """Where converted graphs of this spec are kept (shared by backends: graph.onnx, openvino.xml)."""
    import hashlib
    import json

    from hwnas.versions import dist_versions

    ident = {"spec": spec.to_dict(), "model": model_identity(spec.model), "torch": dist_versions("torch")["torch"],
             "format": FORMAT_VERSION, "composed": compose_enabled(None)}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]
    return graph_cache_root() / f"{spec.kind}-{key}"
