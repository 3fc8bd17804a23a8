"""Rejection vs guidance vs both, on the same reward, in one run (issue 9).

``python -m censor bench-reject --feature bags --budget 100 --method ensemble --weight 4 --n 1000 --steps 25 --seeds 3``

Per labelling seed the simulated labeller labels, one reward is trained (bench.collect_labels_and_train,
so imitation works as in ``bench``), and its threshold is cross-fitted on the same labels
(rejection.heldout_threshold; or ``--threshold P``). Then, for n / seeds gallery images:

- ``reject``: unguided draws from the gallery seeds on, kept when the reward passes them;
- ``guide``: guided sampling of the gallery seeds (what ``bench`` measures);
- ``guide+reject``: guided draws, the same filter (its first batch *is* the ``guide`` gallery).

Unguided draws do not depend on the reward, so they are sampled once per model and steps, kept in
the cache folder and shared by seeds and features; every draw is charged the sampling time it took
when it was made (for the cached baseline prefix: this run's measured unguided time per image), so
"seconds per accepted image" counts sampling and scoring of every drawn image. The oracle only judges,
through the benchmarks' shared ``evaluate.GalleryJudge``: malign % (Wilson), tv of the kept images'
class histogram against the baseline's benign one (its floor from a second unguided gallery, ``FLOOR_SEED``),
recall against the real benign test images and the oracle-confident fraction.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from censor.bench.censoring import (
    FLOOR_SEED,
    GALLERY_SEED,
    BenchConfig,
    cached_baseline,
    collect_labels_and_train,
    machine,
    make_guidance,
)
from censor.core.data import to_uint8
from censor.core.errors import CensorError
from censor.eval.features import feature_spec, is_malign
from censor.eval.judge import GalleryJudge
from censor.eval.metrics import class_histogram, pooled_rate
from censor.gallery.grid import grid
from censor.rewards.ensemble import model_fingerprint
from censor.sampling.loop import sample, seeds_for
from censor.sampling.rejection import (
    DEFAULT_CAP_FACTOR,
    DEFAULT_FOLDS,
    DEFAULT_RECALL,
    heldout_threshold,
    reject_sample,
)

MODES = ("reject", "guide", "guide+reject")


class DrawStore:
    """Images for a growing prefix of ``seeds_for(·, GALLERY_SEED)``, each with the seconds it cost."""

    def __init__(self, model, steps: int, guidance=None, images=None, cost=None):
        self.model, self.steps, self.guidance = model, steps, guidance
        self.images = np.zeros((0, *model.image_shape[1:]), dtype=np.uint8) if images is None else images
        self.cost = np.zeros(len(self.images)) if cost is None else np.asarray(cost, dtype=float)
        self.charged_s = 0.0

    def __call__(self, seeds) -> np.ndarray:
        start = int(seeds[0]) - GALLERY_SEED * 100_003
        end = start + len(seeds)
        if end > len(self.images):
            new = seeds_for(end, GALLERY_SEED)[len(self.images):]
            t0 = time.perf_counter()
            imgs = to_uint8(sample(self.model, new, steps=self.steps, guidance=self.guidance))
            dt = time.perf_counter() - t0
            self.images = np.concatenate([self.images, imgs])
            self.cost = np.concatenate([self.cost, np.full(len(new), dt / len(new))])
        self.charged_s += float(self.cost[start:end].sum())
        return self.images[start:end]

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"images": torch.from_numpy(np.ascontiguousarray(self.images)),
                   "cost": torch.from_numpy(self.cost)}, str(path))


def _unguided_store(model, steps, baseline_all, unguided_rate, cache_dir) -> tuple[DrawStore, Path | None]:
    from safetensors.torch import load_file

    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"reject_draws_{model_fingerprint(model.unet)}_s{steps}.safetensors"
        if path.is_file():
            t = load_file(str(path))
            if len(t["images"]) >= len(baseline_all):
                return DrawStore(model, steps, None, t["images"].numpy(), t["cost"].numpy()), path
    return DrawStore(model, steps, None, baseline_all.copy(), np.full(len(baseline_all), unguided_rate)), path


KNN_K = 3  # k of the shared k-NN recall (evaluate.knn_precision_recall): it needs more than k images


def _judge(judge: GalleryJudge, judge_all: GalleryJudge, images):
    """One mode's kept images through the shared judge (recall on the per-seed baseline, tv against the
    whole baseline, as in ``bench``). Adapter for what a rejection mode can keep and a plain gallery
    cannot: nothing at all, or too few images for k-NN recall (then only counts, tv and confidence)."""
    if len(images) == 0:
        return dict(malign=0, n=0, recall=None, recall_ratio=None, confident=None, tv=None, class_shares=None), None
    j = judge.oracle.judge(images)
    if len(images) > KNN_K:
        row = judge(images, j)
    else:
        bad = is_malign(j, judge.feature)
        row = dict(pooled_rate(int(bad.sum()), len(bad)), precision=None, recall=None, recall_ratio=None,
                   class_recall_ratio={}, confident=float(j.confident.mean()),
                   class_shares=[round(float(x), 4) for x in class_histogram(j)],
                   watermark_share=float(j.watermarked.mean()))
    row["tv"] = judge_all.tv(j)
    row["class_recall_ratio"] = {str(c): v for c, v in row["class_recall_ratio"].items()}  # as JSON keeps them
    return row, j


def run_reject_bench(cfg: BenchConfig, model, oracle, pool, reference: dict, out_dir=None, cache_dir=None,
                     threshold: float | None = None, recall: float = DEFAULT_RECALL, folds: int = DEFAULT_FOLDS,
                     cap_factor: float = DEFAULT_CAP_FACTOR, log=print) -> dict:
    per_seed = -(-cfg.n // cfg.seeds)
    gallery_seeds = seeds_for(per_seed, GALLERY_SEED)
    baseline_all = cached_baseline(model, cfg.n, cfg.steps, cache_dir)
    second = cached_baseline(model, cfg.n, cfg.steps, cache_dir, seed=FLOOR_SEED)  # the tv floor
    baseline = baseline_all[:per_seed]
    timing_n = min(per_seed, 100)
    t0 = time.perf_counter()
    sample(model, gallery_seeds[:timing_n], steps=cfg.steps)
    unguided_rate = (time.perf_counter() - t0) / timing_n
    unguided, store_path = _unguided_store(model, cfg.steps, baseline_all, unguided_rate, cache_dir)
    judge_all = GalleryJudge(oracle, cfg.feature, reference, baseline_all, second, n_real=per_seed)
    judge = GalleryJudge(oracle, cfg.feature, reference, baseline, n_real=per_seed)  # recall on the same n
    jb = judge.base
    base = judge_all.baseline_row()
    base.update(precision=judge.base_precision, recall=judge.base_recall, s_per_image=unguided_rate)
    log(f"baseline {judge_all.base_rate}, recall {judge.base_recall:.3f} on {per_seed}, tv floor "
        f"{judge_all.floor:.3f}; unguided {unguided_rate:.3f} s/image")
    cap = math.ceil(cap_factor * per_seed)
    runs = []
    for seed in range(cfg.seeds):
        reward, labels, viewed = collect_labels_and_train(cfg, model, oracle, pool, seed, log)
        if reward is None:
            raise CensorError(f"labelling seed {seed}: the {viewed} viewed images hold one class only; raise --budget")
        images, labels = reward.info["_labelled"]
        if threshold is None:
            th = heldout_threshold(images, labels, kind=cfg.reward, diffusion=model, members=len(reward.members),
                                   alpha=cfg.alpha, iterations=cfg.iterations, folds=folds,
                                   recall=recall, seed=seed)
        else:
            th = dict(threshold=float(threshold), user=True, seconds=0.0)
        log(f"  seed {seed}: threshold p={th['threshold']:.4f} (held-out benign pass "
            f"{th.get('heldout_benign_pass', float('nan')):.2f}, {th['seconds']:.0f}s)")
        run = dict(seed=seed, labels=int(len(labels)), malign_labels=int((labels == 0).sum()),
                   reward_train_s=reward.info["train_seconds"],
                   threshold={k: v for k, v in th.items()}, modes={})
        unguided.charged_s = 0.0
        rj = reject_sample(model, reward, per_seed, GALLERY_SEED, th["threshold"], steps=cfg.steps, cap=cap,
                           sampler=unguided)
        run["modes"]["reject"] = dict(rj.as_dict(), charged_sampling_s=round(unguided.charged_s, 2),
                                      s_per_accepted=(unguided.charged_s + rj.scoring_s) / max(rj.kept, 1))
        t1 = time.perf_counter()
        guided_imgs = to_uint8(sample(model, gallery_seeds, steps=cfg.steps, guidance=make_guidance(cfg, reward)))
        guide_s = time.perf_counter() - t1
        run["modes"]["guide"] = dict(kept=per_seed, drawn=per_seed, dropped=0, sampled=per_seed, capped=False,
                                     charged_sampling_s=round(guide_s, 2), s_per_accepted=guide_s / per_seed)
        guided = DrawStore(model, cfg.steps, make_guidance(cfg, reward), guided_imgs, np.full(per_seed, guide_s / per_seed))
        gr = reject_sample(model, reward, per_seed, GALLERY_SEED, th["threshold"], steps=cfg.steps, cap=cap,
                           sampler=guided)
        run["modes"]["guide+reject"] = dict(gr.as_dict(), charged_sampling_s=round(guided.charged_s, 2),
                                            s_per_accepted=(guided.charged_s + gr.scoring_s) / max(gr.kept, 1))
        kept_images = {"reject": rj.images, "guide": guided_imgs, "guide+reject": gr.images}
        judged = {}
        for mode in MODES:
            m, judged[mode] = _judge(judge, judge_all, kept_images[mode])
            run["modes"][mode].update(m)
            run["modes"][mode]["time_ratio"] = (run["modes"][mode]["s_per_accepted"] / unguided_rate
                                                if unguided_rate > 0 else None)
            log(f"    {mode:13s} malign {m['malign']}/{m['n']}  tv {_f(m['tv'], '{:.3f}')}  "
                f"recall {m['recall_ratio'] or float('nan'):.2f}x  "
                f"drawn {run['modes'][mode]['drawn']}  {run['modes'][mode]['s_per_accepted']:.3f} s/accepted")
        runs.append(run)
        if seed == 0 and out_dir is not None:
            _save_grid(out_dir, _name(cfg, threshold, cap_factor), cfg.feature, baseline, jb, kept_images, judged)
    if store_path is not None:
        unguided.save(store_path)
    result = dict(kind="reject-bench", name=_name(cfg, threshold, cap_factor), config=dict(vars(cfg)),
                  feature=cfg.feature, dominance=feature_spec(cfg.feature)["dominance"],
                  reject=dict(threshold=threshold, recall=recall, folds=folds, cap_factor=cap_factor, cap_per_seed=cap),
                  machine=machine(), model_fingerprint=model_fingerprint(model.unet),
                  baseline=base, modes={mode: _pool(runs, mode, judge_all, unguided_rate) for mode in MODES},
                  runs=runs)
    result["config"]["window"] = list(cfg.window)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{result['name']}.json").write_text(json.dumps(result, indent=1, default=float))
        (out / f"{result['name']}.md").write_text(markdown_table(result))
    return result


def _pool(runs, mode, judge_all: GalleryJudge, unguided_rate: float) -> dict:
    """One mode over the labelling seeds: the shared judge's pooling (Wilson counts, tv of the pooled
    histogram and its floor) over the seeds that kept images, plus the draw and time accounting."""
    rows = [r["modes"][mode] for r in runs]
    judged = [r for r in rows if r["n"]]
    if judged:
        out = judge_all.pool(judged)
    else:  # no seed kept an image: nothing to judge (the Wilson interval of 0/0 is all of [0, 100])
        out = dict(malign=0, n=0, malign_pct=None, ci_pct=[0.0, 100.0], tv=None, tv_floor=judge_all.floor,
                   recall_ratio=None, confident=None)
    seconds = sum(r["charged_sampling_s"] + r.get("scoring_s", 0.0) for r in rows)
    kept = sum(r["kept"] for r in rows)
    s_per_accepted = seconds / kept if kept else None
    out.update(drawn=sum(r["drawn"] for r in rows), dropped=sum(r["dropped"] for r in rows),
               sampled=sum(r["sampled"] for r in rows), kept=kept, requested=sum(r.get("requested", r["kept"]) for r in rows),
               capped_seeds=sum(bool(r["capped"]) for r in rows),
               s_per_accepted=s_per_accepted, seconds=round(seconds, 1),
               time_ratio=s_per_accepted / unguided_rate if s_per_accepted is not None and unguided_rate > 0 else None,
               reward_train_s=float(np.median([r["reward_train_s"] for r in runs])),
               threshold_s=float(np.median([r["threshold"]["seconds"] for r in runs])),
               thresholds=[round(r["threshold"]["threshold"], 4) for r in runs])
    return out


def _name(cfg: BenchConfig, threshold, cap_factor) -> str:
    extra = "" if threshold is None else f"_p{threshold:g}"
    extra += "" if cap_factor == DEFAULT_CAP_FACTOR else f"_cap{cap_factor:g}"
    return f"reject_{cfg.name}{extra}"


def _save_grid(out_dir, name, feature, baseline, jb, kept, judged) -> None:
    """Rows of 10: baseline, reject, guide, guide+reject (2 rows each; malign framed red)."""
    blocks, marks = [baseline[:20]], [is_malign(jb, feature)[:20]]
    for mode in MODES:
        imgs = kept[mode][:20]
        pad = 20 - len(imgs)
        blocks.append(np.concatenate([imgs, np.zeros((pad, *baseline.shape[1:]), np.uint8)]) if pad else imgs)
        m = is_malign(judged[mode], feature)[:20] if judged[mode] is not None else np.zeros(0, bool)
        marks.append(np.concatenate([m, np.zeros(pad, bool)]))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grid(np.concatenate(blocks), nrow=10, marks=np.concatenate(marks)).save(out / f"{name}.png")


def _per_kept(m: dict) -> str:
    return f"{m['drawn'] / m['kept']:.2f}×" if m["kept"] else "none kept"


def _f(x, fmt="{:.2f}") -> str:
    return "–" if x is None else fmt.format(x)


def _tv(m: dict, b: dict) -> str:
    """``tv (floor)`` of a mode; "n/a" for rows saved before tv was measured (or with nothing kept)."""
    if m.get("tv") is None:
        return "n/a"
    floor = m.get("tv_floor", b.get("tv_floor"))
    return f"{m['tv']:.3f}" + ("" if floor is None else f" ({floor:.3f})")


def _floor(b: dict) -> str:
    return "–" if b.get("tv_floor") is None else f"– ({b['tv_floor']:.3f})"


def markdown_table(result: dict, link: str | None = None) -> str:
    b = result["baseline"]
    name = f"[{result['name']}]({link}/{result['name']}.png)" if link else result["name"]
    lines = [f"**{result['config']['feature']}** ({name}; {result['machine']}):", "",
             "| mode | malign % [95% CI] | tv (floor) | recall vs baseline | confident | drawn / kept (draws per kept) | "
             "dropped | capped seeds | s per accepted image | thresholds p |",
             "|---|---|---|---|---|---|---|---|---|---|",
             f"| baseline (unguided) | {b['malign_pct']:.2f} [{b['ci_pct'][0]:.2f}, {b['ci_pct'][1]:.2f}] (n={b['n']}) | "
             f"{_floor(b)} | 1.00× | {b['confident']:.2f} | – | – | – | {b['s_per_image']:.3f} | – |"]
    for mode, m in result["modes"].items():
        ci = (f"{_f(m['malign_pct'])} [{m['ci_pct'][0]:.2f}, {m['ci_pct'][1]:.2f}] (n={m['n']})"
              if m["n"] else "– (none kept)")
        lines.append(f"| {mode} | {ci} | {_tv(m, b)} | {_f(m['recall_ratio'], '{:.2f}×')} | {_f(m['confident'])} | "
                     f"{m['drawn']} / {m['kept']} ({_per_kept(m)}) | {m['dropped']} | "
                     f"{m['capped_seeds']} | {_f(m['s_per_accepted'], '{:.3f}')} | "
                     f"{' / '.join(f'{t:.3f}' for t in m['thresholds']) if mode != 'guide' else '–'} |")
    m = result["modes"]["reject"]
    lines += ["", f"Reward training {m['reward_train_s']:.0f} s and threshold cross-fitting {m['threshold_s']:.0f} s "
                  "per labelling seed (median), not included in the per-image times."]
    return "\n".join(lines) + "\n"


# ---- command line -----------------------------------------------------------------------------
def normalised_s_per_accepted(result: dict, mode: str) -> float | None:
    """Seconds per accepted image at the run's own per-image rates (unguided: the timing at the start;
    guided: the ``guide`` galleries), times images sampled per kept, plus scoring: the same cost with
    the load of a shared machine taken out of the individual batches."""
    m = result["modes"][mode]
    if not m["kept"]:
        return None
    guide = result["modes"]["guide"]
    rate = result["baseline"]["s_per_image"] if mode == "reject" else guide["seconds"] / guide["kept"]
    if mode == "guide":
        return rate
    scoring = sum(r["modes"][mode].get("scoring_s", 0.0) for r in result["runs"])
    return (m["sampled"] * rate + scoring) / m["kept"]


def combined_table(results: list[dict], link: str = "bench") -> str:
    """One table over features: the three modes next to the unguided baseline (docs/benchmarks.md)."""
    lines = ["| feature (labelling seeds × images) | mode | malign % [95% CI] | tv (floor) | recall vs baseline | "
             "confident | drawn / kept (per kept) | capped seeds | s per accepted image, measured | "
             "at the run's per-image rates |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        b, c = r["baseline"], r["config"]
        feat = f"[{c['feature']}]({link}/{r['name']}.png) ({c['seeds']} × {-(-c['n'] // c['seeds'])})"
        lines.append(f"| {feat} | baseline | {b['malign_pct']:.2f} [{b['ci_pct'][0]:.2f}, {b['ci_pct'][1]:.2f}] "
                     f"(n={b['n']}) | {_floor(b)} | 1.00× | {b['confident']:.2f} | – | – | {b['s_per_image']:.3f} | "
                     f"{b['s_per_image']:.3f} |")
        for mode, m in r["modes"].items():
            ci = (f"{m['malign_pct']:.2f} [{m['ci_pct'][0]:.2f}, {m['ci_pct'][1]:.2f}] (n={m['n']})" if m["n"]
                  else "– (none kept)")
            lines.append(f"| | {mode} | {ci} | {_tv(m, b)} | {_f(m['recall_ratio'], '{:.2f}×')} | {_f(m['confident'])} | "
                         f"{m['drawn']} / {m['kept']} ({_per_kept(m)}) | {m['capped_seeds']} | "
                         f"{_f(m['s_per_accepted'], '{:.3f}')} | {_f(normalised_s_per_accepted(r, mode), '{:.3f}')} |")
    return "\n".join(lines) + "\n"
