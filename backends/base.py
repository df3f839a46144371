"""Moved to `hwnas.measure.backend` (measurement is core machinery); this name stays importable for
plugins and tools written against it: `hwnas_backends.base` *is* that module."""

import sys

from hwnas.measure import backend as _module

if __name__ == "__main__":  # python -m hwnas_backends.base (older launchers)
    sys.exit(_module._main()) if hasattr(_module, "_main") else None
else:
    sys.modules[__name__] = _module
