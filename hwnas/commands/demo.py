"""`hwnas demo`: the end-to-end job on the embedded default model, offline.

Today it covers the foundation: load SmolLM2-135M, show the space, materialize and save a
sub-network, load it back with plain transformers, and compare WikiText-2 perplexity with the base.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from . import add_model_argument, add_order_argument, info, open_supernet_from_args

NAME = "demo"
HELP = "run the end-to-end pipeline on the embedded default model (offline)"



def demo_subnet(num_layers: int, width: int, layer_scores: list[float] | None) -> dict[str, list[int]]:
    """A heterogeneous example: the two least influential layers dropped, the ends kept wide, the
    middle narrowed to 5/6. (The search chooses real candidates; this shows the mechanics.)"""
    scores = layer_scores or [float(i in (num_layers // 2, num_layers // 2 + 1)) * -1 for i in range(num_layers)]
    dropped = sorted(range(num_layers), key=lambda i: scores[i])[:2]
    layers = [i for i in range(num_layers) if i not in dropped]
    narrow = width * 5 // 6 // 64 * 64
    widths = [width if (i < 4 or i >= num_layers - 4) else narrow for i in layers]
    return {"layers": layers, "mlp_widths": widths}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p)
    p.add_argument("--out", default="hwnas-demo", help="folder for everything the demo writes")
    add_order_argument(p)
    p.add_argument("--ppl-windows", type=int, default=4, help="WikiText-2 windows of 1024 tokens")


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    from ..errors import DataNotFoundError
    from ..evaluate.perplexity import load_text, perplexity, tokenize_text
    from ..modeling import analytic_parameter_count, parameter_count

    t_start = time.perf_counter()
    out = Path(args.out)
    info(f"[1/4] loading {args.model} and its channel importance order ...")
    sn = open_supernet_from_args(args)
    base = sn.base
    info(f"      {base.family.model_type}, {base.config.num_hidden_layers} layers, "
         f"{base.num_parameters:,} parameters")
    space = sn.default_space()
    size = space.summary()["size"]
    print(f"space {space.name}: depths {size['allowed_depths']}, MLP widths {list(space.mlp_widths)}; "
          f"{size['distinct_subnets_sci']} distinct sub-networks ({size['encoding_size_sci']} encodings)")

    info("[2/4] materializing a sub-network ...")
    example = demo_subnet(sn.num_layers, sn.intermediate_size, sn.order.layer_scores if sn.order else None)
    subnet = sn.parse_subnet(example, space=space, source="demo sub-network")
    t0 = time.perf_counter()
    model = sn.materialize(subnet)
    t_mat = time.perf_counter() - t0
    n_params = parameter_count(model)
    assert n_params == analytic_parameter_count(model.config, list(subnet.mlp_widths))
    folder = sn.save_subnet(subnet, out / "subnet", model=model)
    print(f"sub-network: {subnet.depth} layers, {n_params:,} parameters "
          f"({n_params / base.num_parameters:.1%} of the base), materialized in {t_mat:.2f} s, "
          f"saved to {folder}")

    info("[3/4] loading it back with transformers.AutoModelForCausalLM ...")
    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    probe = torch.randint(0, base.config.vocab_size, (1, 16))
    with torch.no_grad():
        diff = (reloaded(probe).logits - model(probe).logits).abs().max().item()
    print(f"reloaded as {type(reloaded).__name__}: max |logit diff| vs in-memory = {diff:.2e}")

    info("[4/4] WikiText-2 perplexity ...")
    try:
        ids = tokenize_text(base.tokenizer, load_text(data_dir=args.data))
    except DataNotFoundError as exc:
        info(f"      skipped: {exc}")
    else:
        r_base = perplexity(base.model, ids, max_windows=args.ppl_windows)
        r_sub = perplexity(model, ids, max_windows=args.ppl_windows)
        print(f"WikiText-2 perplexity ({r_base.windows} x {r_base.window} tokens): base {r_base.ppl:.2f}, "
              f"sub-network {r_sub.ppl:.2f} ({r_sub.ppl / r_base.ppl:.2f}x; channel order: {args.channel_order})")
    print(f"demo done in {time.perf_counter() - t_start:.1f} s; outputs in {out}/")
    return 0
