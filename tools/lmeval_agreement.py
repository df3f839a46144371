"""Agreement of hwnas's task scoring with the lm-eval harness itself, item by item.

Exports the items hwnas selects (same --limit/--seed) from the local data folder into the HF
schema lm-eval's own task YAMLs read, writes custom task YAMLs that copy lm-eval's prompt
templates (arc_easy.yaml, mmlu _default_template_yaml, truthfulqa_mc1.yaml, winogrande, piqa.yaml,
hellaswag.yaml after process_docs, lambada_openai.yaml), runs `lm_eval` (a separate venv) on the
cached SmolLM2-135M safetensors folder, then compares prompts, log-likelihoods and per-item choices.

    python tools/lmeval_agreement.py --work /work/lmeval-run --lmeval-python /work/venv-lmeval/bin/python
    python tools/lmeval_agreement.py --work /work/lmeval-run --skip-run     # compare an earlier run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import hwnas  # noqa: F401
from hwnas.cli import quiet_libraries
from hwnas.data import find_data_file
from hwnas.evaluate import Evaluator
from hwnas.evaluate.tasks import READERS, TASKS, TRUTHFULQA_PRIMER
from hwnas.model import cache_root, load_model

TASK_NAMES = ("arc_easy", "arc_challenge", "mmlu", "truthfulqa_mc1", "winogrande", "hellaswag", "piqa",
              "lambada_openai")

# lm-eval's templates, copied from its YAMLs (lm_eval 0.4.13); `{data}` is the exported jsonl.
MC = "output_type: multiple_choice\n"
YAMLS = {
    "arc_easy": MC + 'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
                     'doc_to_target: "{{choices.label.index(answerKey)}}"\ndoc_to_choice: "{{choices.text}}"\n'
                     "metric_list:\n  - metric: acc\n  - metric: acc_norm\n",
    "mmlu": MC + 'description: "The following are multiple choice questions (with answers) about '
                 '{{subject_name}}.\\n\\n"\n'
                 'doc_to_text: "{{question.strip()}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\nC. '
                 '{{choices[2]}}\\nD. {{choices[3]}}\\nAnswer:"\n'
                 'doc_to_choice: ["A", "B", "C", "D"]\ndoc_to_target: answer\n'
                 "metric_list:\n  - metric: acc\n  - metric: acc_norm\n",
    "truthfulqa_mc1": MC + "doc_to_text: " + json.dumps(
        "{% set prompt_qa = '" + TRUTHFULQA_PRIMER.replace("\n", "\\n") + "'%}"
        "{{prompt_qa + '\\n\\nQ: ' + question + '\\nA:'}}") + "\n"
        'doc_to_target: 0\ndoc_to_choice: "{{mc1_targets.choices}}"\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n",
    "winogrande": MC + "doc_to_text: !function preprocess_winogrande.doc_to_text\n"
                       "doc_to_target: !function preprocess_winogrande.doc_to_target\n"
                       "doc_to_choice: !function preprocess_winogrande.doc_to_choice\n"
                       "metric_list:\n  - metric: acc\n",
    "hellaswag": MC + 'doc_to_text: "{{query}}"\ndoc_to_target: "{{label}}"\ndoc_to_choice: "choices"\n'
                      "metric_list:\n  - metric: acc\n  - metric: acc_norm\n",
    "piqa": MC + 'doc_to_text: "Question: {{goal}}\\nAnswer:"\ndoc_to_target: label\n'
                 'doc_to_choice: "{{[sol1, sol2]}}"\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n',
    "lambada_openai": "output_type: loglikelihood\n"
                      "doc_to_text: \"{{text.split(' ')[:-1]|join(' ')}}\"\n"
                      "doc_to_target: \"{{' '+text.split(' ')[-1]}}\"\n"
                      "metric_list:\n  - metric: perplexity\n  - metric: acc\n",
}
WINOGRANDE_PY = '''def doc_to_text(doc):
    answer_to_num = {"1": 0, "2": 1}
    return answer_to_num[doc["answer"]]


def doc_to_target(doc):
    idx = doc["sentence"].index("_") + 1
    return doc["sentence"][idx:].strip()


def doc_to_choice(doc):
    idx = doc["sentence"].index("_")
    options = [doc["option1"], doc["option2"]]
    return [doc["sentence"][:idx] + opt for opt in options]
'''


def to_hf_schema(task: str, row: dict) -> dict:
    """A local row in the field names of the HF dataset lm-eval reads."""
    if task in ("arc_easy", "arc_challenge"):
        labels = ["A", "B", "C", "D", "E"][: len(row["choices"])]
        return {"question": row["query"].removeprefix("Question: "),
                "choices": {"text": row["choices"], "label": labels}, "answerKey": labels[row["gold"]]}
    if task == "mmlu":
        return {"question": row["question"], "subject_name": row["subject_name"],
                "choices": [row["c0"], row["c1"], row["c2"], row["c3"]], "answer": row["gold"]}
    if task == "truthfulqa_mc1":
        labels = [int(i == row["gold"]) for i in range(len(row["choices"]))]
        return {"question": row["question"], "mc1_targets": {"choices": row["choices"], "labels": labels}}
    if task == "winogrande":
        # The file keeps the two option-filled prefixes; rebuild sentence/option1/option2 so that
        # lm-eval's own doc_to_choice / doc_to_target give them back.
        a, b = row["contexts"]
        k = 0
        while k < min(len(a), len(b)) and a[k] == b[k]:
            k += 1
        k = a.rfind(" ", 0, k) + 1 if " " in a[:k] else 0  # split at a word start
        return {"sentence": a[:k] + "_ " + row["continuation"], "option1": a[k:], "option2": b[k:],
                "answer": str(row["gold"] + 1)}
    if task == "hellaswag":
        return {"query": row["query"], "choices": row["choices"], "label": str(row["gold"])}
    if task == "piqa":
        return {"goal": row["goal_prompt"].removeprefix("Question: "), "sol1": row["choices"][0],
                "sol2": row["choices"][1], "label": row["gold"]}
    if task == "lambada_openai":
        return {"text": row["context"] + " " + row["continuation"]}
    raise KeyError(task)


def export(ev: Evaluator, work: Path, data_dir: str | None) -> list[str]:
    tasks_dir = work / "tasks"
    tasks_dir.mkdir(parents=True, exist_ok=True)
    (tasks_dir / "preprocess_winogrande.py").write_text(WINOGRANDE_PY)
    names = []
    for name, prepared in ev.tasks.items():
        spec = TASKS[name]
        rows = list(READERS[spec.reader](find_data_file(spec.file, data_dir)))
        data = work / f"{name}.jsonl"
        with data.open("w", encoding="utf-8") as f:
            for d in prepared.docs:
                f.write(json.dumps({**to_hf_schema(name, rows[d.index]), "hwnas_index": d.index}) + "\n")
        template = YAMLS["arc_easy" if name == "arc_challenge" else name]
        (tasks_dir / f"hw_{name}.yaml").write_text(
            f"task: hw_{name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"test_split: test\n{template}")
        names.append(f"hw_{name}")
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tasks", default=",".join(TASK_NAMES))
    ap.add_argument("--data", default=None)
    ap.add_argument("--work", default="/tmp/hwnas-lmeval")
    ap.add_argument("--lmeval-python", default="/work/venv-lmeval/bin/python")
    ap.add_argument("--batch-size", default="8")
    ap.add_argument("--skip-run", action="store_true", help="compare the samples of an earlier run")
    args = ap.parse_args()
    quiet_libraries()
    work = Path(args.work)
    base = load_model("smollm2-135m")
    folder = next(p.parent for p in (cache_root() / "models").glob("*/model.safetensors"))
    ev = Evaluator(base.tokenizer, args.tasks, limit=args.limit, seed=args.seed, data_dir=args.data)
    names = export(ev, work, args.data)
    if not args.skip_run:
        env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
               "TOKENIZERS_PARALLELISM": "false"}
        cmd = [args.lmeval_python, "-m", "lm_eval", "--model", "hf", "--model_args",
               f"pretrained={folder},dtype=float32", "--tasks", ",".join(names), "--include_path",
               str(work / "tasks"), "--device", "cpu", "--batch_size", args.batch_size, "--log_samples",
               "--output_path", str(work / "out")]
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True)
        print(f"lm-eval ran in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    t0 = time.perf_counter()
    res = ev.evaluate(base.model)
    print(f"hwnas evaluated in {time.perf_counter() - t0:.1f} s")
    print(f"{'task':16} {'n':>4} {'lm-eval acc':>11} {'hwnas acc':>9} {'lm-eval norm':>12} {'hwnas norm':>10} "
          f"{'same pred':>9} {'same norm':>9} {'same prompt':>11} {'max |dll|':>9}")
    for name in ev.tasks:
        samples = sorted(work.glob(f"out/**/samples_hw_{name}_*.jsonl"))
        if not samples:
            print(f"{name:16} no lm-eval samples")
            continue
        lm = {}
        for line in samples[-1].read_text().splitlines():
            s = json.loads(line)
            lm[s["doc"]["hwnas_index"]] = s
        tr = res.tasks[name]
        prepared = ev.tasks[name]
        same = same_n = same_ctx = 0
        max_d = 0.0
        diffs = []
        for item, doc in zip(tr.items, prepared.docs):
            s = lm[item.index]
            lls = [float(r[0][0]) for r in s["resps"]]
            args_ = s["arguments"].values() if isinstance(s["arguments"], dict) else s["arguments"]
            pairs = [(a["arg_0"], a["arg_1"]) if isinstance(a, dict) else (a[0], a[1]) for a in args_]
            same_ctx += pairs == list(zip(doc.contexts, doc.continuations))
            max_d = max(max_d, max(abs(a - b) for a, b in zip(lls, item.lls)))
            if name == "lambada_openai":
                ok = (s["acc"] == 1.0) == (item.pred == 0)
                same += ok
                same_n += ok
            else:
                p = max(range(len(lls)), key=lambda i: (lls[i], -i))
                ok = s["acc"] == float(item.pred == item.gold)
                same += ok and p == item.pred
                if item.pred_norm is not None and "acc_norm" in s:
                    same_n += s["acc_norm"] == float(item.pred_norm == item.gold)
                else:
                    same_n += 1
            if not ok:
                diffs.append((item.index, lls, item.lls))
        lm_acc = sum(lm[i.index]["acc"] for i in tr.items) / len(tr.items)
        lm_norm = (sum(lm[i.index].get("acc_norm", 0) for i in tr.items) / len(tr.items)
                   if "acc_norm" in lm[tr.items[0].index] else float("nan"))
        print(f"{name:16} {tr.n:>4} {lm_acc:>11.3f} {tr.acc:>9.3f} {lm_norm:>12.3f} "
              f"{(tr.acc_norm if tr.acc_norm is not None else float('nan')):>10.3f} {same:>5}/{tr.n:<3} "
              f"{same_n:>5}/{tr.n:<3} {same_ctx:>7}/{tr.n:<3} {max_d:>9.1e}")
        if name == "lambada_openai":
            lm_ppl = math.exp(-sum(float(lm[i.index]["resps"][0][0][0]) for i in tr.items) / len(tr.items))
            print(f"{'':16} perplexity of the last word: lm-eval {lm_ppl:.4f}, hwnas {tr.ppl:.4f}")
        for idx, a, b in diffs:
            print(f"   differs: row {idx}: lm-eval lls {[round(x, 4) for x in a]} hwnas {[round(x, 4) for x in b]}")


if __name__ == "__main__":
    main()
