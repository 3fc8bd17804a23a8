"""The Train and Censored gallery tabs' readouts as Markdown: every figure with its count and interval,
and a plain warning wherever the figure cannot be trusted (too few labels, a held-out accuracy at
chance, a baseline too poor in the feature to show a drop). Pure functions of the dicts that
``training.train`` and ``Galleries.censored_gallery`` return, so app.py only shows what they say."""

from __future__ import annotations

from censor.core.settings import DEFAULT_GUIDANCE, MIN_BASELINE_MALIGN
from censor.eval.drift import DRIFT_MESSAGE
from censor.eval.judge import KNN_K, legend
from censor.eval.metrics import wilson_interval
from censor.sampling.cost import cost_readout
from censor.sampling.kinds import kind_for
from censor.sampling.rejection import DEFAULT_CAP_FACTOR
from censor.sampling.repaint import REPAINT_ATTEMPTS, REPAINT_START, REPAINT_STEPS, resolve_strict_mode
from censor.studio.common import MIN_TRUSTED_CLASS, MIN_TRUSTED_LABELS, inert

CHANCE = 0.5  # balanced accuracy of a reward that guesses (or calls every image one class)
ORACLE_LEGEND = legend("tv", "recall", "confident")


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _warn(text: str) -> str:
    return "⚠ " + _sentence(text)


def _pct(low: float, high: float) -> str:
    """An interval of proportions as percent, "1–9%"."""
    return f"{100 * low:.0f}–{100 * high:.0f}%"


def _images(k: int, what: str) -> str:
    return f"{'no' if k == 0 else k} {what} image{'' if k == 1 else 's'}"


# ---- the Train tab -------------------------------------------------------------------------
def held_out_interval(check: dict) -> tuple[float, float] | None:
    """A 95% interval for a held-out balanced accuracy (``rewards.validation.held_out_check``): the
    mean of the two classes' Wilson bounds. That is wider than the interval of the mean itself, so a
    reward is called better than chance only when it clearly is; a class absent from the split adds
    nothing (the accuracy is then that of the other class)."""
    bounds = [wilson_interval(check[f"{c}_hits"], check[f"{c}_n"]) for c in ("malign", "benign") if check[f"{c}_n"]]
    if not bounds:
        return None
    return sum(b[0] for b in bounds) / len(bounds), sum(b[1] for b in bounds) / len(bounds)


def training_warnings(info: dict) -> list[str]:
    """Plain-English reasons not to trust a reward yet, from its info (``training.train``): too few
    judged labels, too few of either class, a held-out balanced accuracy whose interval reaches chance."""
    labels, malign = int(info["labels"]), int(info["malign_labels"])
    benign = labels - malign
    out = []
    if labels < MIN_TRUSTED_LABELS:
        out.append(f"only {labels} judged labels: a reward from fewer than {MIN_TRUSTED_LABELS} is mostly noise; "
                   "label more images")
    if malign < MIN_TRUSTED_CLASS:
        out.append(f"only {malign} malign label{'' if malign == 1 else 's'}: too few examples of what to censor "
                   f"(fewer than {MIN_TRUSTED_CLASS}); mark more malign images (Show most informative first "
                   "brings them forward)")
    if benign < MIN_TRUSTED_CLASS:
        out.append(f"only {benign} benign label{'' if benign == 1 else 's'}: too few examples of what to keep "
                   f"(fewer than {MIN_TRUSTED_CLASS}); label more benign images")
    acc, ci = info.get("held_out_accuracy"), info.get("held_out_ci")
    if acc is not None and ci is not None and ci[0] <= CHANCE:
        out.append(f"held-out balanced accuracy {100 * acc:.0f}% [95% CI {_pct(*ci)}] is no better than chance "
                   f"({100 * CHANCE:.0f}%): label more images, above all malign ones, before trusting the reward")
    return out


def training_summary(info: dict) -> str:
    """The Train tab's readout: what was trained, the held-out check with its interval, then the
    warnings (``training_warnings``) as ⚠ lines; Markdown paragraphs."""
    line = (f"Trained a {info['kind']} reward ({info['members']} member(s), {info['labels']} labels: "
            f"{info['malign_labels']} malign) in {info['train_seconds']:.1f} s.")
    acc, ci, check = info.get("held_out_accuracy"), info.get("held_out_ci"), info.get("held_out_counts")
    if acc is None:
        line += " (Too few labels for a held-out check.)"
    else:
        shown = f" [95% CI {_pct(*ci)}]" if ci is not None else ""
        on = f", on {check['malign_n'] + check['benign_n']} held-out labels" if check else ""
        line += f" Held-out balanced accuracy {100 * acc:.0f}%{shown} (mean of the malign and benign hit rates{on})."
    used, drawn = info.get("boxes") or 0, info.get("boxes_drawn") or 0
    if used:
        line += f" Region feedback: {used} box{'es' if used > 1 else ''} taught it where the malign part is"
        pasted = info.get("pasted") or 0
        line += f", and {pasted} more malign examples pasted from them onto benign labels." if pasted else "."
    elif drawn:
        line += (f" {drawn} box{'es' if drawn > 1 else ''} drawn on the labels; only a reward that scores positions "
                 "(local-patch) reads them.")
    return "\n\n".join([line] + [_warn(w) for w in training_warnings(info)])


# ---- the Censored gallery tab --------------------------------------------------------------
def drift_lines(drift: dict | None) -> list[str]:
    """The oracle-free fidelity figure and, when it is beyond chance, the plain warning."""
    if not drift:
        return []
    c, b = drift["censored"], drift["baseline"]
    out = [f"Fidelity (no oracle): drift of the censored gallery from the baseline reweighted by the reward "
           f"{c['tv']:.2f} (baseline itself {b['tv']:.2f}; chance alone reaches {c['chance']:.2f} with "
           f"{c['n']} images)."]
    if c["drifted"]:
        out.append(_warn(DRIFT_MESSAGE))
    return out


def _rate(side: dict) -> str:
    lo, hi = side["ci_pct"]
    return f"{side['malign_pct']:.0f}% [{lo:.0f}–{hi:.0f}%] ({side['malign']} of {side['n']})"


def oracle_lines(oracle: dict | None) -> list[str]:
    """The oracle block (``Galleries.censored_gallery``'s ``oracle``): both malign shares with their
    counts and intervals, tv (with its floor), recall and confident share, the legend, and warnings
    where the comparison cannot show a drop."""
    if not oracle:
        return []
    name, b, c = inert(oracle["feature"]), oracle["baseline"], oracle["censored"]
    floor = oracle.get("tv_floor")
    tv = f"tv {c['tv']:.2f} to the baseline's benign classes" + (
        f" (two halves of the baseline differ by {floor:.2f} by chance alone)" if floor is not None
        else " (no floor measured)")
    recall = (f"recall {c['recall_ratio']:.2f}× the baseline's" if c.get("recall_ratio") is not None
              else f"recall not measured (it needs more than {KNN_K} images a side)")
    out = [f"Oracle ({name}): baseline {_rate(b)} → censored {_rate(c)}; {tv}; {recall}; "
           f"oracle-confident {100 * c['confident']:.0f}%.", ORACLE_LEGEND]
    if b["malign"] < MIN_BASELINE_MALIGN:
        out.append(_warn(f"the baseline holds only {_images(b['malign'], name)} in {b['n']}: a drop to 0 cannot be "
                         "told from chance; render more images"))
    elif c["ci_pct"][0] > b["ci_pct"][1]:
        out.append(_warn(f"the censored gallery holds more {name} images than the baseline, beyond chance"))
    elif c["ci_pct"][1] >= b["ci_pct"][0]:
        out.append(_warn(f"the two intervals overlap: this gallery does not show that censoring lowered the {name} "
                         "share; render more images"))
    if floor is not None and c["tv"] > floor:
        out.append(_warn("tv is beyond what chance alone gives: censoring changed the mix of the benign images too"))
    return out


def _reward_line(result: dict) -> list[str]:
    est = result.get("reward_malign")
    if not est:
        return []
    sides = []
    for name in ("baseline", "censored"):
        n = len(result[name])
        sides.append(f"{name} {100 * est[name]:.0f}% ({round(est[name] * n)} of {n})")
    return [f"Reward's estimate of malign images: {sides[0]} → {sides[1]}."]


def gallery_readout(result: dict, source: str, tuned: bool, feature: str | None = None) -> str:
    """Every line of the Censored gallery tab's readout, as Markdown paragraphs: where the censored side
    came from, the guidance note, the automatic strength, the drift figure, strict mode, the reward's
    estimate, the oracle block (``oracle_lines``; ``feature`` is only a fallback name for it) and the
    fallbacks warning. ``source`` (an adapter's name) is shown inert."""
    lines = [f"Censored side drawn from the {inert(source)}" + (" adapter." if tuned else ".")]
    if result.get("guidance_note"):
        lines.append(f"Guidance: {result['guidance_note']}.")
    auto = result["settings"].get("auto")
    if auto:
        lines.append(f"Automatic strength: ω = {auto['weight']:g} ({auto['reason']}).")
    lines.extend(drift_lines(result.get("drift")))
    if result.get("strict"):
        s = result["strict"]
        share = s.get("pool_share")  # a cross-fitted line carried to this reward: the share of the pool it doubts
        how = f" (it doubts {100 * share:.0f}% of the labelling pool, as the held-out folds did)" if share is not None else ""
        lines.append(f"Strict: {s['summary']}, {s['source']} threshold{how}.")
    lines.extend(_reward_line(result))
    oracle = result.get("oracle")
    if oracle and "feature" not in oracle and feature:
        oracle = dict(oracle, feature=feature)
    lines.extend(oracle_lines(oracle))
    if result.get("fallbacks"):
        lines.append(f"⚠ {result['fallbacks']} image-steps fell back to unguided (the weight is too large).")
    return "\n\n".join(lines)


def cost_text(reward, guidance: str, backward: int, recurrence: int, steps: int, strict: bool,
              strict_mode: str = "auto") -> str:
    """The Censor tab's line before the click: the default guidance with the tab's knobs, as the render
    would run it (a clean-image reward is guided universally), priced against unguided sampling."""
    kind = kind_for(reward, guidance, switch=True)[0] if reward is not None else guidance
    settings = DEFAULT_GUIDANCE.with_(kind=kind, backward_steps=int(backward), recurrence=int(recurrence))
    line = "Cost of the censored side: " + cost_readout(settings, int(steps),
                                                        shares_unet=getattr(reward, "reads_unet", None) is not None)
    mode = None
    if strict:  # without a reward yet, "auto" is priced as rejection
        mode = "reject" if reward is None and strict_mode == "auto" else resolve_strict_mode(strict_mode, reward)
    if mode == "repaint":
        line += (f"; strict redraws each image the reward still doubts inside the region it points to, from "
                 f"{REPAINT_START:g} T on its own {REPAINT_STEPS}-step respacing ({REPAINT_ATTEMPTS} tries at most; "
                 f"the gallery keeps its seeds)")
    elif mode == "reject":
        line += f"; strict draws more images until the gallery is full (at most {DEFAULT_CAP_FACTOR}× as many)"
    return line + ". The baseline is drawn once per seeds and steps, then reused."
