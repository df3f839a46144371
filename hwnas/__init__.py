"""hwnas: hardware-aware neural architecture search for LLaMA-family LLMs.

Pipeline, one module per stage: model + space -> profile (backends) -> device profile -> latency
model -> search -> result -> export -> artifact. Importing hwnas registers the per-layer-width
model classes with transformers, so `AutoModelForCausalLM.from_pretrained(dir)` loads any folder
hwnas writes. The registration happens when transformers is imported (at once if it already is):
`import hwnas` alone stays cheap, so a measuring worker that never touches transformers does not
pay its ~4 s import.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"


def _register() -> None:
    modeling = sys.modules.get(__name__ + ".modeling")
    if modeling is not None and not hasattr(modeling, "register_with_transformers"):
        return  # transformers imported by hwnas.modeling itself: it registers when it finishes loading
    from .modeling import register_with_transformers

    register_with_transformers()


class _RegisterAfterTransformers(importlib.abc.MetaPathFinder):
    """Runs `_register` right after `import transformers` finishes (a post-import hook)."""

    def find_spec(self, name, path, target=None):
        if name != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        run = loader.exec_module

        def exec_module(module):
            run(module)
            _register()

        loader.exec_module = exec_module
        return spec


if "transformers" in sys.modules:
    _register()
elif not any(isinstance(f, _RegisterAfterTransformers) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterTransformers())
