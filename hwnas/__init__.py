"""hwnas: hardware-aware neural architecture search for LLaMA-family LLMs.

Pipeline, one module per stage: model + space -> profile (backends) -> device profile -> latency
model -> search -> result -> export -> artifact. Importing hwnas registers the per-layer-width
model classes with transformers, so `AutoModelForCausalLM.from_pretrained(dir)` loads any folder
hwnas writes.
"""

from .modeling import register_with_transformers as _register

__version__ = "0.1.0"

_register()
