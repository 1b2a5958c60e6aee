"""A 2-D map of a run's item embeddings (t-SNE, scikit-learn), coloured by first genre, as PNG.

Works for any run whose model has item embeddings (item2vec, GMF, NeuMF, MLP, BPR, ...).
Items without a vector (zero or non-finite rows, e.g. item2vec items below ``min_count``)
are left out and counted. Genres come from the run's ``items.json``; an item's colour is
its first listed genre, and the most popular items are labelled with their titles.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ncf.checkpoint import load_item_info, load_model, load_train_matrix
from ncf.errors import ConfigError

# distinct colours (tab10 without its grey, then Dark2); rarer genres share a grey "other"
PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
    "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#000000",
]


def item_points(directory: Path, max_items: int = 0, seed: int = 0, perplexity: float = 30.0) -> dict:
    """t-SNE coordinates of the run's items: {"xy": [n, 2], "items": [n] indexes, "skipped": int}.

    ``max_items`` > 0 keeps only the most popular items (by training interactions).
    """
    from sklearn.manifold import TSNE

    directory = Path(directory)
    model = load_model(directory)
    emb = model.item_embeddings()
    if emb is None:
        raise ConfigError(f"{directory}: model {model.name!r} has no item embeddings to draw")
    emb = emb.float().cpu().numpy()
    norms = np.linalg.norm(emb, axis=1)
    ok = np.isfinite(norms) & (norms > 0)
    popularity = np.bincount(load_train_matrix(directory).indices, minlength=model.n_items)
    items = np.flatnonzero(ok)
    if max_items and len(items) > max_items:
        items = items[np.argsort(-popularity[items], kind="stable")[:max_items]]
        items.sort()
    if len(items) < 5:
        raise ConfigError(f"{directory}: only {len(items)} items have a vector; a map needs at least 5")
    x = emb[items] / norms[items, None]  # cosine geometry
    tsne = TSNE(n_components=2, perplexity=min(perplexity, (len(items) - 1) / 3), init="pca",
                random_state=seed, metric="euclidean")
    xy = tsne.fit_transform(x)
    return {"xy": xy, "items": items, "skipped": int((~ok).sum()), "popularity": popularity[items],
            "kl": float(tsne.kl_divergence_), "model": model.name}


def first_genres(info: dict | None, items: np.ndarray) -> list[str]:
    if not info or not info.get("genres"):
        return ["(no genres)"] * len(items)
    genres = info["genres"]
    return [(genres[i][0] if genres[i] else "(none)") for i in items]


def plot_items(directory: Path, out: Path | None = None, max_items: int = 0, seed: int = 0,
               labels: int = 12, overwrite: bool = False) -> dict:
    """Draw the map to ``out`` (default DIR/items.png, replaced freely; another existing file
    only with ``overwrite``: :func:`ncf.outputs.prepare_output_file`); returns what was drawn."""
    import matplotlib

    from ncf.outputs import prepare_output_file, save_figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    out = prepare_output_file(Path(out) if out is not None else directory / "items.png", overwrite,
                              run_name="items.png")
    pts = item_points(directory, max_items=max_items, seed=seed)
    info = load_item_info(directory)
    genre = first_genres(info, pts["items"])
    counts = Counter(genre)
    named = [g for g, _ in counts.most_common(len(PALETTE))]
    colour = dict(zip(named, PALETTE, strict=False))
    fig, ax = plt.subplots(figsize=(11, 9))
    xy = pts["xy"]
    size = 6 + 40 * np.sqrt(pts["popularity"] / max(pts["popularity"].max(), 1))
    groups = [*named, "other"] if len(counts) > len(named) else named
    for g in groups:
        sel = np.array([(x == g) if g != "other" else (x not in colour) for x in genre])
        if sel.any():
            ax.scatter(xy[sel, 0], xy[sel, 1], s=size[sel], alpha=0.6, linewidths=0,
                       color=colour.get(g, (0.6, 0.6, 0.6)), label=f"{g} ({int(sel.sum())})")
    titles = (info or {}).get("titles")
    if titles and labels:  # the most popular titles, skipping any that would overlap one already shown
        span = np.ptp(xy, axis=0).max()
        shown: list[np.ndarray] = []
        for j in np.argsort(-pts["popularity"], kind="stable"):
            if len(shown) == labels:
                break
            if any(abs(xy[j, 0] - p[0]) < 0.2 * span and abs(xy[j, 1] - p[1]) < 0.03 * span for p in shown):
                continue
            shown.append(xy[j])
            ax.annotate(titles[pts["items"][j]] or "", xy[j], fontsize=7, alpha=0.85,
                        xytext=(3, 3), textcoords="offset points")
    ax.legend(title="first genre", fontsize=7, title_fontsize=8, markerscale=1.5, loc="center left",
              bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{pts['model']} item embeddings of {directory.name}: t-SNE of {len(xy)} items "
                 f"(size: popularity; {pts['skipped']} without a vector left out)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out, dpi=110)
    plt.close(fig)
    return {"png": str(out), "items": len(xy), "skipped": pts["skipped"], "genres": dict(counts),
            "kl_divergence": pts["kl"]}
