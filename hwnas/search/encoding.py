"""Integer genes of a search space, as pymoo searches them: encode / decode / repair sub-networks,
and the predictor features straight from genes (vectorised over a population)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..compression import PLAIN, Compression, compression_amount
from ..errors import HwnasUserError
from ..space import SearchSpace
from ..subnet import Subnet


class Encoding:
    """Integer genes for a space: keep/drop per droppable layer (or one depth gene in prefix mode),
    then one width index per layer, then the compression section's format genes (per layer: the
    attention's then the MLP's, or one per layer; then the embedding's and the head's; or a single
    gene for the whole network). Decoding repairs to the minimum depth by re-adding the most
    influential dropped layers."""

    def __init__(self, space: SearchSpace, layer_scores: Sequence[float] | None = None) -> None:
        self.space = space
        self.n = space.num_layers
        self.widths = np.asarray(space.mlp_widths)
        self.formats = list(space.weight_formats)
        self.droppable = list(space.droppable_layers)
        scores = list(layer_scores) if layer_scores else [0.0] * self.n
        self.readd_order = sorted(self.droppable, key=lambda i: -scores[i])  # most influential first
        self.n_layer_genes = 1 if space.mode == "prefix" else len(self.droppable)
        self.per_layer, self.whole = space.format_genes()
        self.fmt_start = self.n_layer_genes + self.n
        self.n_genes = self.fmt_start + self.per_layer * self.n + self.whole
        upper_layer = len(space.allowed_depths) - 1 if space.mode == "prefix" else 1
        self.xu = np.array([upper_layer] * self.n_layer_genes + [len(self.widths) - 1] * self.n
                           + [len(self.formats) - 1] * (self.n_genes - self.fmt_start))

    def keep_mask(self, x: np.ndarray) -> np.ndarray:
        """(pop, n) booleans: which base layers each genome keeps (after depth repair)."""
        x = np.atleast_2d(x).astype(int)
        pop = x.shape[0]
        keep = np.ones((pop, self.n), dtype=bool)
        if self.space.mode == "prefix":
            depths = np.asarray(self.space.allowed_depths)[x[:, 0]]
            keep &= np.arange(self.n)[None, :] < depths[:, None]
            return keep
        keep[:, self.droppable] = x[:, : self.n_layer_genes] == 1
        low = min(self.space.allowed_depths)
        for r in np.nonzero(keep.sum(1) < low)[0]:
            for i in self.readd_order:
                if keep[r].sum() >= low:
                    break
                keep[r, i] = True
        return keep

    def repair(self, x: np.ndarray) -> np.ndarray:
        """Genes rewritten so that decode(x) needs no repair (keeps the population honest)."""
        x = np.atleast_2d(x).astype(int).copy()
        if self.space.mode != "prefix":
            x[:, : self.n_layer_genes] = self.keep_mask(x)[:, self.droppable].astype(int)
        return x

    def width_values(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(x).astype(int)
        return self.widths[x[:, self.n_layer_genes : self.fmt_start]]

    def format_indices(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Format indices per genome: attention (pop, n), MLP (pop, n), embedding (pop,), head (pop,)."""
        x = np.atleast_2d(x).astype(int)
        pop, n, f = x.shape[0], self.n, x[:, self.fmt_start:]
        if self.whole == 0:  # one format (no compression genes)
            zeros = np.zeros((pop, n), dtype=int)
            return zeros, zeros, zeros[:, 0], zeros[:, 0]
        if self.per_layer == 0:  # one gene for the network
            g = np.repeat(f[:, :1], n, axis=1)
            return g, g, f[:, 0], f[:, 0]
        attn = f[:, :n]
        mlp = f[:, n: 2 * n] if self.per_layer == 2 else attn
        return attn, mlp, f[:, -2], f[:, -1]

    def decode(self, x: np.ndarray) -> list[Subnet]:
        keep, widths = self.keep_mask(x), self.width_values(x)
        attn, mlp, embed, head = self.format_indices(x)
        fm = self.formats
        out = []
        for r, (k, w) in enumerate(zip(keep, widths)):
            comp = None
            if self.whole:
                comp = Compression(tuple(fm[i] for i in attn[r][k]), tuple(fm[i] for i in mlp[r][k]),
                                   fm[embed[r]], fm[head[r]])
            out.append(Subnet(tuple(np.nonzero(k)[0].tolist()), tuple(w[k].tolist()), comp))
        return out

    def encode(self, s: Subnet) -> np.ndarray:
        x = np.zeros(self.n_genes, dtype=int)
        if self.space.mode == "prefix":
            x[0] = list(self.space.allowed_depths).index(s.depth)
        else:
            kept = set(s.layers)
            x[: self.n_layer_genes] = [1 if i in kept else 0 for i in self.droppable]
        lookup = {int(w): j for j, w in enumerate(self.widths)}
        top = len(self.widths) - 1
        per_layer = dict(zip(s.layers, s.mlp_widths))
        x[self.n_layer_genes : self.fmt_start] = [lookup[per_layer[i]] if i in per_layer else top for i in range(self.n)]
        if self.whole:
            comp = s.compression or Compression.uniform(PLAIN, s.depth)
            index = {f: j for j, f in enumerate(self.formats)}
            try:
                attn = dict(zip(s.layers, (index[f] for f in comp.attn)))
                mlp = dict(zip(s.layers, (index[f] for f in comp.mlp)))
                ends = [index[comp.embed], index[comp.head]]
            except KeyError as exc:
                raise HwnasUserError(f"weight format {exc} is not in the space's formats {self.formats}") from None
            f = x[self.fmt_start:]
            if self.per_layer == 0:
                f[0] = ends[1]
            else:
                f[: self.n] = [attn.get(i, 0) for i in range(self.n)]
                if self.per_layer == 2:
                    f[self.n: 2 * self.n] = [mlp.get(i, 0) for i in range(self.n)]
                f[-2:] = ends
        return x

    def features(self, x: np.ndarray) -> np.ndarray:
        """The predictor features (`hwnas.predictors.subnet_features`), straight from genes."""
        keep, widths = self.keep_mask(x), self.width_values(x)
        frac = np.where(keep, widths / self.space.intermediate_size, 0.0)
        parts = [keep.astype(float), frac, keep.sum(1, keepdims=True) / self.n, frac.sum(1, keepdims=True) / self.n]
        if self.space.compressed:
            amount = np.asarray([compression_amount(f) for f in self.formats])
            attn, mlp, embed, head = self.format_indices(x)
            parts += [np.where(keep, amount[attn], 0.0), np.where(keep, amount[mlp], 0.0),
                      amount[embed][:, None], amount[head][:, None]]
        return np.concatenate(parts, axis=1)
