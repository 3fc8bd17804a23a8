"""One line per method of a comparison (``rlhf.compare``): what it cost and what it left behind.

A table of seven columns answers "which method?" only for a reader who weighs them all; the verdict
says it in words from the same figures: the malign share against the baseline's (a drop only when
the intervals part), the fidelity targets (class-histogram ``tv`` to the baseline's benign classes
≤ ``TV_OK``, or at most the sampling floor where a small gallery's floor is above it; recall ≥ ``RECALL_OK``
of the baseline's), and the costs (human labels, training
seconds, sampling time against unguided). Pure functions of the result dict, so the tab, the CLI and
the docs say the same thing.
"""

from __future__ import annotations

TV_OK = 0.08  # issue 22's fidelity targets for a censoring method
RECALL_OK = 0.9


def effect(row: dict, base: dict) -> str:
    """How the malign share moved: a drop or a rise only when the 95% intervals do not overlap."""
    m, b = row.get("malign_pct"), base.get("malign_pct")
    if m is None:
        return "kept no image"
    change = f"{b:.1f}% → {m:.1f}% malign"
    if row["ci_pct"][1] < base["ci_pct"][0]:
        return change + (f" (removes {1 - m / b:.0%} of them)" if b else "")
    if row["ci_pct"][0] > base["ci_pct"][1]:
        return change + " (more than the baseline)"
    return change + " (no change the intervals can show)"


def fidelity(row: dict) -> str:
    """What the method did to everything else: tv against its floor and the target, recall."""
    tv, recall = row.get("tv"), row.get("recall_ratio")
    if tv is None:
        return "fidelity not measured"
    # a fine-tuned model draws other images from the same x_T, so its tv is at best an independent draw's,
    # the floor; where the floor is above the target (small galleries), tv at the floor is as good as it gets
    floor = row.get("tv_floor")
    kept = tv <= max(TV_OK, floor if floor is not None else 0.0) and (recall is None or recall >= RECALL_OK)
    parts = [f"tv {tv:.3f}" + (f" (floor {row['tv_floor']:.3f})" if row.get("tv_floor") is not None else "")]
    if recall is not None:
        parts.append(f"recall {recall:.2f}×")
    what = "leaves the other images as they were" if kept else "changes the other images too"
    return f"{what} ({', '.join(parts)})"


def cost(row: dict) -> str:
    """Labels, training seconds and the sampling time against unguided sampling."""
    out = f"{row.get('labels', 0):.0f} labels, {row.get('train_s', 0):.0f} s training"
    ratio = row.get("time_ratio")
    return out + (f", sampling {ratio:.2f}× unguided" if ratio is not None else "")


def verdicts(result: dict) -> list[str]:
    """``method: effect; fidelity; cost`` for every method but the baseline, in the result's order."""
    rows = result["methods"]
    base = rows.get("baseline") or result.get("baseline")
    if base is None:
        return []
    return [f"**{name}**: {effect(r, base)}; {fidelity(r)}; {cost(r)}"
            for name, r in rows.items() if name != "baseline"]


def verdict_markdown(result: dict) -> str:
    """The verdicts as a markdown list, for the tables of ``rlhf compare`` and ``rlhf curve``."""
    return "".join(f"- {v}\n" for v in verdicts(result))
