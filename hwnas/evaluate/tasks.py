"""The evaluation tasks as data: where each one's file lives, how a row becomes an lm-eval prompt,
and which metric an objective reads. Prompt formats follow lm-eval 0.4 (the YAMLs of `arc_easy`,
`mmlu_*`, `truthfulqa_mc1`, `winogrande`, `hellaswag`, `piqa`, `lambada_openai`)."""

from __future__ import annotations

import bz2
import csv
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..data import find_data_file
from ..errors import HwnasUserError

# lm-eval truthfulqa_mc1: a fixed 6-shot QA primer precedes every question.
TRUTHFULQA_PRIMER = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
)

DEFAULT_TASKS = ("arc_easy", "arc_challenge", "mmlu", "truthfulqa_mc1", "winogrande", "hellaswag", "piqa",
                 "wikitext2")
KINDS = ("multiple_choice", "partial", "last_word", "perplexity")


class TaskError(HwnasUserError):
    """An unknown task name or a malformed task row."""


@dataclass(frozen=True)
class Doc:
    """One item: a context per choice (one shared context, or one per option for partial scoring),
    the continuation per choice, the gold index, and the strings acc_norm divides by."""

    index: int  # row number in the source file
    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    gold: int
    norm_texts: tuple[str, ...]  # lm-eval: len(choice) in characters, delimiter excluded
    group: str = ""  # stratum for subsampling (MMLU subject)


@dataclass(frozen=True)
class TaskSpec:
    """One task. `metric` is what an objective uses; `metrics` is everything recorded."""

    name: str
    kind: str  # one of KINDS
    file: str  # path inside the data folder (../shared/data/MANIFEST.md)
    reader: str  # key of READERS: how the file becomes rows of named fields
    prompt: str = "{query}"  # context template over a row's fields (str.format)
    description: str = ""  # template prepended to every context (MMLU's subject line)
    choices: str = "choices"  # row field holding the choice strings (or fixed labels, see labels)
    labels: tuple[str, ...] = ()  # fixed choice strings (MMLU: A-D); overrides `choices`
    target_delimiter: str = " "
    metric: str = "acc"
    metrics: tuple[str, ...] = ("acc", "acc_norm")
    higher_is_better: bool = True
    stratify: str | None = None  # row field to stratify --limit by
    hf_dataset: str = ""  # what lm-eval reads from the hub (documentation; files are used here)
    window: int = 1024  # perplexity tasks only
    stride: int = 1024

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name}: kind {self.kind!r} not in {KINDS}")
        if self.metric not in self.metrics:
            raise ValueError(f"task {self.name}: metric {self.metric!r} not in {self.metrics}")

    def load_docs(self, data_dir: str | Path | None = None) -> list[Doc]:
        """Every item of the task, in file order, as lm-eval would present it."""
        path = find_data_file(self.file, data_dir)
        return [self.make_doc(i, row) for i, row in enumerate(READERS[self.reader](path))]

    def make_doc(self, index: int, row: dict) -> Doc:
        try:
            desc = self.description.format(**row)
            if self.kind == "partial":  # WinoGrande: each option fills the prefix, same continuation
                contexts = tuple(desc + c for c in row["contexts"])
                cont = self.target_delimiter + row["continuation"]
                return Doc(index, contexts, (cont,) * len(contexts), int(row["gold"]), tuple(row["contexts"]))
            context = desc + self.prompt.format(**row)
            if self.kind == "last_word":
                return Doc(index, (context,), (self.target_delimiter + row["continuation"],), 0, ())
            choices = self.labels or tuple(row[self.choices])
            conts = tuple(self.target_delimiter + c for c in choices)
            return Doc(index, (context,) * len(conts), conts, int(row["gold"]), tuple(choices),
                       str(row.get(self.stratify, "")) if self.stratify else "")
        except (KeyError, IndexError, ValueError) as exc:
            raise TaskError(f"task {self.name}: row {index} of {self.file} is malformed ({exc!r})") from exc


# ---- readers: a file -> rows of named fields -------------------------------------------------

def _read_jsonl(path: Path) -> Iterator[dict]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _read_winogrande(path: Path) -> Iterator[dict]:
    for row in _read_jsonl(path):
        yield {"contexts": row["context_options"], "continuation": row["continuation"], "gold": row["gold"]}


def _read_piqa(path: Path) -> Iterator[dict]:
    """llm-foundry stores the PIQA query as "Question: {goal}\\n"; lm-eval's is "Question: {goal}\\nAnswer:"."""
    for row in _read_jsonl(path):
        yield {**row, "goal_prompt": row["query"].removesuffix("\n")}


def _read_truthfulqa(path: Path) -> Iterator[dict]:
    """v0 mc_task.json: mc1_targets maps each choice to 1 (the one true answer) or 0, true first."""
    for row in json.loads(path.read_text(encoding="utf-8")):
        targets = row["mc1_targets"]
        labels = list(targets.values())
        yield {"question": row["question"], "choices": list(targets), "gold": labels.index(1)}


def _read_hellaswag(path: Path) -> Iterator[dict]:
    """klosax's file: 6 lines per item (preprocessed query, gold, 4 endings), already lm-eval-cleaned."""
    with bz2.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    for i in range(0, len(lines) - 5, 6):
        yield {"query": lines[i], "gold": int(lines[i + 1]), "choices": lines[i + 2 : i + 6]}


def _read_mmlu(folder_file: Path) -> Iterator[dict]:
    """All 57 `<subject>_test.csv` files (no header: question, A, B, C, D, answer letter)."""
    for path in sorted(folder_file.parent.glob("*_test.csv")):
        subject = path.name.removesuffix("_test.csv")
        with path.open(encoding="utf-8", newline="") as f:
            for rec in csv.reader(f):
                if len(rec) != 6:
                    raise TaskError(f"{path}: expected 6 columns, got {len(rec)}")
                yield {"subject": subject, "subject_name": subject.replace("_", " "),
                       "question": rec[0].strip(), "c0": rec[1], "c1": rec[2], "c2": rec[3], "c3": rec[4],
                       "gold": "ABCD".index(rec[5].strip())}


def _read_lambada(path: Path) -> Iterator[dict]:
    for row in _read_jsonl(path):
        yield {"context": row["context"], "continuation": row["continuation"]}


READERS: dict[str, Callable[[Path], Iterator[dict]]] = {
    "jsonl": _read_jsonl,
    "piqa": _read_piqa,
    "winogrande": _read_winogrande,
    "truthfulqa": _read_truthfulqa,
    "hellaswag": _read_hellaswag,
    "mmlu": _read_mmlu,
    "lambada": _read_lambada,
}

_SPECS = (
    TaskSpec("arc_easy", "multiple_choice", "llm_foundry_eval/arc_easy.jsonl", "jsonl",
             prompt="{query}\nAnswer:", hf_dataset="allenai/ai2_arc ARC-Easy test"),
    TaskSpec("arc_challenge", "multiple_choice", "llm_foundry_eval/arc_challenge.jsonl", "jsonl",
             prompt="{query}\nAnswer:", metric="acc_norm", hf_dataset="allenai/ai2_arc ARC-Challenge test"),
    # MMLU: `mmlu/test/*_test.csv`; the file named here is the one every subject sits beside.
    TaskSpec("mmlu", "multiple_choice", "mmlu/test/abstract_algebra_test.csv", "mmlu",
             prompt="{question}\nA. {c0}\nB. {c1}\nC. {c2}\nD. {c3}\nAnswer:",
             description="The following are multiple choice questions (with answers) about {subject_name}.\n\n",
             labels=("A", "B", "C", "D"), stratify="subject", hf_dataset="cais/mmlu all test"),
    TaskSpec("truthfulqa_mc1", "multiple_choice", "truthfulqa/v0_mc_task.json", "truthfulqa",
             prompt=TRUTHFULQA_PRIMER.replace("{", "{{").replace("}", "}}") + "\n\nQ: {question}\nA:",
             hf_dataset="truthfulqa/truthful_qa multiple_choice validation"),
    TaskSpec("winogrande", "partial", "llm_foundry_eval/winogrande.jsonl", "winogrande",
             metrics=("acc",), hf_dataset="allenai/winogrande winogrande_xl validation"),
    TaskSpec("hellaswag", "multiple_choice", "hellaswag/hellaswag_val_full.txt.bz2", "hellaswag",
             metric="acc_norm", hf_dataset="Rowan/hellaswag validation"),
    TaskSpec("piqa", "multiple_choice", "llm_foundry_eval/piqa.jsonl", "piqa",
             prompt="{goal_prompt}\nAnswer:", hf_dataset="baber/piqa validation"),
    TaskSpec("lambada_openai", "last_word", "llm_foundry_eval/lambada_openai.jsonl", "lambada",
             prompt="{context}", metrics=("acc", "ppl"), hf_dataset="EleutherAI/lambada_openai test"),
    TaskSpec("wikitext2", "perplexity", "wikitext2/wiki.test.raw", "text", metric="ppl", metrics=("ppl",),
             higher_is_better=False, hf_dataset="Salesforce/wikitext wikitext-2-raw-v1 test"),
)

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in _SPECS}
TEXT_PREFIX = "text:"  # `text:PATH` = perplexity on any UTF-8 text file


def get_task(name: str) -> TaskSpec:
    """The spec of a registered task, or a perplexity task over `text:PATH`."""
    if name.startswith(TEXT_PREFIX):
        path = Path(name[len(TEXT_PREFIX):]).expanduser()
        return TaskSpec(name, "perplexity", str(path.resolve()), "text", metric="ppl", metrics=("ppl",),
                        higher_is_better=False)
    if name not in TASKS:
        raise TaskError(f"unknown task '{name}'; known: {', '.join(TASKS)}, or text:PATH for perplexity "
                        f"on a text file")
    return TASKS[name]


def parse_tasks(spec: str | list[str] | tuple[str, ...]) -> list[TaskSpec]:
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    return [get_task(n) for n in names if n]


def subsample(docs: list[Doc], limit: int | None, seed: int = 0) -> list[Doc]:
    """A seeded sample of `limit` docs (all when limit is None or >= len). Docs with a group
    (MMLU subject) are sampled per group in proportion to its size (largest remainder)."""
    if limit is None or limit >= len(docs):
        return list(docs)
    if limit <= 0:
        raise TaskError(f"--limit must be positive, got {limit}")
    by_group: dict[str, list[Doc]] = {}
    for d in docs:
        by_group.setdefault(d.group, []).append(d)
    if len(by_group) == 1:
        return sorted(random.Random(seed).sample(docs, limit), key=lambda d: d.index)
    total = len(docs)
    quota = {g: limit * len(v) / total for g, v in by_group.items()}
    alloc = {g: int(q) for g, q in quota.items()}
    rest = limit - sum(alloc.values())
    for g in sorted(quota, key=lambda g: (-(quota[g] - alloc[g]), g))[:rest]:
        alloc[g] += 1
    picked: list[Doc] = []
    for g in sorted(by_group):
        picked.extend(random.Random(f"{seed}:{g}").sample(by_group[g], alloc[g]))
    return sorted(picked, key=lambda d: d.index)
