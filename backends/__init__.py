"""Runtime backend plugins for hwnas (importable as `hwnas_backends`).

Backends register through the `hwnas.backends` entry-point group, so a third party adds one with
its own package; the profiling machinery lives in hwnas and never imports a runtime directly.
"""
