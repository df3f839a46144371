"""What hwnas costs as models grow: peak RSS and wall time of each command on real model shapes.

    python tools/bench_sizes.py make tinyllama-1.1b /tmp/sizes/tinyllama   # random weights, bf16
    python tools/bench_sizes.py run /tmp/sizes/tinyllama --dtype bf16,fp32 --steps load,subnet,eval

`make` writes a random-weight checkpoint of a real model's shape (never committed; SmolLM2's
tokenizer, so the shape's vocabulary is at least SmolLM2's 49,152 tokens), tensor by tensor in bf16
so that writing a 3B-class model needs no more memory than its own size. `run` runs each pipeline
step as its own `hwnas` process, samples the RSS of the whole process tree (workers included) every
50 ms, and kills a step whose tree passes --limit-gb (reported as "killed"), so a step that would
exhaust this machine's memory is a figure, not a crash of the machine.

Steps: load (`load_model` alone), subnet (`hwnas subnet`), eval (WikiText-2 2x256 of the
sub-network), bench-ort / bench-ov (`hwnas bench` of the sub-network), export-ov-int8
(`hwnas export --format openvino-int8 --no-measure`). The sub-network keeps all but the last ~10 %
of the layers and 3/4 of the MLP width. `--dtype none` passes no dtype (hwnas before the option).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {  # name: LlamaConfig fields (vocab: the model's own, raised to SmolLM2's tokenizer size)
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "tinyllama-1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                           num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False),
    "llama3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                        num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0),
}
STEPS = ("load", "subnet", "eval", "bench-ort", "bench-ov", "export-ov-int8")


def make(shape: str, out: Path, layers: int | None = None, seed: int = 0) -> None:
    """A random-weight checkpoint of `shape` (first `layers` layers only, for CI's trimmed run)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from hwnas.model import load_model

    tok = load_model("smollm2-135m").tokenizer
    fields = dict(SHAPES[shape])
    fields["vocab_size"] = max(fields["vocab_size"], len(tok))
    if layers:
        fields["num_hidden_layers"] = layers
    cfg = LlamaConfig(**fields, max_position_embeddings=8192, rms_norm_eps=1e-5,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    cfg.dtype = torch.bfloat16
    with torch.device("meta"):
        shapes = {n: p.shape for n, p in LlamaForCausalLM(cfg).named_parameters()}
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, s in shapes.items():  # bf16 from the start: no fp32 copy of the model ever exists
        if name.endswith("norm.weight"):
            state[name] = torch.ones(s, dtype=torch.bfloat16)
        else:
            std = 0.02 if "layers" not in name else 0.02 / (1 if "o_proj" not in name and "down" not in name
                                                            else (2 * cfg.num_hidden_layers) ** 0.5)
            state[name] = (torch.randn(s, generator=gen) * std).to(torch.bfloat16)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    cfg.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    n = sum(t.numel() for t in state.values())
    (tmp / "bench_sizes.json").write_text(json.dumps({"shape": shape, "layers": cfg.num_hidden_layers,
                                                       "parameters": n, "dtype": "bf16", "seed": seed}) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    print(f"{out}: {shape}, {cfg.num_hidden_layers} layers, {n / 1e9:.3f} B parameters, "
          f"{(out / 'model.safetensors').stat().st_size / 2**30:.2f} GiB")


def _tree_rss(proc) -> tuple[int, int]:
    """RSS of the process tree, and its anonymous part (RSS minus file-backed pages: a memory-mapped
    checkpoint's pages count in RSS but are clean, and the kernel drops them under pressure)."""
    import psutil

    total = anon = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, 0
    for p in procs:
        try:
            m = p.memory_info()
        except psutil.NoSuchProcess:
            continue
        total += m.rss
        anon += m.rss - getattr(m, "shared", 0)
    return total, anon


def measure(cmd: list[str], limit_gb: float, log: Path) -> dict:
    """Wall time and peak RSS of the process tree of `cmd`; killed beyond `limit_gb`."""
    import psutil

    t0 = time.perf_counter()
    with open(log, "w") as fh:
        env = {**os.environ}
        env.setdefault("HWNAS_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
        popen = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        proc = psutil.Process(popen.pid)
        peak = peak_anon = 0
        killed = False
        while popen.poll() is None:
            rss, anon = _tree_rss(proc)
            peak, peak_anon = max(peak, rss), max(peak_anon, anon)
            if rss > limit_gb * 2**30 or psutil.virtual_memory().available < 1.5 * 2**30:
                os.killpg(popen.pid, 9)
                killed = True
            time.sleep(0.05)
    return {"rc": popen.returncode, "seconds": round(time.perf_counter() - t0, 1),
            "peak_gb": round(peak / 2**30, 2), "peak_anon_gb": round(peak_anon / 2**30, 2), "killed": killed}


def _subnet_json(spec: str, folder: Path) -> Path:
    from hwnas.model import load_config

    cfg = load_config(spec)
    n, w = cfg.num_hidden_layers, cfg.intermediate_size
    keep = n - max(1, n // 10) if n > 2 else n
    path = folder / "subnet.json"
    path.write_text(json.dumps({"layers": list(range(keep)), "mlp_widths": [w * 3 // 4] * keep}) + "\n")
    return path


def step_command(step: str, model: str, subnet: Path, work: Path, dtype: str) -> list[str]:
    hw = [sys.executable, "-m", "hwnas.cli"]
    dt = [] if dtype == "none" else ["--dtype", dtype]
    common = ["--model", model]
    if step == "load":
        return [sys.executable, __file__, "_load", model, dtype]
    if step == "subnet":
        return hw + ["subnet", *common, "--subnet", str(subnet), "--channel-order", "none",
                     "--out", str(work / "subnet"), *dt]
    if step == "eval":
        return hw + ["eval", *common, "--subnet", str(subnet), "--channel-order", "none", "--tasks", "wikitext2",
                     "--ppl-windows", "2", "--ppl-window", "256", "--threads", "1", "--json", *dt]
    if step in ("bench-ort", "bench-ov"):
        backend = {"bench-ort": "onnxruntime", "bench-ov": "openvino"}[step]
        return hw + ["bench", *common, "--subnet", str(subnet), "--backend", backend, "--decode", "8",
                     "--option", "max_load=8", "--json", *dt]  # memory and wall time, not latency figures
    if step == "export-ov-int8":
        return hw + ["export", *common, "--subnet", str(subnet), "--channel-order", "none",
                     "--format", "openvino-int8", "--no-measure", "--out", str(work / "ov-int8"), *dt]
    raise SystemExit(f"unknown step {step}")


def parameter_count(spec: str) -> int:
    """Parameters of a model from its config alone (built on the meta device: no weights read)."""
    import torch
    from transformers import AutoModelForCausalLM

    from hwnas.model import load_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(load_config(spec))
    return sum(p.numel() for p in model.parameters())


def table(paths: list[str], target: float = 8.03e9) -> None:
    """Seconds and peak RSS per step and dtype against parameters, from `run --json-out` files, with
    a least-squares line through them and its value at `target` parameters (Llama-3-8B: 8.03 B)."""
    import numpy as np

    rows = [r for p in paths for r in json.loads(Path(p).read_text())]
    for r in rows:  # files written before parameters were recorded for a model spec
        r["parameters"] = r.get("parameters") or parameter_count(r["model"])
    print("| step | dtype | " + " | ".join(f"{m} s / GB" for m in dict.fromkeys(r["model"] for r in rows))
          + f" | GB per B params | at {target / 1e9:.1f} B: s / GB |")
    keys = dict.fromkeys((r["step"], r["dtype"]) for r in rows)
    print("|---|---|" + "---:|" * (len(dict.fromkeys(r["model"] for r in rows)) + 2))
    for step, dtype in keys:
        got = [r for r in rows if (r["step"], r["dtype"]) == (step, dtype)]
        cells = [("killed" if r["killed"] else f"{r['seconds']:.0f} / {r['peak_gb']:.1f}") if r["rc"] == 0 or r["killed"]
                 else f"rc {r['rc']}" for r in got]
        ok = [r for r in got if r["rc"] == 0 and not r["killed"] and r.get("parameters")]
        fit = ""
        if len(ok) >= 2:
            x = np.array([r["parameters"] for r in ok], dtype=float) / 1e9
            gb, sec = np.polyfit(x, [r["peak_gb"] for r in ok], 1), np.polyfit(x, [r["seconds"] for r in ok], 1)
            fit = f"{gb[0]:.2f} | {np.polyval(sec, target / 1e9):.0f} / {np.polyval(gb, target / 1e9):.1f}"
        print(f"| {step} | {dtype} | " + " | ".join(cells) + f" | {fit or '- | -'} |")


def run(args: argparse.Namespace) -> None:
    model = Path(args.model)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_sizes."))
    work.mkdir(parents=True, exist_ok=True)
    spec = str(model) if model.exists() else args.model
    subnet = Path(args.subnet) if args.subnet else _subnet_json(spec, work)
    meta = json.loads((model / "bench_sizes.json").read_text()) if (model / "bench_sizes.json").is_file() else {}
    meta.setdefault("parameters", parameter_count(spec))
    rows = []
    for dtype in args.dtype.split(","):
        for step in args.steps.split(","):
            log = work / f"{step}-{dtype}.log"
            res = measure(step_command(step, spec, subnet, work, dtype), args.limit_gb, log)
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if res["rc"] else []
            row = {"model": meta.get("shape", model.name), "parameters": meta.get("parameters"), "dtype": dtype,
                   "step": step, **res, "error": tail[0][:160] if tail else None}
            rows.append(row)
            print(json.dumps(row), flush=True)
            for sub in ("ov-int8",):  # artifacts are measured, not kept (disk)
                shutil.rmtree(work / sub, ignore_errors=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1) + "\n")
    print("\n| model | dtype | step | wall s | peak RSS GB | of it anonymous | |\n|---|---|---|---:|---:|---:|---|")
    for r in rows:
        status = "killed at the limit" if r["killed"] else ("" if r["rc"] == 0 else f"rc {r['rc']}: {r['error']}")
        print(f"| {r['model']} | {r['dtype']} | {r['step']} | {r['seconds']} | {r['peak_gb']} | {r['peak_anon_gb']} "
              f"| {status} |")


PIPELINE = ("profile", "latency-fit", "search", "export-ov-int8", "verify")


def pipeline(args: argparse.Namespace) -> None:
    """profile (ONNX Runtime, fp32 space) -> latency fit -> a small LINAS search on WikiText-2
    perplexity x predicted decode -> export the front's fastest point as openvino-int8 -> verify;
    each step its own process, measured like `run`."""
    import yaml

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    spec, dt = str(args.model), ["--dtype", args.dtype]
    hw = [sys.executable, "-m", "hwnas.cli"]
    cfg = {"model": spec, "dtype": args.dtype, "channel_order": "contrib", "tasks": ["wikitext2"],
           "objectives": ["wikitext2.ppl", "decode_ms_per_token"], "ppl_windows": 2, "ppl_window": 256,
           "latency_model": str(work / "latency"), "run_id": "run",
           "linas": {"initial": args.evaluations - 2, "rounds": 1, "per_round": 2, "inner_evaluations": 500,
                     "population": 20}}
    (work / "run.yaml").write_text(yaml.safe_dump(cfg))
    rows = []
    for step in PIPELINE:
        if step == "profile":
            cmd = hw + ["profile", "--model", spec, "--backend", "onnxruntime", "--prefill", "128", "--decode", "128",
                        "--option", "max_load=8", "--out", str(work / "profile"), *dt]
        elif step == "latency-fit":
            cmd = hw + ["latency", "fit", "--profile", str(work / "profile"), "--model", spec, "--samples",
                        str(args.samples), "--out", str(work / "latency")]
        elif step == "search":
            cmd = hw + ["search", "--config", str(work / "run.yaml"), "--run-dir", str(work / "run")]
        elif step == "export-ov-int8":
            front = json.loads((work / "run" / "front.json").read_text())["front"]
            pick = min(front, key=lambda p: p["decode_ms_per_token"])["index"]
            cmd = hw + ["export", "--model", spec, "--run", str(work / "run"), "--pick", str(pick), "--format",
                        "openvino-int8", "--out", str(work / "artifact"), *dt]
        else:
            cmd = hw + ["verify", str(work / "artifact")]
        res = measure(cmd, args.limit_gb, work / f"{step}.log")
        tail = (work / f"{step}.log").read_text(errors="replace").strip().splitlines()[-1:] if res["rc"] else []
        rows.append({"model": args.model, "dtype": args.dtype, "step": step, **res,
                     "error": tail[0][:160] if tail else None})
        print(json.dumps(rows[-1]), flush=True)
        if res["rc"]:
            break
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1) + "\n")


def _load(spec: str, dtype: str) -> None:
    from hwnas.model import load_model

    m = load_model(spec) if dtype == "none" else load_model(spec, dtype=dtype)
    p = next(m.model.parameters())
    print(json.dumps({"seconds": round(m.load_seconds, 1), "dtype": str(p.dtype)}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_load":
        _load(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="write a random-weight checkpoint of a real model's shape")
    m.add_argument("shape", choices=sorted(SHAPES))
    m.add_argument("out")
    m.add_argument("--layers", type=int, default=None, help="keep only the first N layers (CI's trimmed shape)")
    r = sub.add_parser("run", help="peak RSS and wall time of each step, one process per step")
    r.add_argument("model", help="a model folder (from make) or a model spec")
    r.add_argument("--subnet", default=None, help="sub-network JSON (default: 90 %% of the layers, 3/4 width)")
    r.add_argument("--dtype", default="bf16,fp32", help="comma-separated; 'none' passes no --dtype")
    r.add_argument("--steps", default=",".join(STEPS))
    r.add_argument("--limit-gb", type=float, default=20.0)
    r.add_argument("--work", default=None)
    r.add_argument("--json-out", default=None)
    t = sub.add_parser("table", help="seconds and GB against parameters, from run --json-out files")
    t.add_argument("files", nargs="+")
    pl = sub.add_parser("pipeline", help="profile -> latency fit -> search -> export openvino-int8 -> verify")
    pl.add_argument("model")
    pl.add_argument("--dtype", default="bf16")
    pl.add_argument("--samples", type=int, default=4, help="latency-fit samples (whole sub-networks measured)")
    pl.add_argument("--evaluations", type=int, default=8, help="real evaluations of the search")
    pl.add_argument("--limit-gb", type=float, default=20.0)
    pl.add_argument("--work", required=True)
    pl.add_argument("--json-out", default=None)
    args = ap.parse_args()
    if args.cmd == "pipeline":
        pipeline(args)
    elif args.cmd == "table":
        table(args.files)
    elif args.cmd == "make":
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        make(args.shape, out, args.layers)
    else:
        run(args)


if __name__ == "__main__":
    main()
