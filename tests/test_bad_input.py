"""Bad input, everywhere: every user-facing file and CLI argument gets a one-line error, exit 2, no
traceback and no partial output.

`CASES` is the table: one row per bad input (an id, what to write into the row's folder, the argv).
Each row runs `hwnas.cli.main` in-process inside its own folder and checks the return code, that
stderr is exactly one `hwnas CMD: error: ...` line, and that nothing in the folder changed. Loaders
no command reaches (the accuracy predictor) have a small table of their own. Property-based tests
fuzz the JSON/YAML loaders: they either return or raise `HwnasUserError`, nothing else.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwnas.cli import main
from hwnas.errors import HwnasUserError
from hwnas.search import LinasConfig

REPO = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^hwnas( [\w-]+)*: error: \S.*$")
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

Prep = Callable[[Path, Path], None]  # (row folder, tiny model folder)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random LLaMA (4 layers, MLP width 256) as an HF folder, shared by every row."""
    from conftest import make_tiny

    tiny = make_tiny("llama")
    out = tmp_path_factory.mktemp("bad-input-model") / "tiny"
    tiny.model.save_pretrained(out)
    tiny.tokenizer.save_pretrained(out)
    return out


# --- helpers that write the inputs of a row ---------------------------------------------------------------------


def _fmt(text: str, t: Path, m: Path) -> str:
    return text.replace("{t}", str(t)).replace("{m}", str(m))


def write(name: str, content: str | bytes | dict | list) -> Prep:
    """Write one file (text with {t}/{m} substituted, bytes as they are, dict/list as JSON)."""
    def prep(t: Path, m: Path) -> None:
        path = t / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(_fmt(content, t, m))
        else:
            path.write_text(json.dumps(content))
    return prep


def mkdir(name: str) -> Prep:
    def prep(t: Path, m: Path) -> None:
        (t / name).mkdir(parents=True)
    return prep


def both(*preps: Prep) -> Prep:
    def prep(t: Path, m: Path) -> None:
        for p in preps:
            p(t, m)
    return prep


def good_subnet(t: Path, m: Path) -> None:
    (t / "ok.json").write_text(json.dumps({"layers": [0, 1, 2], "mlp_widths": [64, 128, 256]}))


def model_copy(name: str, edit: Callable[[Path], None]) -> Prep:
    """A copy of the tiny model folder with one thing broken."""
    def prep(t: Path, m: Path) -> None:
        shutil.copytree(m, t / name)
        edit(t / name)
    return prep


def _truncate_weights(folder: Path) -> None:
    w = folder / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])


def _config(folder: Path, **changes: object) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


LUT_HEADER = "op,width,phase,tokens,context,batch,median_ms,p90_ms,cv,cv_raw,repeats,peak_mem_mb,flagged,load,threads"


def _lut_rows() -> list[str]:
    rows = []
    for op, widths in (("attention", [0]), ("mlp", [64, 128, 192, 256]), ("head", [0])):
        for w in widths:
            for phase, tokens, context in (("prefill", 4, 0), ("prefill", 16, 0), ("decode", 1, 8), ("decode", 1, 32)):
                ctx = context if op == "attention" else 0
                rows.append(f"{op},{w},{phase},{tokens},{ctx},1,0.5,0.6,0.01,0.02,5,10.0,False,0.0,1")
    return sorted(set(rows))


def profile_folder(name: str = "prof", *, header: str | None = None, lut: str | None = None,
                   skip_lut: bool = False) -> Prep:
    """A device profile folder for the tiny model; `header`/`lut` replace the good files."""
    def prep(t: Path, m: Path) -> None:
        d = t / name
        d.mkdir(parents=True)
        good = {"version": 1, "backend": "torch", "model": str(m), "threads": 1, "device_slug": "test-device",
                "grid": {"prefill_tokens": [4, 16], "decode_contexts": [8, 32], "batches": [1],
                         "mlp_widths": [64, 128, 192, 256], "layer": 0}, "complete": True}
        (d / "profile.yaml").write_text(_fmt(header, t, m) if header is not None else yaml.safe_dump(good))
        if not skip_lut:
            (d / "lut.csv").write_text(lut if lut is not None else LUT_HEADER + "\n" + "\n".join(_lut_rows()) + "\n")
    return prep


def latency_folder(*, header: dict | str | None = None, edit: Callable[[dict], None] | None = None,
                   files: dict[str, str] | None = None) -> Prep:
    """A latency model folder `lm` beside a good profile `prof`; `edit` changes its header dict."""
    def prep(t: Path, m: Path) -> None:
        from hwnas.latency import profile_id

        profile_folder()(t, m)
        d = t / "lm"
        d.mkdir()
        h = {"version": 1, "model": str(m), "space": "tiny", "widths": [64, 128, 192, 256],
             "profile_path": "../prof", "profile_id": profile_id(t / "prof"), "backend": "torch",
             "device_slug": "test-device",
             "targets": {"prefill_ms": {"file": "prefill_ms.txt", "mode": "ratio"},
                         "decode_ms_per_token": {"file": None, "mode": "linear", "slope": 1.0, "intercept": 0.0},
                         "peak_mem_mb": {"file": None, "mode": "linear", "slope": 1.0, "intercept": 0.0}}}
        if edit:
            edit(h)
        if isinstance(header, str):
            (d / "latency_model.yaml").write_text(header)
        else:
            (d / "latency_model.yaml").write_text(yaml.safe_dump(header if header is not None else h))
        for fname, text in (files or {}).items():
            (d / fname).write_text(text)
        good_subnet(t, m)
    return prep


def _record(index: int = 0, **changes: object) -> dict:
    rec = {"version": 1, "index": index, "round": 0, "is_base": False,
           "subnet": {"layers": [0, 1, 2, 3][: 4 - index % 2], "mlp_widths": [256, 192, 128, 64][: 4 - index % 2]},
           "metrics": {"wikitext2": {"ppl": 10.0 + index}}, "costs": {"params": 1000 - index, "size_mb": 0.004},
           "latency_predicted": {}, "latency_measured": None}
    rec.update(changes)
    return rec


def run_folder(name: str = "run", *, lines: list[str] | None = None, config: str | None = None,
               skip_config: bool = False) -> Prep:
    """A search run folder (config.yaml + evaluations.jsonl); `lines` replace the records."""
    def prep(t: Path, m: Path) -> None:
        from hwnas.search import Objective, RunConfig

        d = t / name
        d.mkdir(parents=True)
        if not skip_config:
            cfg = RunConfig(model=str(m), objectives=[Objective("wikitext2.ppl"), Objective("params")])
            (d / "config.yaml").write_text(config if config is not None else yaml.safe_dump(cfg.to_dict()))
        recs = lines if lines is not None else [json.dumps(_record(0)), json.dumps(_record(1))]
        (d / "evaluations.jsonl").write_text("".join(line + "\n" for line in recs))
    return prep


def _manifest(**changes: object) -> dict:
    m = {"version": 1, "format": "hf", "files": {"config.json": "0" * 64},
         "verification": {"reference": {"tokens": [1, 2], "top5_index": [[1, 2, 3, 4, 5]],
                                        "top5_logit": [[1.0, 0.9, 0.8, 0.7, 0.6]]},
                          "top1_agreement": 1.0, "max_abs_diff": 0.0}}
    m.update(changes)
    return m


def artifact(content: str | bytes | dict | list) -> Prep:
    return both(mkdir("art"), write("art/manifest.json", content))


# --- the table ---------------------------------------------------------------------------------------------------

CASES: list = []


def case(id_: str, argv: str, prep: Prep | None = None) -> None:
    CASES.append(pytest.param(prep, argv, id=id_))


SUBNET = "subnet --model {m} --channel-order none --out {t}/o --subnet "
SJ = SUBNET + "{t}/s.json"

# sub-network JSON
case("subnet-not-json", SJ, write("s.json", '{"layers": [0, 1'))
case("subnet-empty-file", SJ, write("s.json", ""))
case("subnet-not-object", SJ, write("s.json", [0, 1, 2]))
case("subnet-unknown-key", SJ, write("s.json", {"layers": [0, 1], "heads": [4, 4]}))
case("subnet-missing-layers", SJ, write("s.json", {"mlp_widths": [64]}))
case("subnet-layers-not-list", SJ, write("s.json", {"layers": "0,1"}))
case("subnet-layers-float", SJ, write("s.json", {"layers": [0, 1.5]}))
case("subnet-layers-bool", SJ, write("s.json", {"layers": [True, False]}))
case("subnet-layers-empty", SJ, write("s.json", {"layers": []}))
case("subnet-layer-out-of-range", SJ, write("s.json", {"layers": [0, 4]}))
case("subnet-layer-negative", SJ, write("s.json", {"layers": [-1, 0]}))
case("subnet-duplicate-layer", SJ, write("s.json", {"layers": [0, 1, 1]}))
case("subnet-unsorted", SJ, write("s.json", {"layers": [2, 0, 1]}))
case("subnet-width-too-large", SJ, write("s.json", {"layers": [0], "mlp_widths": [512]}))
case("subnet-widths-wrong-length", SJ, write("s.json", {"layers": [0, 1], "mlp_widths": [64]}))
case("subnet-width-zero", SJ, write("s.json", {"layers": [0], "mlp_widths": [0]}))
case("subnet-widths-not-list", SJ, write("s.json", {"layers": [0], "mlp_widths": 64}))
case("subnet-deeply-nested", SJ, write("s.json", "[" * 100000 + "]" * 100000))
case("subnet-directory", SUBNET + "{t}/sdir", mkdir("sdir"))
case("subnet-binary", SJ, write("s.json", b"\x89PNG\r\n\x1a\n\x00\xff\xfe"))
case("subnet-missing-file", SUBNET + "{t}/nope.json")
case("subnet-not-in-space", SJ + " --space {t}/space.yaml",
     both(write("s.json", {"layers": [0, 1, 2, 3], "mlp_widths": [64, 64, 64, 96]}),
          write("space.yaml", "layers: {min_depth: 1}\nmlp: {widths: [64, 128, 192, 256]}\n")))
case("bench-subnet-bad", "bench --model {m} --backend torch --subnet {t}/s.json", write("s.json", {"layers": [9]}))
case("export-subnet-bad", "export --model {m} --format hf --out {t}/art --subnet {t}/s.json",
     write("s.json", {"layers": [0, 0]}))

# space YAML
SP = "space --model {m} --space {t}/space.yaml"
case("space-not-yaml", SP, write("space.yaml", "mlp: {widths: [64, 128\nlayers: ]"))
case("space-not-mapping", SP, write("space.yaml", "- 64\n- 128\n"))
case("space-unknown-key", SP, write("space.yaml", "mlp: {widths: [64]}\nlayer: {min_depth: 2}\n"))
case("space-widths-not-multiple", SP, write("space.yaml", "mlp: {widths: [100, 200]}\n"))
case("space-widths-too-large", SP, write("space.yaml", "mlp: {widths: [64, 512]}\n"))
case("space-widths-not-numbers", SP, write("space.yaml", "mlp: {widths: [sixty-four]}\n"))
case("space-widths-infinite", SP, write("space.yaml", "mlp: {widths: [.inf]}\n"))
case("space-min-depth-too-large", SP, write("space.yaml", "layers: {min_depth: 9}\n"))
case("space-python-tag", SP, write("space.yaml", "!!python/object/apply:os.system ['echo pwned']\n"))
case("space-wrong-version", SP, write("space.yaml", "version: 2\n"))
case("space-base-mismatch", SP, write("space.yaml", "base: {num_layers: 30, intermediate_size: 256}\n"))
case("space-base-not-mapping", SP, write("space.yaml", "base: 30\n"))
case("space-layers-not-mapping", SP, write("space.yaml", "layers: [1, 2]\n"))
case("space-bad-mode", SP, write("space.yaml", "layers: {mode: every}\n"))
case("space-heads", SP, write("space.yaml", "heads: [4, 8]\n"))
case("space-no-base-no-model", "space --space {t}/space.yaml", write("space.yaml", "mlp: {widths: [64]}\n"))
case("space-missing-file", SP)
case("space-directory", "space --model {m} --space {t}/sdir", mkdir("sdir"))
case("space-binary", SP, write("space.yaml", b"\xff\xfe\x00\x01mlp"))

# run config YAML (hwnas search --config)
SR = "search --config {t}/cfg.yaml --run-dir {t}/run"
OBJ = "objectives: [wikitext2.ppl, params]\n"
case("config-missing-file", SR)
case("config-not-yaml", SR, write("cfg.yaml", "objectives: [wikitext2.ppl\n"))
case("config-not-mapping", SR, write("cfg.yaml", "- model: x\n- tasks: [y]\n"))
case("config-unknown-key", SR, write("cfg.yaml", OBJ + "objective: params\n"))
case("config-empty-objectives", SR, write("cfg.yaml", "objectives: []\n"))
case("config-one-objective", SR, write("cfg.yaml", "objectives: [wikitext2.ppl]\n"))
case("config-objective-bad-goal", SR, write("cfg.yaml", "objectives: [{metric: params, goal: smallest}, wikitext2.ppl]\n"))
case("config-objective-unknown-key", SR, write("cfg.yaml", "objectives: [{metric: params, aim: min}, wikitext2.ppl]\n"))
case("config-objective-task-missing", SR, write("cfg.yaml", "objectives: [arc_easy.acc, params]\n"))
case("config-latency-without-model", SR, write("cfg.yaml", "objectives: [wikitext2.ppl, decode_ms_per_token]\n"))
case("config-budget-unknown-metric", SR, write("cfg.yaml", OBJ + "budgets: {speed: 3}\n"))
case("config-budget-not-number", SR, write("cfg.yaml", OBJ + "budgets: {params: lots}\n"))
case("config-bad-algorithm", SR, write("cfg.yaml", OBJ + "algorithm: genetic\n"))
case("config-negative-evaluations", SR, write("cfg.yaml", OBJ + "linas: {initial: -5}\n"))
case("config-linas-unknown-key", SR, write("cfg.yaml", OBJ + "linas: {generations: 5}\n"))
case("config-tasks-not-list", SR, write("cfg.yaml", OBJ + "tasks: wikitext2\n"))
case("config-unknown-task", SR, write("cfg.yaml", "objectives: [nosuchtask.acc, params]\ntasks: [nosuchtask]\n"))
case("config-limit-zero", SR, write("cfg.yaml", OBJ + "limit: 0\n"))
case("config-model-missing", SR, write("cfg.yaml", OBJ + "model: {t}/no-model\n"))
case("config-space-missing", SR, write("cfg.yaml", OBJ + "model: {m}\nspace: {t}/no-space.yaml\n"))
case("config-latency-model-missing", SR,
     write("cfg.yaml", "objectives: [wikitext2.ppl, decode_ms_per_token]\nmodel: {m}\nlatency_model: {t}/no-lm\n"))

# device profile folder (hwnas latency fit --profile)
LF = "latency fit --profile {t}/prof --model {m} --out {t}/lm --samples 2"
case("profile-missing-folder", LF)
case("profile-no-header", LF, mkdir("prof"))
case("profile-header-not-yaml", LF, profile_folder(header="version: [1\n"))
case("profile-header-not-mapping", LF, profile_folder(header="- 1\n- 2\n"))
case("profile-header-binary", LF, both(mkdir("prof"), write("prof/profile.yaml", b"\xff\xfe\x00version")))
case("profile-wrong-version", LF, profile_folder(header="version: 7\nmodel: {m}\nbackend: torch\n"))
case("profile-missing-keys", "latency fit --profile {t}/prof --out {t}/lm", profile_folder(header="version: 1\n"))
case("profile-other-model", LF, profile_folder(header="version: 1\nmodel: some-other-model\nbackend: torch\n"))
case("profile-lut-missing", LF, profile_folder(skip_lut=True))
case("profile-lut-truncated", LF, profile_folder(lut=LUT_HEADER + "\n" + _lut_rows()[0] + "\nmlp,64,pre"))
case("profile-lut-wrong-columns", LF, profile_folder(lut="op,width,phase,ms\nmlp,64,prefill,1.0\n"))
case("profile-lut-non-numeric", LF, profile_folder(lut=LUT_HEADER + "\n" + _lut_rows()[0].replace(",0.5,", ",fast,")))
case("profile-lut-unknown-op", LF, profile_folder(lut=LUT_HEADER + "\n" + _lut_rows()[0].replace("attention,", "conv,")))
case("profile-lut-binary", LF, both(profile_folder(skip_lut=True), write("prof/lut.csv", b"\x00\xff\xfe\x80" * 10)))

# latency model folder (hwnas latency predict --latency-model)
LP = "latency predict --latency-model {t}/lm --subnet {t}/ok.json"
case("latency-missing-folder", LP, good_subnet)
case("latency-no-header", LP, both(mkdir("lm"), good_subnet))
case("latency-header-not-yaml", LP, latency_folder(header="targets: {prefill_ms: [\n"))
case("latency-header-not-mapping", LP, latency_folder(header="just a string\n"))
case("latency-wrong-version", LP, latency_folder(edit=lambda h: h.update(version=3)))
case("latency-missing-keys", LP, latency_folder(edit=lambda h: [h.pop("profile_id"), h.pop("targets")]))
case("latency-targets-not-mapping", LP, latency_folder(edit=lambda h: h.update(targets=["prefill_ms"]),
                                                       files={"prefill_ms.txt": "tree\n"}))
case("latency-unknown-mode", LP, latency_folder(edit=lambda h: h["targets"]["peak_mem_mb"].update(mode="magic"),
                                                files={"prefill_ms.txt": "tree\n"}))
case("latency-profile-missing", LP, latency_folder(edit=lambda h: h.update(profile_path="../elsewhere")))
case("latency-profile-changed", LP, latency_folder(edit=lambda h: h.update(profile_id="0123456789abcdef")))
case("latency-target-file-missing", LP, latency_folder())
case("latency-garbage-lightgbm", LP, latency_folder(files={"prefill_ms.txt": "not a lightgbm model\n\x00garbage"}))
case("latency-target-file-escapes", LP, latency_folder(
    edit=lambda h: h["targets"]["prefill_ms"].update(file="../../outside.txt"), files={"prefill_ms.txt": "tree\n"}))
case("latency-model-gone", LP, latency_folder(edit=lambda h: h.update(model="/no/such/model")))

# evaluations.jsonl and the run folder (hwnas report RUN_DIR)
RP = "report {t}/run"
case("run-missing-folder", RP)
case("run-no-store", RP, mkdir("run"))
case("run-record-not-a-record", RP, run_folder(lines=[json.dumps(_record(0)), json.dumps({"hello": "world"})]))
case("run-record-bad-subnet", RP, run_folder(lines=[json.dumps(_record(0, subnet={"layers": [0], "mlp_widths": []}))]))
case("run-record-missing-metrics", RP, run_folder(lines=[json.dumps(_record(0)), json.dumps(_record(1, metrics={}))]))
case("run-record-string-metric", RP, run_folder(lines=[json.dumps(_record(0, costs={"params": "many"}))]))
case("run-record-no-index", RP, run_folder(lines=[json.dumps({k: v for k, v in _record(0).items() if k != "index"})]))
case("run-empty-store", RP, run_folder(lines=[]))
case("run-bad-config", RP, run_folder(config="objectives: [wikitext2.ppl]\n"))
case("run-missing-config", RP, run_folder(skip_config=True))
case("report-bad-rule", RP + " --pick params=1", run_folder())
case("report-bad-bound", RP + " --pick params<=__import__('os')", run_folder())

# artifact manifest (hwnas verify DIR, hwnas run DIR)
VF = "verify {t}/art"
case("manifest-missing-folder", VF)
case("manifest-missing", VF, mkdir("art"))
case("manifest-not-json", VF, artifact('{"version": 1, "format": "hf",'))
case("manifest-not-object", VF, artifact([1, 2, 3]))
case("manifest-binary", VF, artifact(b"\xff\xd8\xff\xe0\x00\x10JFIF"))
case("manifest-wrong-version", VF, artifact(_manifest(version=2)))
case("manifest-unknown-format", VF, artifact(_manifest(format="tflite")))
case("manifest-format-not-string", VF, artifact(_manifest(format=["hf"])))
case("manifest-files-not-mapping", VF, artifact(_manifest(files=["config.json"])))
case("manifest-files-dotdot", VF, artifact(_manifest(files={"../outside": "0" * 64})))
case("manifest-files-absolute", VF, artifact(_manifest(files={"/etc/passwd": "0" * 64})))
case("manifest-missing-reference", VF, artifact(_manifest(verification={"top1_agreement": 1.0})))
case("manifest-reference-not-numbers", VF,
     artifact(_manifest(verification={"reference": {"tokens": "abc", "top5_index": [[1]], "top5_logit": [[1.0]]},
                                      "top1_agreement": 1.0, "max_abs_diff": 0.0})))
case("run-artifact-bad-manifest", "run {t}/art --prompt hi", artifact(_manifest(format="tflite")))

# model folders (hwnas space / eval / subnet --model)
case("model-missing-folder", "space --model {t}/no-model")
case("model-missing-config", "space --model {t}/mdir", both(mkdir("mdir"), write("mdir/weights.bin", b"\x00")))
case("model-config-not-json", "space --model {t}/mdir", write("mdir/config.json", '{"model_type": "llama",'))
case("model-config-not-object", "space --model {t}/mdir", write("mdir/config.json", "[1, 2]"))
case("model-unsupported-gpt2", "space --model {t}/mdir",
     write("mdir/config.json", {"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2}))
case("model-unknown-type", "space --model {t}/mdir", write("mdir/config.json", {"model_type": "no-such-arch"}))
case("model-truncated-safetensors-eval", "eval --model {t}/cut --tasks wikitext2", model_copy("cut", _truncate_weights))
case("model-truncated-safetensors-subnet", SUBNET + "{t}/ok.json --model {t}/cut",
     both(model_copy("cut", _truncate_weights), good_subnet))
case("model-garbage-weights", "eval --model {t}/cut --tasks wikitext2",
     model_copy("cut", lambda d: (d / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")))
case("model-config-wrong-shape", "eval --model {t}/cut --tasks wikitext2",
     model_copy("cut", lambda d: _config(d, intermediate_size=128)))
case("model-garbage-gguf", "space --model {t}/m.gguf", write("m.gguf", b"GGUF\x03\x00\x00\x00" + b"\xff" * 64))
case("model-garbage-gguf-eval", "eval --model {t}/m.gguf --tasks wikitext2", write("m.gguf", b"not a gguf at all"))
case("model-missing-gguf", "space --model {t}/none.gguf")
case("model-eval-missing", "eval --model {t}/no-model --tasks wikitext2")
case("model-profile-missing", "profile --model {t}/no-model --backend torch --out {t}/p")
case("model-latency-fit-missing", "latency fit --profile {t}/prof --model {t}/no-model --out {t}/lm", profile_folder())
case("model-export-missing", "export --model {t}/no-model --format hf --out {t}/art --subnet {t}/ok.json", good_subnet)

# CLI arguments
BENCH = "bench --model {m} --backend torch "
case("arg-prefill-zero", BENCH + "--prefill 0")
case("arg-decode-negative", BENCH + "--decode -1")
case("arg-threads-zero", BENCH + "--threads 0")
case("arg-batch-zero", BENCH + "--batch 0")
case("arg-prefill-not-int", BENCH + "--prefill abc")
case("arg-samples-zero", "latency fit --profile {t}/prof --out {t}/lm --samples 0", profile_folder())
case("arg-rounds-zero", "latency fit --profile {t}/prof --out {t}/lm --rounds 0", profile_folder())
case("arg-predict-batch-zero", "latency predict --latency-model {t}/lm --subnet {t}/s.json --batch 0")
case("arg-validate-n-zero", "latency validate --latency-model {t}/lm --n 0")
case("arg-steps-zero", "finetune --model {m} --out {t}/ft --steps 0")
case("arg-lr-zero", "finetune --model {m} --out {t}/ft --lr 0")
case("arg-limit-zero", "eval --model {m} --limit 0")
case("arg-limit-negative", "eval --model {m} --limit -3")
case("arg-ppl-windows-negative", "eval --model {m} --ppl-windows -1")
case("arg-threads-float", "eval --model {m} --threads 1.5")
case("arg-unknown-task", "eval --model {m} --tasks wikitext2,nosuchtask")
case("arg-empty-tasks", "eval --model {m} --tasks ,")
case("arg-missing-text-task", "eval --model {m} --tasks text:{t}/none.txt")
case("arg-unknown-backend", "bench --model {m} --backend nosuchbackend")
case("arg-unknown-backend-profile", "profile --model {m} --backend nosuchbackend --out {t}/p")
case("arg-option-unknown-key", BENCH + "--option bogus=1")
case("arg-option-mistyped", BENCH + "--option threads=abc")
case("arg-option-no-equals", BENCH + "--option device")
case("arg-option-bad-yaml", BENCH + "--option warmup=[1")
case("arg-option-profile", "profile --model {m} --backend torch --out {t}/p --option repeats=-2")
case("arg-profile-prefill-list", "profile --model {m} --backend torch --out {t}/p --prefill 32,abc")
case("arg-profile-decode-zero", "profile --model {m} --backend torch --out {t}/p --decode 0,128")
case("arg-unknown-format", "export --model {m} --format tflite --out {t}/art --subnet {t}/ok.json", good_subnet)
case("arg-demo-unknown-format", "demo --out {t}/demo --formats onnx,tflite")
case("arg-demo-evaluations-zero", "demo --out {t}/demo --evaluations 0")
case("arg-pick-without-run", "export --model {m} --format hf --out {t}/art --subnet {t}/ok.json --pick 1", good_subnet)
case("arg-run-without-pick", "export --model {m} --format hf --out {t}/art --run {t}/run", run_folder())
case("arg-pick-negative", "export --model {m} --format hf --out {t}/art --run {t}/run --pick -1", run_folder())
case("arg-pick-unknown-index", "export --model {m} --format hf --out {t}/art --run {t}/run --pick 7", run_folder())
case("arg-group-size-zero", "export --model {m} --format openvino-int4 --out {t}/art --subnet {t}/ok.json "
     "--group-size 0", good_subnet)
case("arg-max-new-tokens-zero", "run {t}/art --prompt hi --max-new-tokens 0")
case("arg-verify-threads-zero", "verify {t}/art --threads 0")
case("arg-missing-required", "subnet --model {m}")
case("arg-unknown-option", "space --model {m} --colour")
case("arg-unknown-command", "frobnicate")
case("arg-bad-choice", "subnet --model {m} --subnet {t}/ok.json --out {t}/o --channel-order random", good_subnet)
case("arg-no-command", "")
case("arg-latency-no-subcommand", "latency")


def _snapshot(folder: Path) -> dict[str, str]:
    """Every path under `folder` with a digest of its contents (folders as 'dir')."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _call(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse errors exit from inside parse_args
        return exc.code if isinstance(exc.code, int) else 1


@pytest.fixture
def sandbox(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The row's folder as the current folder, with hwnas's caches elsewhere."""
    cache = tmp_path_factory.mktemp("bad-input-cache")
    monkeypatch.setenv("HWNAS_CACHE", str(cache / "hwnas"))
    monkeypatch.setenv("HWNAS_GRAPH_CACHE", str(cache / "graphs"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


HEAVY = [  # bad input must be refused before any of these run (a row reaching one fails at once)
    ("hwnas.measure.worker", "run_isolated"), ("hwnas.measure.worker", "run_tasks"),
    ("hwnas.bench", "bench_subnet"), ("hwnas.latency", "check_same_device"), ("hwnas.latency", "measure_samples"),
    ("hwnas.evaluate.evaluator", "Evaluator.evaluate"), ("hwnas.search", "Search.run"), ("hwnas.export", "export"),
    ("hwnas.finetune", "finetune"), ("hwnas.model", "EmbeddedModel.locate"),
]


@pytest.fixture
def no_heavy_work(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    for module, name in HEAVY:
        owner = importlib.import_module(module)
        if "." in name:
            cls, name = name.split(".")
            owner = getattr(owner, cls)

        def refuse(*args: object, _what: str = f"{module}.{name}", **kwargs: object) -> None:
            raise AssertionError(f"bad input reached heavy work: {_what}")

        monkeypatch.setattr(owner, name, refuse)


def test_table_has_enough_rows():
    assert len(CASES) >= 60
    ids = [p.id for p in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(("prep", "argv"), CASES)
def test_bad_input_is_one_line_exit_2_no_output(prep, argv, sandbox, model_dir, no_heavy_work, capsys):
    if prep:
        prep(sandbox, model_dir)
    args = _fmt(argv, sandbox, model_dir).split()
    before = _snapshot(sandbox)
    rc = _call(args)
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert rc == 2, captured.err
    assert "Traceback" not in captured.err + captured.out
    assert len(lines) == 1, captured.err
    assert LINE.match(lines[0]), lines[0]
    assert _snapshot(sandbox) == before, "the command left output behind"


# --- the report reader skips a cut last line (a killed writer), it is not an error ------------------------------


def test_report_ignores_a_cut_last_line(sandbox, model_dir, capsys):
    run_folder(lines=[json.dumps(_record(0)), json.dumps(_record(1)), json.dumps(_record(2))[:40]])(sandbox, model_dir)
    assert main(["report", str(sandbox / "run")]) == 0
    assert (sandbox / "run" / "report" / "front.md").is_file()
    from hwnas.report import Run

    assert [r["index"] for r in Run.load(sandbox / "run").records] == [0, 1]


# --- loaders no command reaches: the accuracy predictor ---------------------------------------------------------


def _predictor(**changes: object) -> dict:
    p = {"version": 1, "kind": "ridge", "target": "wikitext2.ppl", "log_target": False,
         "params": {"coef": [0.1, 0.2], "intercept": 0.0}, "x_mean": [0.0, 0.0], "x_scale": [1.0, 1.0],
         "y_mean": 0.0, "y_scale": 1.0, "cv": {}}
    p.update(changes)
    return p


PREDICTOR_CASES = [
    pytest.param(None, id="predictor-missing-file"),
    pytest.param(b"\xff\xfe\x00", id="predictor-binary"),
    pytest.param('{"version": 1, "kind":', id="predictor-not-json"),
    pytest.param([1, 2], id="predictor-not-object"),
    pytest.param(_predictor(version=9), id="predictor-wrong-version"),
    pytest.param({"version": 1, "kind": "ridge"}, id="predictor-missing-keys"),
    pytest.param(_predictor(kind="forest"), id="predictor-unknown-kind"),
    pytest.param(_predictor(x_mean=["a", "b"]), id="predictor-x-mean-not-numbers"),
    pytest.param(_predictor(x_scale=[1.0]), id="predictor-length-mismatch"),
    pytest.param(_predictor(params={"intercept": 0.0}), id="predictor-params-missing-coef"),
    pytest.param(_predictor(kind="lightgbm", params={"model": "garbage"}), id="predictor-garbage-lightgbm"),
    pytest.param(_predictor(y_scale="one"), id="predictor-y-scale-not-number"),
]


@pytest.mark.parametrize("content", PREDICTOR_CASES)
def test_bad_predictor_json_is_a_user_error(content, tmp_path):
    from hwnas.predictors import AccuracyPredictor

    path = tmp_path / "predictor.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        path.write_text(json.dumps(content))
    with pytest.raises(HwnasUserError) as exc:
        AccuracyPredictor.load(path)
    msg = str(exc.value)
    assert msg and "\n" not in msg


def test_good_predictor_round_trips(tmp_path):
    from hwnas.predictors import AccuracyPredictor

    (tmp_path / "p.json").write_text(json.dumps(_predictor()))
    p = AccuracyPredictor.load(tmp_path / "p.json")
    assert p.kind == "ridge" and p.x_mean.tolist() == [0.0, 0.0]


# --- property-based: the loaders return or raise HwnasUserError, nothing else ------------------------------------

SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
JSON = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids,
                                                                                          max_size=5), max_leaves=25)
INTS = st.integers(-3, 300)


def _user_error_or_none(fn: Callable[[], object]) -> None:
    try:
        fn()
    except HwnasUserError as exc:
        assert str(exc) and "\n" not in str(exc), repr(str(exc))


def _mapping_of(optional: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """Mappings over a few of a loader's own keys (each with values near what it expects, so the
    validation behind the first check is reached, or any JSON), sometimes with a stranger key."""
    near = {k: st.one_of(v, v, v, JSON) for k, v in optional.items()}
    some = st.sets(st.sampled_from(sorted(near)), max_size=4).flatmap(
        lambda keys: st.fixed_dictionaries({k: near[k] for k in sorted(keys)}))
    stranger = st.builds(lambda d, extra: {**d, **extra}, some, st.dictionaries(st.text(max_size=6), JSON, max_size=1))
    return st.one_of(some, some, some, some, stranger, JSON)


@FUZZ
@given(data=_mapping_of({"layers": st.lists(INTS, max_size=6), "mlp_widths": st.lists(INTS, max_size=6)}))
def test_fuzz_subnet_parse(data):
    from hwnas.space import SearchSpace
    from hwnas.subnet import Subnet

    space = SearchSpace.default_for(4, 256)
    _user_error_or_none(lambda: Subnet.parse(data, num_layers=4, intermediate_size=256))
    _user_error_or_none(lambda: Subnet.parse(data, num_layers=4, intermediate_size=[256, 128, 64, 256], space=space))
    _user_error_or_none(lambda: Subnet.from_dict(data))


def _fuzz_file(factory, name: str, text: str):
    """The fuzzed text written where a loader reads it (surrogates kept: invalid UTF-8 is a case too)."""
    path = factory.getbasetemp() / name
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
    return path


@FUZZ
@given(text=st.text(max_size=80) | JSON.map(json.dumps))
def test_fuzz_subnet_load(text, tmp_path_factory):
    from hwnas.subnet import Subnet

    path = _fuzz_file(tmp_path_factory, "fuzz-subnet.json", text)
    _user_error_or_none(lambda: Subnet.load(path, num_layers=4, intermediate_size=256))


WIDTHS = st.lists(st.sampled_from([64, 128, 192, 256, 100, 0, -64, 512]) | INTS, max_size=4)
SPACE = _mapping_of({
    "version": st.sampled_from([1, 2]), "name": st.text(max_size=8), "description": st.text(max_size=8),
    "base": st.fixed_dictionaries({}, optional={"num_layers": INTS | SCALARS, "intermediate_size": INTS | SCALARS}),
    "layers": st.fixed_dictionaries({}, optional={
        "mode": st.sampled_from(["any", "prefix", "x"]), "min_depth": INTS, "depths": st.lists(INTS, max_size=4),
        "droppable": st.lists(INTS, max_size=4)}),
    "mlp": st.fixed_dictionaries({}, optional={"widths": WIDTHS}), "heads": st.none(), "model": st.text(max_size=8)})


@FUZZ
@given(data=SPACE)
def test_fuzz_space_from_dict(data):
    from hwnas.space import SearchSpace

    _user_error_or_none(lambda: SearchSpace.from_dict(data, num_layers=4, intermediate_size=256))
    _user_error_or_none(lambda: SearchSpace.from_dict(data))


@FUZZ
@given(text=st.text(max_size=80) | SPACE.map(lambda v: yaml.safe_dump(v, allow_unicode=True)))
def test_fuzz_space_load(text, tmp_path_factory):
    from hwnas.space import SearchSpace

    path = _fuzz_file(tmp_path_factory, "fuzz-space.yaml", text)
    _user_error_or_none(lambda: SearchSpace.load(path, num_layers=4, intermediate_size=256))


METRICS = st.sampled_from(["wikitext2.ppl", "arc_easy.acc", "params", "size_mb", "decode_ms_per_token",
                           "prefill_ms@a", "x.y", ""])
RUN = _mapping_of({
    "version": st.sampled_from([1, 2]), "model": st.text(max_size=8), "space": st.none() | st.text(max_size=8),
    "channel_order": st.sampled_from(["contrib", "none", "x"]),
    "objectives": st.lists(METRICS | st.fixed_dictionaries({"metric": METRICS}, optional={
        "goal": st.sampled_from(["min", "max", "up"])}), min_size=1, max_size=3),
    "budgets": st.dictionaries(METRICS, INTS | st.floats(), max_size=2),
    "tasks": st.lists(st.sampled_from(["wikitext2", "arc_easy", "nosuch", "text:/x.txt"]), max_size=2),
    "limit": st.none() | INTS, "ppl_windows": INTS, "ppl_window": INTS,
    "latency_model": st.none() | st.text(max_size=4) | st.dictionaries(st.text(max_size=3), st.text(max_size=3)),
    "latency": st.dictionaries(st.sampled_from(["prefill", "decode", "batch", "x"]), INTS, max_size=3),
    "linas": st.dictionaries(st.sampled_from([*LinasConfig.__dataclass_fields__, "x"]), INTS | st.floats(), max_size=3),
    "algorithm": st.sampled_from(["linas", "nsga2", "random", "x"]), "seed": INTS, "data": st.none(),
    "run_id": st.none() | st.text(max_size=6)})


@FUZZ
@given(data=RUN)
def test_fuzz_run_config(data):
    from hwnas.search import RunConfig

    _user_error_or_none(lambda: RunConfig.from_dict(data))


@FUZZ
@given(text=st.text(max_size=80) | RUN.map(lambda v: yaml.safe_dump(v, allow_unicode=True)))
def test_fuzz_run_config_load(text, tmp_path_factory):
    from hwnas.search import RunConfig

    path = _fuzz_file(tmp_path_factory, "fuzz-run.yaml", text)
    _user_error_or_none(lambda: RunConfig.load(path))


def _edits_of(good: dict, changes: st.SearchStrategy) -> st.SearchStrategy:
    """A good object with a few keys changed and a few dropped (or, sometimes, any JSON)."""
    return st.builds(lambda ch, drop: {k: v for k, v in {**good, **ch}.items() if k not in drop}
                     if isinstance(ch, dict) else ch, changes, st.sets(st.sampled_from(sorted(good)), max_size=2))


NAMES = st.sampled_from(["config.json", "../x", "/abs", "a/../../b", "", ".", "a\x00b", "sub/ok"]) | st.text(max_size=6)
MANIFEST_CHANGES = _mapping_of({
    "version": st.sampled_from([1, 2]), "format": st.sampled_from(["hf", "onnx", "x"]) | st.lists(st.text(max_size=2)),
    "files": st.dictionaries(NAMES, st.text(max_size=6), max_size=3),
    "verification": st.fixed_dictionaries({}, optional={
        "reference": st.fixed_dictionaries({}, optional={
            "tokens": st.lists(INTS, max_size=3), "top5_index": st.lists(st.lists(INTS, max_size=5), max_size=2),
            "top5_logit": st.lists(st.lists(st.floats(), max_size=5), max_size=2)}),
        "top1_agreement": st.floats() | SCALARS, "max_abs_diff": st.floats() | SCALARS})})


@FUZZ
@given(data=MANIFEST_CHANGES | _edits_of(_manifest(), MANIFEST_CHANGES))
def test_fuzz_read_manifest(data, tmp_path_factory):
    from hwnas.export import read_manifest

    folder = tmp_path_factory.getbasetemp() / "fuzz-artifact"
    folder.mkdir(exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(data))
    _user_error_or_none(lambda: read_manifest(folder))


PREDICTOR_CHANGES = _mapping_of({
    "version": st.sampled_from([1, 2]), "kind": st.sampled_from(["ridge", "svr", "lightgbm", "x"]),
    "target": st.text(max_size=4), "log_target": st.booleans(),
    "params": st.fixed_dictionaries({}, optional={
        "coef": st.lists(st.floats(), max_size=3), "intercept": st.floats() | SCALARS, "gamma": st.floats(),
        "support_vectors": st.lists(st.lists(st.floats(), max_size=3), max_size=2),
        "dual_coef": st.lists(st.floats(), max_size=2), "model": st.sampled_from(["tree\n", "tree", "garbage"])}),
    "x_mean": st.lists(st.floats(), max_size=3), "x_scale": st.lists(st.floats(), max_size=3),
    "y_mean": st.floats() | SCALARS, "y_scale": st.floats() | SCALARS, "cv": JSON})
PREDICTOR = _edits_of(_predictor(), PREDICTOR_CHANGES)


@FUZZ
@given(data=PREDICTOR)
def test_fuzz_predictor_load(data, tmp_path_factory):
    from hwnas.predictors import AccuracyPredictor

    path = tmp_path_factory.getbasetemp() / "fuzz-predictor.json"
    path.write_text(json.dumps(data))
    _user_error_or_none(lambda: AccuracyPredictor.load(path))


# --- audit: no unsafe deserialisation of user files --------------------------------------------------------------

UNSAFE = [
    (re.compile(r"\byaml\.(load|unsafe_load|full_load|load_all|unsafe_load_all|full_load_all)\s*\("),
     "YAML must be read with yaml.safe_load"),
    (re.compile(r"\bLoader\s*=\s*yaml\.(Loader|UnsafeLoader|FullLoader)"), "YAML must be read with yaml.safe_load"),
    (re.compile(r"\b(import|from)\s+(c?pickle|dill|cloudpickle|joblib|shelve|marshal)\b"), "no pickle-like formats"),
    (re.compile(r"\b(pickle|joblib|dill|cloudpickle|marshal)\.(load|loads)\s*\("), "no pickle-like formats"),
    (re.compile(r"allow_pickle\s*=\s*True"), "numpy must not unpickle"),
    (re.compile(r"trust_remote_code\s*=\s*True"), "never run a model's own code"),
]
TORCH_LOAD = re.compile(r"\btorch\.load\s*\(")


def test_no_unsafe_deserialisation_in_the_source():
    problems = []
    for folder in ("hwnas", "backends"):
        for path in sorted((REPO / folder).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            rel = path.relative_to(REPO)
            for pattern, why in UNSAFE:
                for m in pattern.finditer(text):
                    problems.append(f"{rel}:{text.count(chr(10), 0, m.start()) + 1}: {why}")
            for m in TORCH_LOAD.finditer(text):
                depth, end = 0, m.end() - 1
                for end in range(m.end() - 1, len(text)):  # the call's own parentheses
                    depth += {"(": 1, ")": -1}.get(text[end], 0)
                    if depth == 0:
                        break
                if not re.search(r"weights_only\s*=\s*True", text[m.start():end]):
                    problems.append(f"{rel}:{text.count(chr(10), 0, m.start()) + 1}: torch.load needs weights_only=True")
    assert not problems, "\n".join(problems)


def test_the_audit_catches_what_it_should():
    bad = "x = yaml.load(f)\nimport pickle\nm = torch.load(p)\nAutoModel.from_pretrained(x, trust_remote_code=True)\n"
    hits = [why for pattern, why in UNSAFE if pattern.search(bad)]
    assert len(hits) == 3 and TORCH_LOAD.search(bad)
    assert not any(p.search("yaml.safe_load(f)\nyaml.safe_dump(x)") for p, _ in UNSAFE)
