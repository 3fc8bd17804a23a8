"""The Train tab: a reward from the session's labels (``censor.rewards.training``), with the
held-out check (``censor.rewards.validation``) recorded in its info."""

from __future__ import annotations

from typing import Callable

from censor.core.errors import CensorError
from censor.rewards.training import train_reward
from censor.rewards.validation import held_out_accuracy
from censor.studio.common import MAX_TRAIN_LABELS, check_range, reported
from censor.studio.resources import Resources


@reported("training")
def train(res: Resources, sid: str, method: str, kind: str, members: int, iterations: int, alpha: float,
          progress: Callable[[float], None] | None = None) -> dict:
    """Train and save the session's reward; ``imitation`` resumes the previous one when it matches
    (same kind and member count). Returns the reward's info."""
    members = int(check_range("members", members)) if method != "single" else 1
    iterations = int(check_range("iterations", iterations))
    alpha = float(check_range("alpha", alpha))
    images, labels = res.store.training_data(sid)
    if len(labels) > MAX_TRAIN_LABELS:
        raise CensorError(f"{len(labels)} labelled images; a reward trains on at most {MAX_TRAIN_LABELS} "
                          "(mark the oldest ones unsure to leave them out)")
    resume = None
    if method == "imitation" and res.has_reward(sid):
        previous = res.session_reward(sid)
        if previous.kind == kind and len(previous.members) == members:
            resume = previous
    held_out = held_out_accuracy(images, labels, kind=kind, diffusion=res.model, iterations=iterations, alpha=alpha)
    reward = train_reward(images, labels, kind=kind, diffusion=res.model, members=members, alpha=alpha,
                          iterations=iterations, resume=resume, progress=progress)
    reward.info["held_out_accuracy"] = held_out
    reward.save(res.reward_dir(sid))
    return dict(reward.info)
