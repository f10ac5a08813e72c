"""The figure of ``ponder demo``: accuracy against tokens per strategy (plus the shared-budget
search's anytime curve), and, when the model directory holds a ``ponder learn`` record, the
learning curve next to it."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence


def plot(rows: Sequence[Dict], path: str, shared: Optional[Dict] = None, learning: Optional[Dict] = None) -> bool:
    """Write the figure to ``path``; False without matplotlib.

    ``rows``: the demo's strategy rows (``strategy``, ``solved``, ``tokens_per_problem``).
    ``shared``: a shared-budget run (``trajectory`` of (tokens, expansions, solved) batch totals
    and ``num_problems``), drawn as its anytime curve. ``learning``: a learning record
    (``rounds`` with ``greedy_solved`` / ``mcts_solved``), drawn in a second panel.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator, NullFormatter, ScalarFormatter
    except ImportError:
        return False
    panels = 2 if learning else 1
    fig, axes = plt.subplots(1, panels, figsize=(6.4 * panels, 4.2), squeeze=False)
    ax = axes[0][0]
    for name in dict.fromkeys(r["strategy"] for r in rows):
        pts = sorted((r["tokens_per_problem"], 100 * r["solved"]) for r in rows if r["strategy"] == name)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    if shared and shared["trajectory"]:
        n = shared["num_problems"]
        xs = [t / n for t, _, _ in shared["trajectory"]]
        ys = [100 * s / n for _, _, s in shared["trajectory"]]
        ax.plot(xs, ys, color="black", linestyle="--", label="mcts, shared budget")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())  # 100, 1000 rather than 10^2, 10^3
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on a short log axis
    ax.set_xlabel("tokens generated per problem")
    ax.set_ylabel("solved (%)")
    ax.set_title("Countdown: thinking longer with a value model")
    ax.grid(alpha=0.3)
    ax.legend()
    if learning:
        _learning_panel(axes[0][1], learning, MaxNLocator)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _learning_panel(ax, learning: Dict, locator) -> None:
    rounds: List[Dict] = learning["rounds"]
    xs = [r["round"] for r in rounds]
    cfg = learning.get("config", {})
    ax.plot(xs, [100 * r["mcts_solved"] for r in rounds], marker="o",
            label=f"MCTS, {cfg.get('eval_expansions', '?')} expansions")
    ax.plot(xs, [100 * r["greedy_solved"] for r in rounds], marker="o", label="greedy")
    best = learning.get("best_round")
    if best is not None:
        ax.axvline(best, color="grey", linestyle=":", label=f"kept (round {best})")
    ax.xaxis.set_major_locator(locator(integer=True))
    ax.set_xlabel("learning round (0: before learning)")
    ax.set_ylabel("validation problems solved (%)")
    ax.set_title("Learning from search")
    ax.grid(alpha=0.3)
    ax.legend()
