"""GGUF files for llama.cpp: a (sub-)network written the way llama.cpp's loader reads it.

A homogeneous network (every kept layer at one MLP width) is written as the family's own llama.cpp
architecture (`llama` for Llama and Mistral, `qwen2`), so any llama.cpp build and any tool reading
GGUF loads it. A sub-network whose MLP widths differ per layer is written as `deci`, the
architecture of DeciLM / NVIDIA's Nemotron NAS models: llama.cpp builds its layer i with
`n_ff(i)`, `n_head(i)`, `n_head_kv(i)` from per-layer arrays, where its `llama` architecture builds
every FFN with one `n_ff` (checked in the llama.cpp vendored by llama-cpp-python 0.3.36,
src/models/deci.cpp vs src/models/llama.cpp; see docs/formats.md). Dropped layers are simply not
written. Tensors follow llama.cpp's `convert_hf_to_gguf.py`: names `blk.N.attn_q` etc., Q and K
rows permuted back from HF's rotate-half order (Llama-style architectures), norms in F32, a tied
LM head omitted (llama.cpp then reads `token_embd` for it), Llama-3 rope scaling as `rope_freqs`.

The vocabulary is carried over: every `tokenizer.*` key of a GGUF source verbatim (the embedded
default), or, for an HF source with a byte-level BPE tokenizer, its tokens, merges, special ids and
chat template. Quantized types come from llama.cpp's own quantizer: whole files through
`llama_model_quantize` (`quantize`), or tensor by tensor through ggml's `ggml_quantize_chunk`
(`quantize_rows`) when a compressed sub-network stores each block in its own type (the joint
search's per-block formats, `Compression`); `roundtrip` gives the values llama.cpp computes with.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import HwnasUserError

FILE = "model.gguf"


class GgufError(HwnasUserError):
    """A model or tokenizer this writer cannot express as GGUF."""


@dataclass(frozen=True)
class GgufArch:
    """How one model family is written: its llama.cpp architecture, the one for per-layer widths
    (None: llama.cpp has none for this family), and whether Q/K rows are permuted."""

    name: str
    per_layer: str | None
    permute_qk: bool


ARCHS = {"llama": GgufArch("llama", "deci", True), "mistral": GgufArch("llama", "deci", True),
         "qwen2": GgufArch("qwen2", None, False)}

# file types llama.cpp's quantizer writes (llama_ftype), by the name an export format uses
FTYPES = {"f32": 0, "f16": 1, "q8_0": 7, "q4_0": 2, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half Q/K row order back to the interleaved order llama.cpp's rope expects."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _family_type(config: Any) -> str:
    from .modeling import family_of

    fam = family_of(config)
    return fam.model_type if fam else str(getattr(config, "model_type", "?"))


def mlp_widths(model: Any) -> list[int]:
    return [int(layer.mlp.down_proj.in_features) for layer in model.model.layers]


def arch_for(model: Any) -> str:
    """The llama.cpp architecture this (sub-)network is written as."""
    family = _family_type(model.config)
    arch = ARCHS.get(family)
    if arch is None:
        raise GgufError(f"GGUF export supports {', '.join(sorted(ARCHS))} models, not {family!r}")
    widths = mlp_widths(model)
    if len(set(widths)) <= 1:
        return arch.name
    if arch.per_layer is None:
        raise GgufError(f"llama.cpp has no architecture for a {family} network whose MLP widths differ per layer "
                        f"({sorted(set(widths))}); export a sub-network with one MLP width, or use onnx/openvino")
    return arch.per_layer


def vocab_fields(source: str | None, tokenizer: Any, vocab_size: int) -> list[tuple[str, Any, Any, Any]]:
    """The vocabulary as (key, value, type, array sub-type) GGUF fields: copied from a GGUF source,
    else built from an HF byte-level BPE tokenizer (padded to the embedding's `vocab_size` rows)."""
    if source and str(source).endswith(".gguf") and Path(source).is_file():
        return _fields_from_gguf(Path(source))
    return _fields_from_hf(tokenizer, vocab_size)


def _fields_from_gguf(path: Path) -> list[tuple[str, Any, Any, Any]]:
    from gguf import GGUFReader, GGUFValueType

    out = []
    for key, field in GGUFReader(str(path)).fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        if vtype == GGUFValueType.ARRAY:
            out.append((key, list(field.contents()), vtype, field.types[-1]))
        else:
            out.append((key, field.contents(), vtype, None))
    return out


def _fields_from_hf(tokenizer: Any, vocab_size: int) -> list[tuple[str, Any, Any, Any]]:
    import json

    from gguf import GGUFValueType as T

    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    model = spec.get("model") or {}
    pre = json.dumps(spec.get("pre_tokenizer") or {})
    if model.get("type") != "BPE" or "ByteLevel" not in pre:
        raise GgufError("GGUF export of an HF model needs a byte-level BPE tokenizer (GPT-2 style) or a GGUF "
                        "source; this tokenizer is " + str(model.get("type") or type(tokenizer).__name__))
    vocab = tokenizer.get_vocab()
    n = max(vocab.values()) + 1
    if n > vocab_size:
        raise GgufError(f"the tokenizer has {n} tokens but the embedding only {vocab_size} rows")
    n = vocab_size
    tokens = [f"[PAD{i}]" for i in range(n)]
    for tok, i in vocab.items():
        tokens[i] = tok
    special = {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
    types = [3 if t in special else (1 if not t.startswith("[PAD") else 5) for t in tokens]  # 1 normal, 3 control
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    out = [("tokenizer.ggml.model", "gpt2", T.STRING, None),
           # llama.cpp picks its pre-tokenizer regex by name; "default" is its GPT-2 one (convert_hf_to_gguf
           # recognizes known models by a hash of their tokenization, which hwnas does not reproduce)
           ("tokenizer.ggml.pre", "default", T.STRING, None),
           ("tokenizer.ggml.tokens", tokens, T.ARRAY, T.STRING),
           ("tokenizer.ggml.token_type", types, T.ARRAY, T.INT32),
           ("tokenizer.ggml.merges", merges, T.ARRAY, T.STRING)]
    for key, attr in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unknown", "unk_token_id"),
                      ("padding", "pad_token_id")):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            out.append((f"tokenizer.ggml.{key}_token_id", int(value), T.UINT32, None))
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        out.append(("tokenizer.chat_template", template, T.STRING, None))
    return out


def _rope_freqs(config: Any, head_dim: int) -> np.ndarray | None:
    """Llama-3 rope scaling factors (llama.cpp's `rope_freqs` tensor); None without such scaling."""
    rope = getattr(config, "rope_scaling", None) or getattr(config, "rope_parameters", None) or {}
    kind = str(rope.get("rope_type") or rope.get("type") or "default").lower()
    if kind == "default":
        return None
    if kind != "llama3":
        raise GgufError(f"rope scaling {kind!r} is not written to GGUF by hwnas (only Llama-3's)")
    base = float(rope.get("rope_theta") or getattr(config, "rope_theta", 10000.0))
    factor, lo, hi = float(rope.get("factor", 8.0)), float(rope.get("low_freq_factor", 1.0)), \
        float(rope.get("high_freq_factor", 4.0))
    old = float(rope.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old / hi:
            out.append(1.0)
        elif wavelen > old / lo:
            out.append(factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


# --- ggml's own quantizer, tensor by tensor -------------------------------------------------------

# GGUF tensor types a block may be stored in (the llamacpp backend's weight formats): name -> ggml type
TENSOR_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q5_0": 6, "q8_0": 8}


class _Ggml:
    """ggml's C functions from the library llama-cpp-python ships (loaded once per process)."""

    _lib: Any = None

    @classmethod
    def lib(cls) -> Any:
        if cls._lib is None:
            import ctypes

            import llama_cpp

            lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
            lib.ggml_quantize_chunk.restype = ctypes.c_size_t
            lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                                ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
            lib.ggml_row_size.restype = ctypes.c_size_t
            lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
            lib.ggml_blck_size.restype = ctypes.c_int64
            lib.ggml_blck_size.argtypes = [ctypes.c_int]
            cls._lib = lib
        return cls._lib


def _tensor_type(fmt: str) -> int:
    if fmt not in TENSOR_TYPES:
        raise GgufError(f"unknown GGUF tensor type {fmt!r}; hwnas stores blocks as {', '.join(TENSOR_TYPES)}")
    return TENSOR_TYPES[fmt]


def quantize_rows(a: np.ndarray, fmt: str) -> np.ndarray:
    """A [rows, n] float32 matrix (ggml's layout: blocks run along a row) as the bytes ggml's
    `ggml_quantize_chunk` writes for `fmt` ([rows, row bytes], uint8); f32/f16 as arrays."""
    t = _tensor_type(fmt)
    a = np.ascontiguousarray(a, dtype=np.float32)
    if fmt == "f32":
        return a
    if fmt == "f16":
        return a.astype(np.float16)
    lib = _Ggml.lib()
    rows, n = a.reshape(-1, a.shape[-1]).shape
    block = int(lib.ggml_blck_size(t))
    if n % block:
        raise GgufError(f"a row of {n} values cannot be stored as {fmt} (blocks of {block})")
    out = np.empty((rows, int(lib.ggml_row_size(t, n))), dtype=np.uint8)
    lib.ggml_quantize_chunk(t, a.ctypes.data, out.ctypes.data, 0, rows, n, None)
    return out


def roundtrip(a: np.ndarray, fmt: str) -> np.ndarray:
    """The float32 values llama.cpp computes with after storing `a` ([rows, n]) as `fmt`:
    ggml's quantizer, then gguf-py's dequantizer of that type."""
    from gguf import GGMLQuantizationType, quants

    q = quantize_rows(a, fmt)
    if fmt in ("f32", "f16"):
        return q.astype(np.float32)
    return quants.dequantize(q, GGMLQuantizationType(TENSOR_TYPES[fmt])).reshape(a.shape).astype(np.float32)


def block_formats(compression: Any, n_layer: int) -> dict[str, str]:
    """GGUF tensor name -> tensor type of a compressed sub-network (`hwnas.compression.Compression`;
    its fp32 is F32). Names not listed (norms, biases, rope factors) stay F32."""
    def fmt(f: str) -> str:
        return "f32" if f == "fp32" else f

    out = {"token_embd.weight": fmt(compression.embed), "output.weight": fmt(compression.head)}
    for i in range(n_layer):
        for t in ("attn_q", "attn_k", "attn_v", "attn_output"):
            out[f"blk.{i}.{t}.weight"] = fmt(compression.attn[i])
        for t in ("ffn_gate", "ffn_up", "ffn_down"):
            out[f"blk.{i}.{t}.weight"] = fmt(compression.mlp[i])
    return out


def write_gguf(model: Any, path: str | Path, vocab: list[tuple[str, Any, Any, Any]], *, dtype: str = "f32",
               name: str = "hwnas sub-network", compression: Any = None) -> dict[str, Any]:
    """Write the (sub-)network `model` (a transformers model, any MLP width per layer) as one GGUF
    file with weights in `dtype` (f32 or f16; norms stay F32), or, given a `compression`
    (`hwnas.compression.Compression`), each block's weights in its own tensor type quantized by
    ggml (a tied LM head whose format differs from the embedding's is written apart as
    `output.weight`). Returns what was written."""
    import torch
    from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter, LlamaFileType

    if dtype not in ("f32", "f16"):
        raise GgufError(f"write_gguf writes f32 or f16, not {dtype!r} (quantize afterwards)")
    cfg = model.config
    arch = arch_for(model)
    family = ARCHS[_family_type(cfg)]
    layers = model.model.layers
    n_layer = len(layers)
    from .shape import ModelShape

    shape = ModelShape.of(cfg)
    heads, kv, head_dim = shape.heads, shape.kv_heads, shape.head_dim
    widths = mlp_widths(model)
    per_layer = arch != family.name
    path = Path(path)
    w = GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_block_count(n_layer)
    w.add_context_length(int(getattr(cfg, "max_position_embeddings", 2048)))
    w.add_embedding_length(int(cfg.hidden_size))
    w.add_feed_forward_length(widths if per_layer else widths[0] if widths else int(cfg.intermediate_size))
    w.add_head_count([heads] * n_layer if per_layer else heads)
    w.add_head_count_kv([kv] * n_layer if per_layer else kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    rope = getattr(cfg, "rope_parameters", None) or {}
    w.add_rope_freq_base(float(rope.get("rope_theta") or getattr(cfg, "rope_theta", 10000.0)))
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(int(cfg.vocab_size))
    plan = block_formats(compression, n_layer) if compression is not None else {}
    if plan:
        common = Counter(plan.values()).most_common(1)[0][0]  # general.file_type is informative only
        w.add_file_type({"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16, "q8_0": LlamaFileType.MOSTLY_Q8_0,
                         "q5_0": LlamaFileType.MOSTLY_Q5_0, "q4_0": LlamaFileType.MOSTLY_Q4_0}[common])
    else:
        w.add_file_type(LlamaFileType.ALL_F32 if dtype == "f32" else LlamaFileType.MOSTLY_F16)
    for key, value, vtype, sub in vocab:
        if key == "tokenizer.ggml.model":
            w.add_tokenizer_model(value)
        elif vtype == GGUFValueType.ARRAY:
            w.add_key_value(key, value, vtype, sub_type=sub)
        else:
            w.add_key_value(key, value, vtype)

    def put(tensor_name: str, t: torch.Tensor, keep_f32: bool = False) -> None:
        a = t.detach().to(torch.float32).cpu().numpy()
        fmt = plan.get(tensor_name, "f32") if plan else ("f32" if keep_f32 or a.ndim < 2 else dtype)
        if fmt in ("f32", "f16"):
            w.add_tensor(tensor_name, np.ascontiguousarray(a.astype(np.float16) if fmt == "f16" else a))
        else:
            w.add_tensor(tensor_name, quantize_rows(a, fmt), raw_dtype=GGMLQuantizationType(TENSOR_TYPES[fmt]))

    freqs = _rope_freqs(cfg, head_dim)
    if freqs is not None:
        w.add_tensor("rope_freqs.weight", freqs)
    put("token_embd.weight", model.model.embed_tokens.weight)
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    if tied and plan and plan["output.weight"] != plan["token_embd.weight"]:
        tied = False  # llama.cpp would compute the head with the embedding's type: store it apart
    for i, layer in enumerate(layers):
        a, m = layer.self_attn, layer.mlp
        q, k = a.q_proj.weight.detach().float(), a.k_proj.weight.detach().float()
        if family.permute_qk:
            q = torch.from_numpy(_permute(q.numpy(), heads))
            k = torch.from_numpy(_permute(k.numpy(), kv))
        put(f"blk.{i}.attn_norm.weight", layer.input_layernorm.weight, keep_f32=True)
        put(f"blk.{i}.attn_q.weight", q)
        put(f"blk.{i}.attn_k.weight", k)
        put(f"blk.{i}.attn_v.weight", a.v_proj.weight)
        put(f"blk.{i}.attn_output.weight", a.o_proj.weight)
        for proj, short in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v")):
            bias = getattr(a, proj).bias
            if bias is not None:
                b = bias.detach().float()
                if family.permute_qk and short in ("q", "k"):
                    b = torch.from_numpy(_permute(b.numpy(), heads if short == "q" else kv))
                put(f"blk.{i}.attn_{short}.bias", b, keep_f32=True)
        put(f"blk.{i}.ffn_norm.weight", layer.post_attention_layernorm.weight, keep_f32=True)
        put(f"blk.{i}.ffn_gate.weight", m.gate_proj.weight)
        put(f"blk.{i}.ffn_up.weight", m.up_proj.weight)
        put(f"blk.{i}.ffn_down.weight", m.down_proj.weight)
    put("output_norm.weight", model.model.norm.weight, keep_f32=True)
    if not tied:
        put("output.weight", model.lm_head.weight)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = {"architecture": arch, "layers": n_layer, "mlp_widths": widths, "dtype": dtype, "tied_head": tied}
    if plan:
        out["dtype"] = "per-block"
        out["tensor_types"] = dict(Counter(v for k, v in plan.items() if k != "output.weight" or not tied))
    return out


def quantize(src: str | Path, dst: str | Path, ftype: str, threads: int = 1) -> None:
    """llama.cpp's own quantizer (`llama_model_quantize`) from an F32/F16 GGUF to `ftype`."""
    import llama_cpp

    if ftype not in FTYPES:
        raise GgufError(f"unknown GGUF type {ftype!r}; hwnas writes {', '.join(FTYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[ftype]
    params.nthread = max(1, int(threads))
    with _quiet_stderr() as log:  # llama.cpp prints a line per tensor on fd 2
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        last = (log.read().strip().splitlines() or ["no message"])[-1]
        raise GgufError(f"llama.cpp could not quantize {src} to {ftype} (code {rc}: {last})")


class _quiet_stderr:
    """Send file descriptor 2 to a temporary file for the duration (C libraries write there)."""

    def __enter__(self):
        import os
        import sys
        import tempfile

        sys.stderr.flush()
        self.file = tempfile.TemporaryFile(mode="w+")
        self.saved = os.dup(2)
        os.dup2(self.file.fileno(), 2)
        return self

    def read(self) -> str:
        self.file.seek(0)
        return self.file.read()

    def __exit__(self, *exc: object) -> None:
        import os

        os.dup2(self.saved, 2)
        os.close(self.saved)
