"""`hwnas backends`: list runtime backends (entry points), their availability and versions."""

from __future__ import annotations

import argparse

from . import emit_json, info

NAME = "backends"
HELP = "list runtime backends with availability and versions (--setup BACKEND makes what one needs first)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--setup", metavar="BACKEND",
                   help="make what a backend needs before it can run, e.g. a private environment (the "
                        "backends with such a step say so in their reason for being unavailable)")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    from hwnas.measure.backend import backend_class, backend_names

    if args.setup:
        from ..errors import BackendError

        cls = backend_class(args.setup)
        if not cls.SETUP:
            raise BackendError(f"backend '{args.setup}' has no setup step (--setup is for backends that need "
                               "something made first)")
        cls.setup(log=info)
    from ..export import FORMATS

    rows = []
    for name in backend_names():
        try:
            cls = backend_class(name)
            ok, why = cls.available()
            versions = cls.versions() if ok else {}
            formats = ["fp32", *sorted(cls.WEIGHT_FORMATS)]
        except Exception as exc:  # a broken plugin is listed, not fatal
            ok, why, versions, formats = False, f"failed to load: {type(exc).__name__}: {exc}", {}, []
        rows.append({"name": name, "available": ok, "reason": why, "versions": versions,
                     "weight_formats": formats,
                     "artifact_formats": [f for f, spec in FORMATS.items() if spec.backend == name]})
    if args.json:
        emit_json(rows)
        return 0
    for r in rows:
        status = "yes" if r["available"] else "no "
        detail = ", ".join(f"{k} {v}" for k, v in r["versions"].items()) if r["available"] else r["reason"]
        fmts = (f"  [weight formats: {', '.join(r['weight_formats'])}; `hwnas export --format`: "
                f"{', '.join(r['artifact_formats']) or '-'}]") if r["available"] else ""
        print(f"{r['name']:<12} {status}  {detail}{fmts}")
    return 0
