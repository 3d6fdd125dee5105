"""The peer to beat: RecBole 1.2.1's SASRec and GRU4Rec (CE loss) on our exact split.

Runs in RecBole's own venv (benchmarks/recbole_setup.sh), not streamrec's:

    bash benchmarks/recbole_setup.sh .streamrec/recbole-venv
    .streamrec/recbole-venv/bin/python benchmarks/recbole_peer.py \
        --events data/ml/events.jsonl --out .streamrec/recbole --models SASRec GRU4Rec

Same split as ``streamrec evaluate``: per user by time, second-last item validates,
last item tests, full ranking with the history masked. Our log is already ordered;
to keep RecBole from re-ordering ties (same-second ratings) each interaction's
timestamp is replaced by its position in our log, so both see identical sequences.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

_load = torch.load


def _load_full(*args, **kwargs):  # RecBole 1.2.1 predates torch's weights_only default
    kwargs["weights_only"] = False
    return _load(*args, **kwargs)


torch.load = _load_full

# RecBole 1.2.1 aliases NumPy 1.x names (np.float_ ...) that NumPy 2 removed; where the
# venv has NumPy 2 (e.g. a GPU machine's image), give them back before it looks.
if not hasattr(np, "float_"):
    np.float_, np.complex_, np.unicode_ = np.float64, np.complex128, np.str_

from recbole.quick_start import run_recbole  # noqa: E402


def write_atomic(events: Path, root: Path, name: str) -> None:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    with gzip.open(events, "rt") if events.suffix == ".gz" else events.open() as f:
        for n, line in enumerate(f):
            e = json.loads(line)
            if e.get("item_id") is not None:
                lines.append(f"{e['user_id']}\t{e['item_id']}\t{n}")
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path(".streamrec/recbole"))
    ap.add_argument("--models", nargs="+", default=["SASRec", "GRU4Rec"])
    ap.add_argument("--epochs", type=int, default=300)
    args = ap.parse_args()
    name = "streamrec-split"
    write_atomic(args.events, args.out / "data", name)
    results = {}
    for model in args.models:
        started = time.time()
        config = {
            "data_path": str(args.out / "data"),
            "checkpoint_dir": str(args.out / "saved"),
            "USER_ID_FIELD": "user_id",
            "ITEM_ID_FIELD": "item_id",
            "TIME_FIELD": "timestamp",
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
            "eval_args": {
                "split": {"LS": "valid_and_test"},
                "order": "TO",
                "mode": "full",
                "group_by": "user",
            },
            "metrics": ["NDCG", "Hit"],
            "topk": [10, 20],
            "valid_metric": "NDCG@10",
            "loss_type": "CE",
            "train_neg_sample_args": None,
            "epochs": args.epochs,
            "stopping_step": 10,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "seed": 2020,
            "reproducibility": True,
            "show_progress": False,
        }
        out = run_recbole(model=model, dataset=name, config_dict=config, saved=False)
        test = {k: round(float(v), 4) for k, v in out["test_result"].items()}
        results[model] = {
            "test": test,
            "best_valid": out["best_valid_score"],
            "seconds": round(time.time() - started),
        }
        print(f"{model}: {test}", flush=True)
    (args.out / "recbole_results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
