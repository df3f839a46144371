"""Moved to `hwnas.measure.graphs` (measurement is core machinery); this name stays importable for
plugins and tools written against it: `hwnas_backends.graphs` *is* that module."""

import sys

from hwnas.measure import graphs as _module

if __name__ == "__main__":  # python -m hwnas_backends.graphs (older launchers)
    sys.exit(_module._main()) if hasattr(_module, "_main") else None
else:
    sys.modules[__name__] = _module
