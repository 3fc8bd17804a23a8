"""The Train tab: a reward from the session's labels (``censor.rewards.training``), with the
held-out check (``censor.rewards.validation``) and its interval recorded in its info; the readout
(``readouts.training_summary``) says when it cannot be trusted."""

from __future__ import annotations

from censor.core.errors import CensorError
from censor.core.progress import Progress, part, reporter
from censor.rewards.architectures import scores_positions
from censor.rewards.training import feature_bank, train_reward, training_cost
from censor.rewards.validation import held_out_check, held_out_cost
from censor.sampling.repaint import strict_by_default
from censor.studio.common import MAX_TRAIN_LABELS, check_range, reported
from censor.studio.readouts import held_out_interval
from censor.studio.resources import Resources


@reported("training")
def train(res: Resources, sid: str, method: str, kind: str, members: int, iterations: int, alpha: float,
          progress: Progress | None = None) -> dict:
    """Train and save the session's reward; ``imitation`` resumes the previous one when it matches
    (same kind and member count); the session's boxes train a kind that scores positions (local-patch).
    Returns the reward's info (``boxes`` used, ``boxes_drawn`` on its labels), with ``held_out_accuracy`` (None: too few
    labels), ``held_out_counts`` (per-class hits and counts), ``held_out_ci`` (its 95% interval) and
    ``strict_default`` (the Censor tab ticks strict for a reward of a local mark: sampling.repaint).
    ``progress(fraction, desc=...)`` hears all through, e.g. "final reward (2 of 2) · member 2 of 4 ·
    iteration 120 of 400"."""
    members = int(check_range("members", members)) if method != "single" else 1
    iterations = int(check_range("iterations", iterations))
    alpha = float(check_range("alpha", alpha))
    report = reporter(progress)
    if report is not None:  # at once: a Cancel lands even before the first loop starts
        report(0.0, desc="reading the labels")
    images, labels = res.store.training_data(sid)
    boxes = res.store.training_boxes(sid)  # region feedback: read by a reward that scores positions
    drawn = sum(b is not None for b in boxes)
    boxes = boxes if drawn and scores_positions(kind) else None
    if len(labels) > MAX_TRAIN_LABELS:
        raise CensorError(f"{len(labels)} labelled images; a reward trains on at most {MAX_TRAIN_LABELS} "
                          "(mark the oldest ones unsure to leave them out)")
    resume = None
    if method == "imitation" and res.has_reward(sid):
        previous = res.session_reward(sid)
        if previous.kind == kind and len(previous.members) == members:
            resume = previous
    # one bar for the encoding (once, shared) and both trainings, each part sized by its cost; the
    # held-out one first (nothing is saved until the end, so a Cancel anywhere leaves the previous
    # reward in place)
    final = training_cost(len(labels), members, iterations, kind, split=True)
    encoding = final.pop("encoding")
    check = held_out_cost(labels, kind, iterations, encoded=True)
    total = encoding + check + sum(final.values())
    enc, share = encoding / total, check / total
    bank = feature_bank(images, kind, res.model, progress=part(progress, 0.0, enc, "encoding the labels"))
    held_out = held_out_check(images, labels, kind=kind, diffusion=res.model, iterations=iterations, alpha=alpha,
                              progress=part(progress, enc, share, "held-out check (1 of 2)"), bank=bank, boxes=boxes)
    reward = train_reward(images, labels, kind=kind, diffusion=res.model, members=members, alpha=alpha,
                          iterations=iterations, resume=resume, bank=bank, boxes=boxes,
                          progress=part(progress, enc + share, 1.0 - enc - share,
                                        "final reward (2 of 2)" if check else None))
    accuracy = held_out.pop("accuracy") if held_out else None
    ci = held_out_interval(held_out) if held_out else None
    reward.info.update(held_out_accuracy=accuracy, held_out_counts=held_out, held_out_ci=list(ci) if ci else None,
                       boxes_drawn=drawn)
    reward.save(res.reward_dir(sid))
    return dict(reward.info, strict_default=strict_by_default(kind))
