"""Agreement of `hf-layerif score` block rankings across seeds on stories260K (not a test).

Four runs of the CLI with `--seed s --lora_seed s` (s = 0..3) on 192 TinyStories paragraphs (training) and the
next 32 (validation); the pairwise Spearman correlations of their block rankings, mean and minimum. Extra CLI
options compare protocols, e.g. `--fit_steps 0 --repeats 1` (one fresh adapter draw: the old default).

    OMP_NUM_THREADS=1 python benchmarks/seed_agreement.py                              # the default protocol
    OMP_NUM_THREADS=1 python benchmarks/seed_agreement.py --fit_steps 0                # 3 fresh draws averaged
    OMP_NUM_THREADS=1 python benchmarks/seed_agreement.py --fit_steps 0 --repeats 1    # 1 fresh draw
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(extra: list[str]) -> dict:
    from hf_layerif import LayerInfluenceScores
    from hf_layerif.cli.main import main as cli
    from hf_layerif.influence.stability import spearman_matrix

    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    text = (shared / "text" / "tinystories" / "tinystories_val_head.txt").read_text(encoding="utf-8", errors="replace")
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    rows, seconds = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "train.txt").write_text("\n\n".join(paragraphs[:192]), encoding="utf-8")
        (tmp / "val.txt").write_text("\n\n".join(paragraphs[192:224]), encoding="utf-8")
        for seed in range(4):
            started = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                code = cli(["score", "--model", str(shared / "models" / "stories260K"), "--train", str(tmp / "train.txt"),
                            "--validation", str(tmp / "val.txt"), "--output", str(tmp / f"out{seed}"), "--seed", str(seed),
                            "--lora_seed", str(seed), "--device", "cpu", "--no_plot", *extra])
            assert code == 0
            seconds.append(time.perf_counter() - started)
            rows.append(LayerInfluenceScores.from_pretrained(tmp / f"out{seed}").block_scores().numpy())
    corr = spearman_matrix(np.stack(rows))
    pairwise = corr[np.triu_indices(4, 1)]
    result = {"options": extra, "pairwise_spearman": [round(float(x), 3) for x in pairwise],
              "mean": round(float(pairwise.mean()), 3), "min": round(float(pairwise.min()), 3),
              "seconds_per_run": round(float(np.mean(seconds)), 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
