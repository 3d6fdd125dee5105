"""Train the GRU model on an event log, export it to ONNX, verify, write a model version.

``streamrec train`` (needs the ``[train]`` extra: torch, onnx). Seeded and
deterministic on CPU; uses CUDA when torch sees a GPU. Each epoch reports validation
NDCG@10 (full ranking, leave-one-out); training stops when it has not improved for
``patience`` epochs and the best epoch is exported.
"""

from __future__ import annotations

import json
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress
from torch import nn

from ..baseline import CooccurrenceModel, file_sha256
from ..evaluate import Metrics, Split, leave_one_out, load_sequences
from .network import PAD, GRURec, ServeGraph
from .runtime import FORMAT, SequentialModel
from .runtime import file_sha256 as onnx_sha256


@dataclass
class TrainConfig:
    dim: int = 64
    dropout: float = 0.2
    epochs: int = 100
    batch_size: int = 64
    lr: float = 2e-3
    max_len: int = 200  # training windows; serving keeps the state for all history
    patience: int = 5
    seed: int = 42
    k: int = 100  # candidates the exported graph returns
    min_epochs: int = 3


class ExportMismatch(RuntimeError):
    """torch and onnxruntime disagree on the top-K: the export must not be used."""


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def _pad(rows: list[list[int]], length: int | None = None) -> torch.Tensor:
    length = length or max(1, *(len(r) for r in rows))
    out = torch.zeros((len(rows), length), dtype=torch.long)
    for n, r in enumerate(rows):
        out[n, : len(r)] = torch.tensor(r[:length], dtype=torch.long)
    return out


@torch.no_grad()
def _rank_last(net: GRURec, histories: list[list[int]], k: int, device: str) -> list[list[int]]:
    """Top-k after each full history, seen items masked (the protocol, in torch)."""
    net.eval()
    out: list[list[int]] = []
    for start in range(0, len(histories), 256):
        part = [h or [PAD] for h in histories[start : start + 256]]
        items = _pad(part).to(device)
        states = net.encode(items, torch.zeros(len(part), net.dim, device=device))
        last = torch.tensor([len(h) - 1 for h in part], device=device)
        h = states[torch.arange(len(part), device=device), last]
        scores = net.logits(h)
        for row, hist in enumerate(part):
            scores[row, torch.tensor(sorted(set(hist)), device=device)] = float("-inf")
        out += torch.topk(scores, k, dim=1).indices.tolist()
    return out


def _evaluate(net: GRURec, cases: dict, index: dict[str, int], device: str) -> dict[str, float]:
    hist = [[index[e[0]] for e in h if e[0] in index] for h, _ in cases.values()]
    ranked = _rank_last(net, hist, 20, device)
    m = Metrics()
    for top, (_, target) in zip(ranked, cases.values(), strict=True):
        m.add(top, index.get(target, -1))
    return m.summary()


def train(
    events: str | Path,
    out_root: str | Path,
    cfg: TrainConfig | None = None,
    progress: Callable[[str], None] = print,
    titles: dict[str, str] | None = None,
    bar: Progress | None = None,
) -> Path:
    """Train, export, verify; returns the new version directory under ``out_root``.

    ``bar``, a started Rich progress display, gets a task per epoch over its batches (for
    a terminal: an epoch on a large log takes minutes between the per-epoch lines)."""
    cfg = cfg or TrainConfig()
    _seed(cfg.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    seqs = load_sequences(events)
    split: Split = leave_one_out(seqs)
    items = sorted({e[0] for s in seqs.values() for e in s})
    index = {item: n for n, item in enumerate(items, start=1)}
    n_items = len(items) + 1
    train_seqs = [[index[e[0]] for e in s] for s in split.train.values() if len(s) >= 2]
    progress(
        f"{len(seqs):,} users, {len(items):,} items, "
        f"{sum(len(s) for s in split.train.values()):,} training events, device {device}"
    )

    net = GRURec(n_items, cfg.dim, cfg.dropout).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    loss_fn = nn.CrossEntropyLoss(ignore_index=PAD)
    rng = random.Random(cfg.seed)
    best, best_state, best_epoch, history = -1.0, None, 0, []
    started = time.perf_counter()
    steps = (len(train_seqs) + cfg.batch_size - 1) // cfg.batch_size
    for epoch in range(1, cfg.epochs + 1):
        net.train()
        order = list(range(len(train_seqs)))
        rng.shuffle(order)
        total, batches = 0.0, 0
        task = bar.add_task(f"epoch {epoch}", total=steps) if bar is not None else None
        for start in range(0, len(order), cfg.batch_size):
            rows = []
            for n in order[start : start + cfg.batch_size]:
                s = train_seqs[n]
                if len(s) > cfg.max_len + 1:  # a random window of a long history
                    end = rng.randrange(cfg.max_len + 1, len(s) + 1)
                    s = s[end - cfg.max_len - 1 : end]
                rows.append(s)
            x = _pad([r[:-1] for r in rows]).to(device)
            y = _pad([r[1:] for r in rows], x.shape[1]).to(device)
            states = net.encode(x, torch.zeros(len(rows), cfg.dim, device=device))
            loss = loss_fn(net.out(states).reshape(-1, n_items), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            total += loss.item()
            batches += 1
            if bar is not None:
                bar.advance(task)
        if bar is not None:
            bar.remove_task(task)
        val = _evaluate(net, split.valid, index, device)
        history.append({"epoch": epoch, "loss": round(total / max(1, batches), 4), **val})
        marker = ""
        if val["NDCG@10"] > best:
            best, best_epoch, marker = val["NDCG@10"], epoch, " *"
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        progress(
            f"epoch {epoch:3d}  loss {total / max(1, batches):.4f}  "
            f"valid NDCG@10 {val['NDCG@10']:.4f}  HR@10 {val['HR@10']:.4f}{marker}"
        )
        if epoch >= cfg.min_epochs and epoch - best_epoch >= cfg.patience:
            progress(f"early stop: no improvement for {cfg.patience} epochs")
            break
    assert best_state is not None
    net.load_state_dict(best_state)
    test = _evaluate(net, split.test, index, device)
    progress(
        f"best epoch {best_epoch}: valid NDCG@10 {best:.4f}; test NDCG@10 "
        f"{test['NDCG@10']:.4f} HR@10 {test['HR@10']:.4f} "
        f"({time.perf_counter() - started:.0f}s)"
    )

    stamp = version = time.strftime("gru-%Y%m%d-%H%M%S")
    n = 1
    while (Path(out_root) / version).exists():  # two trainings within one second
        n += 1
        version = f"{stamp}-{n}"
    out = Path(out_root) / version
    out.mkdir(parents=True, exist_ok=False)
    net = net.cpu().eval()
    export_onnx(net, out / "model.onnx", min(cfg.k, n_items - 1))
    (out / "items.json").write_text(json.dumps(items))
    meta = {
        "format": FORMAT,
        "version": version,
        "kind": "gru4rec-ce",
        "dim": cfg.dim,
        "n_items": n_items,
        "k": min(cfg.k, n_items - 1),
        "config": asdict(cfg),
        "training_data": str(events),
        "training_sha256": file_sha256(events),
        "best_epoch": best_epoch,
        "valid": {"NDCG@10": best},
        "test": test,
        "history": history,
        "onnx_sha256": onnx_sha256(out / "model.onnx"),
        "trained_at": int(time.time()),
    }
    (out / "metadata.json").write_text(json.dumps(meta, indent=2))
    verify_export(net, out, seqs=[[index[e[0]] for e in s] for s in split.train.values()])
    fallback = CooccurrenceModel.fit(
        split.train_rows(), titles=titles, meta={"version": f"{version}-cooc"}
    )
    fallback.save(out / "fallback")
    progress(f"exported and verified {out}")
    return out


def export_onnx(net: GRURec, path: Path, k: int) -> None:
    graph = ServeGraph(net, k).eval()
    b, length = 2, 3
    example = (
        torch.ones((b, length), dtype=torch.long),
        torch.zeros((b, net.dim)),
        torch.tensor([1, length + 2], dtype=torch.long),
        torch.zeros((b, 2), dtype=torch.long),
    )
    # The TorchScript exporter narrates what it traces (constants, GRU batch sizes); the
    # export is verified against torch right after, so the narration is noise here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            example,
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["items", "h0", "gather", "exclude"],
            output_names=["states", "scores", "top"],
            dynamic_axes={
                "items": {0: "batch", 1: "steps"},
                "h0": {0: "batch"},
                "gather": {0: "answers"},
                "exclude": {0: "answers", 1: "excluded"},
                "states": {0: "batch", 1: "steps1"},
                "scores": {0: "answers"},
                "top": {0: "answers"},
            },
        )
    _make_k_overridable(path, k)


def _make_k_overridable(path: Path, k: int) -> None:
    """Turn the graph's top-K constant into input ``k`` with ``k`` as its default (an
    ONNX initializer of an input's name): a worker asks for the candidates it reads.

    onnxruntime's CPU TopK costs about linearly in K (500 rows x 3,710 items: K=100
    15.5 ms, K=30 5.2 ms, three quarters of the whole call at K=100), while the ranker
    reads ``candidates`` (30) of them. The first K of a sorted TopK do not depend on K
    (equal scores: the lower index first, ONNX's rule), so the answers are the same.
    Callers that do not feed ``k`` (older workers) get the default."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    (topk,) = [n for n in graph.node if n.op_type == "TopK"]
    constant = next(n for n in graph.node if topk.input[1] in n.output)
    graph.node.remove(constant)
    topk.input[1] = "k"
    graph.input.append(helper.make_tensor_value_info("k", TensorProto.INT64, [1]))
    graph.initializer.append(numpy_helper.from_array(np.array([k], np.int64), "k"))
    for out in graph.output:
        if out.name in ("scores", "top"):
            out.type.tensor_type.shape.dim[1].dim_param = "k"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@torch.no_grad()
def verify_export(
    net: GRURec, out: Path, seqs: list[list[int]], sample: int = 64, tol: int = 10
) -> None:
    """torch and onnxruntime must agree on the top-``tol`` for a sample of sequences
    (incremental use included: a cached state plus new items); else raise."""
    model = SequentialModel(out, device="cpu")
    graph = ServeGraph(net, model.k).eval()
    rng = random.Random(0)
    rows = [s[-20:] or [1] for s in rng.sample(seqs, min(sample, len(seqs)))]
    items = _pad(rows)
    h0 = torch.randn(len(rows), net.dim) * 0.1
    gather = torch.tensor([n * (items.shape[1] + 1) + len(r) for n, r in enumerate(rows)])
    exclude = _pad([sorted(set(r)) for r in rows])
    _, t_scores, t_top = graph(items, h0, gather, exclude)
    _, o_scores, o_top = model.run(items.numpy(), h0.numpy(), gather.numpy(), exclude.numpy())
    if not np.array_equal(t_top[:, :tol].numpy(), o_top[:, :tol]):
        bad = int((t_top[:, :tol].numpy() != o_top[:, :tol]).any(axis=1).sum())
        raise ExportMismatch(
            f"top-{tol} differs between torch and onnxruntime for {bad} "
            f"of {len(rows)} sequences; not exporting {out}"
        )
    if not np.allclose(t_scores.numpy(), o_scores, atol=1e-3):
        raise ExportMismatch(f"scores differ between torch and onnxruntime in {out}")
