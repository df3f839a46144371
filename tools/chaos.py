"""kill -9 anywhere: run hwnas commands, SIGKILL them at random moments, resume, and compare with an
uninterrupted run of the same command.

    python tools/chaos.py [--kills 5] [--seed 0] [--work /tmp/hwnas-chaos] [--commands profile,...]

For each command (profile, latency fit, search, finetune, export) on a small random-weight
LLaMA model made on the fly (never committed): one reference run, then a chaos run into a fresh
folder that is killed at random moments (uniform over the reference's wall time, past the first
4 s of start-up) and re-run with the same arguments: up to 3 kills per cycle, then it runs to the
end and is compared; cycles repeat until `--kills` kills have landed. After every kill the tool checks that every
JSON / YAML / JSONL file it can read parses (a cut last JSONL line is allowed: it is skipped and
redone). At the end it compares the chaos result with the reference:

- search: evaluations.jsonl identical record for record (timestamps and eval seconds aside), no
  sub-network evaluated twice;
- finetune: final weights bit-identical, loss log identical step for step (times aside);
- profile / latency fit: the same grid rows / sampled sub-networks, each measured exactly as often
  as in the reference (timings differ by nature: they are measurements);
- export: every weight / graph file bit-identical, `hwnas verify` passes, no temporary folder left.

It prints one row per command (kills, resumes, how many landed mid-work, what was redone or
lost) and exits 1 if anything differs. Timings are not compared: only records and files.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SUBNET = {"layers": [0, 1, 3, 4, 5], "mlp_widths": [512, 256, 384, 512, 128]}
VOLATILE = {"timestamp", "eval_seconds", "seconds", "created", "wall_s"}


def make_model(folder: Path) -> Path:
    """A random-weight Llama (6 layers, hidden 128, MLP 512) with a word-level tokenizer."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(253)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=512, num_hidden_layers=6,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True)
    LlamaForCausalLM(cfg).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def commands(work: Path, model: Path) -> dict[str, tuple[list[str], str]]:
    """command name -> (argv after `hwnas`, with {out} for its folder; the folder's name)."""
    sub = work / "subnet.json"
    sub.write_text(json.dumps(SUBNET))
    cfg = work / "run.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": str(model), "channel_order": "none", "tasks": ["wikitext2"], "ppl_windows": 2, "ppl_window": 64,
        "objectives": [{"metric": "wikitext2.ppl"}, {"metric": "params"}],
        "algorithm": "linas", "seed": 0,
        "linas": {"rounds": 2, "initial": 6, "per_round": 4, "population": 16, "inner_evaluations": 320}}))
    prof = work / "ref" / "profile"
    return {
        # timings are not compared, so the machine's load is accepted (max_load, inherited by latency fit)
        "profile": (["profile", "--model", str(model), "--backend", "torch", "--prefill", "8,16", "--decode", "16",
                     "--option", "max_load=99", "--out", "{out}", "--json"], "profile"),
        "latency fit": (["latency", "fit", "--profile", str(prof), "--samples", "5", "--prefill", "8",
                         "--decode", "4", "--skip-speed-check", "--out", "{out}"], "latency"),
        "search": (["search", "--config", str(cfg), "--run-dir", "{out}", "--resume"], "run"),
        "finetune": (["finetune", "--model", str(model), "--channel-order", "none", "--steps", "40",
                      "--batch-size", "2", "--seq-len", "64", "--save-every", "4", "--seed", "0",
                      "--threads", "1", "--out", "{out}"], "finetune"),
        "export": (["export", "--model", str(model), "--subnet", str(sub), "--channel-order", "none",
                    "--format", "onnx", "--out", "{out}", "--json"], "export"),
    }


def run_cmd(argv: list[str], env: dict[str, str], kill_after: float | None) -> tuple[int | None, float]:
    """Run `hwnas ARGV`; with `kill_after`, SIGKILL its whole process group then (None if it finished)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "hwnas.cli", *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the command and its worker processes, as a crash would
        proc.wait()
        proc.stderr.close()
        return None, time.perf_counter() - t0
    err = proc.stderr.read()
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"hwnas {' '.join(argv)} failed ({proc.returncode}):\n{err[-2000:]}")
    return proc.returncode, time.perf_counter() - t0


def readable(folder: Path) -> list[str]:
    """Files that hwnas reads back but that do not parse (a cut last JSONL line is fine)."""
    bad = []
    if not folder.exists():
        return bad
    for p in folder.rglob("*"):
        if not p.is_file() or ".hwnas-tmp" in str(p) or ".tmp" in p.name:
            continue
        try:
            if p.suffix == ".json":
                json.loads(p.read_text())
            elif p.suffix == ".yaml":
                yaml.safe_load(p.read_text())
            elif p.suffix == ".jsonl":
                lines = p.read_text().splitlines()
                for line in lines[:-1]:
                    json.loads(line)
            elif p.suffix == ".safetensors" and p.parent.name != "checkpoint.tmp":
                from safetensors import safe_open

                with safe_open(str(p), "pt") as f:
                    list(f.keys())
        except Exception as exc:  # reported
            bad.append(f"{p.relative_to(folder)}: {type(exc).__name__}")
    return bad


def _strip(rec: dict) -> dict:
    return {k: (_strip(v) if isinstance(v, dict) else v) for k, v in rec.items() if k not in VOLATILE}


def compare(name: str, ref: Path, got: Path) -> tuple[list[str], str]:
    """Differences between the reference and the chaos folder, and what was redone."""
    from hwnas.fileio import read_jsonl, sha256_file

    diffs: list[str] = []
    note = ""
    if name == "search":
        a = [_strip(r) for r in read_jsonl(ref / "evaluations.jsonl")]
        b = [_strip(r) for r in read_jsonl(got / "evaluations.jsonl")]
        keys = [json.dumps(r["subnet"]) for r in b]
        if len(set(keys)) != len(keys):
            diffs.append("a sub-network evaluated twice")
        if a != b:
            n = sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b))
            diffs.append(f"{n} of {len(a)} records differ")
        note = f"{len(b)} records"
    elif name == "finetune":
        from safetensors.torch import load_file

        wa, wb = load_file(str(ref / "model.safetensors")), load_file(str(got / "model.safetensors"))
        if wa.keys() != wb.keys() or any(not (wa[k] == wb[k]).all() for k in wa):

            worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa if k in wb)
            diffs.append(f"weights differ (max |diff| {worst:.2e})")
        la = [_strip(r) for r in read_jsonl(ref / "loss_log.jsonl")]
        lb = [_strip(r) for r in read_jsonl(got / "loss_log.jsonl")]
        if la != lb:
            diffs.append(f"loss log differs ({len(la)} vs {len(lb)} steps)")
        if (got / "checkpoint").exists() or (got / "checkpoint.old").exists():
            diffs.append("checkpoint left behind")
        note = f"{len(lb)} steps"
    elif name == "profile":
        from hwnas.profile import DeviceProfile, row_key

        pa, pb = DeviceProfile.load(ref), DeviceProfile.load(got)
        ka, kb = sorted(row_key(r) for r in pa.rows), sorted(row_key(r) for r in pb.rows)
        if ka != kb:
            diffs.append(f"rows differ ({len(ka)} vs {len(kb)})")
        if not pb.header.get("complete"):
            diffs.append("profile not complete")
        note = f"{len(kb)} rows"
    elif name == "latency fit":
        def counts(folder: Path) -> dict[str, int]:
            out: dict[str, int] = {}
            for r in read_jsonl(folder / "samples.jsonl"):
                out[json.dumps(r["subnet"])] = out.get(json.dumps(r["subnet"]), 0) + 1
            return out

        ca, cb = counts(ref), counts(got)
        if ca != cb:
            diffs.append(f"samples differ: {sum(ca.values())} vs {sum(cb.values())} measurements")
        for f in ("latency_model.yaml",):
            if not (got / f).is_file():
                diffs.append(f"{f} missing")
        from hwnas.latency import LatencyModel

        LatencyModel.load(got)  # loads
        note = f"{sum(cb.values())} measurements"
    elif name == "export":
        ma = json.loads((ref / "manifest.json").read_text())
        mb = json.loads((got / "manifest.json").read_text())
        fa, fb = ma["files"], mb["files"]
        if set(fa) != set(fb):
            diffs.append(f"file sets differ: {sorted(set(fa) ^ set(fb))}")
        changed = [f for f in fa if f in fb and fa[f] != fb[f]]
        if changed:
            diffs.append(f"files differ: {changed}")
        bad = [f for f, h in fb.items() if sha256_file(got / f) != h]
        if bad:
            diffs.append(f"hash mismatch vs manifest: {bad}")
        siblings = [p.name for p in got.parent.iterdir() if p.name.startswith(f".{got.name}.")]
        if siblings:
            diffs.append(f"temporary folders left: {siblings}")
        note = f"{len(fb)} files"
    return diffs, note


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=5, help="SIGKILLs per command (default 5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/hwnas-chaos", help="scratch folder (made by this tool)")
    ap.add_argument("--commands", default="profile,latency fit,search,finetune,export")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    env = dict(os.environ, PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false",
               HWNAS_GRAPH_CACHE=str(work / "graph-cache"), OMP_NUM_THREADS="1")
    model = make_model(work / "model")
    cmds = commands(work, model)
    rows, failed = [], False
    import shutil

    for name in [c.strip() for c in args.commands.split(",")]:
        argv, folder = cmds[name]
        ref, got = work / "ref" / folder, work / "chaos" / folder
        if not (ref.exists() and (ref / ".hwnas-folder.json").is_file()):
            shutil.rmtree(ref, ignore_errors=True)  # the tool's own scratch folders
            _, ref_s = run_cmd([a.replace("{out}", str(ref)) for a in argv], env, None)
            (work / "ref" / f"{folder}.seconds").write_text(f"{ref_s:.2f}\n")
        ref_s = float((work / "ref" / f"{folder}.seconds").read_text())
        kills, cycles, corrupt, wall, times, diffs, note = 0, 0, [], 0.0, [], [], ""
        cmd = [a.replace("{out}", str(got)) for a in argv]
        while kills < args.kills:  # cycles: a fresh folder, killed up to 3 times, then run to the end
            cycles += 1
            shutil.rmtree(got, ignore_errors=True)
            for p in got.parent.glob(f".{got.name}.*"):
                shutil.rmtree(p, ignore_errors=True)
            if name == "export":  # the graph cache would let the chaos export skip the ONNX export
                shutil.rmtree(work / "graph-cache", ignore_errors=True)
            for _ in range(3):
                at = round(rng.uniform(min(4.0, 0.3 * ref_s), max(1.5, 0.95 * ref_s)), 1)  # past start-up
                rc, sec = run_cmd(cmd, env, at)
                wall += sec
                if rc is not None:
                    break
                kills += 1
                times.append(at)
                corrupt += readable(got)
            else:
                _, sec = run_cmd(cmd, env, None)
                wall += sec
            d, note = compare(name, ref, got)
            diffs += d
        diffs += [f"unreadable after a kill: {c}" for c in corrupt]
        failed |= bool(diffs)
        rows.append((name, kills, times, cycles, round(ref_s, 1), round(wall, 1), note, diffs))
        print(f"{name}: {kills} kills at {times} s over {cycles} cycle(s), {note}: "
              f"{'IDENTICAL' if not diffs else '; '.join(diffs)}", flush=True)
    print("\n| command | kills | killed at (s) | runs to the end | reference s | chaos wall s | compared | result |")
    print("|---|---|---|---|---|---|---|---|")
    for name, kills, times, cycles, ref_s, wall, note, diffs in rows:
        print(f"| {name} | {kills} | {', '.join(map(str, times))} | {cycles} | {ref_s} | {wall} | {note} | "
              f"{'identical, nothing lost' if not diffs else '; '.join(diffs)} |")
    print(f"\ntotal kills: {sum(r[1] for r in rows)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
