"""The active-labelling benchmark's settings as data (``bench.active`` runs them): which features,
strategies, budgets and reward, how a budget's gallery is censored, and what a reusable cell must match."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from censor.bench.active_report import STRATEGIES
from censor.core.errors import CensorError
from censor.core.settings import ALPHA, DEFAULT_GUIDANCE, ITERATIONS, MEMBERS
from censor.eval.features import feature_spec
from censor.labels.labeller import can_box
from censor.labels.ranking import ActiveWeights
from censor.rewards.architectures import REWARD_KINDS, TIME_DEPENDENT, scores_positions
from censor.rewards.local import PASTE
from censor.sampling.thresholds import DEFAULT_FOLDS, THRESHOLD_SCALE, THRESHOLD_SCALES

CENSOR_ROUTES = ("guide", "repaint")


@dataclass
class ActiveBenchConfig:
    features: tuple[str, ...] = ("bags", "watermark", "not-footwear")
    strategies: tuple[str, ...] = STRATEGIES
    seeds: int = 3
    budgets: tuple[int, ...] = (20, 40, 60, 100)
    batch: int = 20
    n: int = 300
    steps: int = 25
    members: int = MEMBERS
    weight: float = DEFAULT_GUIDANCE.weight
    alpha: float = ALPHA
    iterations: int = ITERATIONS
    candidates: int = 60  # imitation: censored gallery per round, of which `batch` are labelled
    reward: str = "ddpm-encoder"  # the kind trained at every budget and ranking with (local-patch: small marks)
    censor: str = "guide"  # how a budget's gallery is censored: guided sampling, or the unguided one repainted
    folds: int = DEFAULT_FOLDS  # repaint: folds of the cross-fitted threshold (thresholds.heldout_threshold)
    threshold_scale: str = THRESHOLD_SCALE  # repaint: the threshold's scale (thresholds.THRESHOLD_SCALES)
    paste: int = PASTE  # boxes: pasted copies of each boxed mark (rewards.local.pasted_marks)
    boxes: bool = False  # region feedback: the labeller boxes the stamp on each malign image it labels
    weights: dict = field(default_factory=lambda: asdict(ActiveWeights()))

    def __post_init__(self):
        for f in self.features:
            feature_spec(f)
        if not set(self.strategies) <= set(STRATEGIES):
            raise CensorError(f"strategies are {', '.join(STRATEGIES)}")
        self.features, self.strategies, self.budgets = tuple(self.features), tuple(self.strategies), tuple(sorted(self.budgets))
        if self.paste < 0:
            raise CensorError("paste (copies of each boxed mark) must be >= 0")
        if min(self.seeds, self.batch, self.n, self.steps, self.members, self.iterations, *self.budgets) < 1:
            raise CensorError("seeds, batch, n, steps, members, iterations and budgets must be positive")
        if self.boxes and not (scores_positions(self.reward) and all(can_box(f) for f in self.features)):
            raise CensorError("boxes need the watermark feature and a reward that scores positions (local-patch)")
        if self.threshold_scale not in THRESHOLD_SCALES:
            raise CensorError(f"threshold_scale is one of {', '.join(THRESHOLD_SCALES)}")
        if self.censor not in CENSOR_ROUTES:
            raise CensorError(f"censor is one of {', '.join(CENSOR_ROUTES)}")
        if self.reward not in REWARD_KINDS or not TIME_DEPENDENT[self.reward]:
            raise CensorError(f"the ranking's reward guides too: use a time-dependent kind, not {self.reward!r}")
        if any(b % self.batch for b in self.budgets):
            raise CensorError(f"every budget must be a multiple of the batch ({self.batch})")
        if self.candidates < self.batch and any(method_for(f) == "imitation" for f in self.features):
            raise CensorError("candidates (the censored gallery of an imitation round) must be at least the batch")

    def cell_settings(self, feature: str) -> dict:
        """What a finished cell must have been run with to be reused."""
        return dict(feature=feature, method=method_for(feature), budgets=list(self.budgets), batch=self.batch, n=self.n,
                    steps=self.steps, members=self.members, weight=self.weight, alpha=self.alpha,
                    iterations=self.iterations, candidates=self.candidates,
                    # cells run before the reward kind was a setting (all ddpm-encoder) stay reusable
                    **({} if self.reward == "ddpm-encoder" else dict(reward=self.reward)),
                    # cells run before the likely-malign term existed (weight 0) stay reusable
                    weights={k: v for k, v in self.weights.items() if not (k == "malign" and v == 0)},
                    **({} if self.censor == "guide" else dict(censor=self.censor, folds=self.folds)),
                    # repaint cells run before the threshold was carried to the final reward: the folds' scale
                    **(dict(threshold_scale=self.threshold_scale) if self.censor != "guide"
                       and self.threshold_scale != "folds" else {}),
                    **(dict(boxes=True) if self.boxes else {}),
                    **(dict(paste=self.paste) if self.boxes and self.paste else {}))  # boxed cells from before: none


def method_for(feature: str) -> str:
    return "imitation" if feature_spec(feature).get("dominance") == "malign" else "ensemble"
