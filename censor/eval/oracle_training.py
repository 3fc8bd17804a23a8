"""Train the evaluation oracle on the full labelled, watermarked training split.

``python -m censor train-oracle [--data DIR] [--epochs 12] [--out assets/oracle]``

Plain cross-entropy without label smoothing, so "confident" (max prob >= 0.9) means something;
flips and 2-px shifts because the DDPM is trained with flips and generated items are not perfectly
centred. The test-split accuracy, watermark accuracy and confident fraction are written into the
oracle's config.json: the confident fraction on real images is the yardstick for generated ones.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm.auto import tqdm

from censor.core.data import DEFAULT_DATA_DIR, load_watermarked, to_model_range
from censor.eval.metrics import frechet_distance, knn_precision_recall
from censor.eval.oracle import ORACLE_DIR, Oracle, OracleNet


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n = len(x)
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    padded = F.pad(x, (2, 2, 2, 2), value=-1.0)
    dy, dx = torch.randint(0, 5, (2,), generator=gen).tolist()  # one shift per batch: cheap, enough
    return padded[:, :, dy:dy + 28, dx:dx + 28]


def evaluate_oracle(oracle: Oracle, images: np.ndarray, labels: np.ndarray, watermark: np.ndarray) -> dict:
    j = oracle.judge(images)
    return dict(
        class_accuracy=float((j.classes == labels).mean()),
        watermark_accuracy=float((j.watermarked == watermark).mean()),
        confident_fraction=float(j.confident.mean()),
        n=int(len(labels)),
    )


def train(data_dir=DEFAULT_DATA_DIR, epochs: int = 12, batch: int = 128, lr: float = 2e-3,
          seed: int = 0, out=ORACLE_DIR, threads: int = 0) -> Oracle:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    tr, te = load_watermarked("train", data_dir), load_watermarked("test", data_dir)
    x, y, w = to_model_range(tr.images), torch.as_tensor(tr.labels).long(), torch.as_tensor(tr.watermark).float()
    net = OracleNet()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=5e-4)
    steps = epochs * (len(x) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    t0 = time.time()
    bar = tqdm(total=steps, desc="oracle")
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(len(x) // batch):
            idx = perm[i * batch:(i + 1) * batch]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits, wm, _ = net(augment(x[idx], gen))
            loss = F.cross_entropy(logits.float(), y[idx]) + F.binary_cross_entropy_with_logits(wm.float(), w[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            if i % 50 == 0:
                bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
    bar.close()
    oracle = Oracle(net.eval())
    oracle.metrics = {"test": evaluate_oracle(oracle, te.images, te.labels, te.watermark),
                      "train_seconds": round(time.time() - t0, 1), "epochs": epochs, "batch": batch}
    oracle.save(out)
    write_reference(oracle, tr, te, out)
    return oracle


def write_reference(oracle: Oracle, tr, te, out=ORACLE_DIR) -> dict:
    """Ship the real test split's oracle features (float16) and the real-vs-real floors.

    FID and k-NN precision/recall of generated images are only readable next to the same figures
    for real test images against real training images, so both are computed once here.
    """
    f_test = oracle.judge(te.images).features
    rng = np.random.default_rng(0)
    f_train = oracle.judge(tr.images[rng.permutation(len(tr))[: len(te)]]).features
    p, r = knn_precision_recall(f_test[:2000], f_train[:2000])
    floor = dict(fid_test_vs_train=frechet_distance(f_test, f_train),
                 precision_test_vs_train_2000=p, recall_test_vs_train_2000=r)
    save_file({"test_features": torch.as_tensor(f_test).half().contiguous(),
               "test_labels": torch.as_tensor(te.labels.astype(np.int64)),
               "test_watermark": torch.as_tensor(te.watermark)}, str(Path(out) / "reference.safetensors"))
    oracle.metrics["reference"] = floor
    oracle.save(out)
    return floor
