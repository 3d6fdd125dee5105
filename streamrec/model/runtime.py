"""Serving the exported model with onnxruntime (package onnxruntime-gpu); no torch here.

The CUDA execution provider is used when a GPU is present (``STREAMREC_DEVICE=auto``,
the default), the CPU one otherwise; ``STREAMREC_DEVICE=cpu|cuda`` forces a choice. A
model directory is checked before use: format, SHA-256 of ``model.onnx`` against
``metadata.json``, and the item table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from glob import glob
from pathlib import Path

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)
FORMAT = "streamrec.gru/1"


class ModelError(ValueError):
    """A model directory that must not be served (missing, corrupt, wrong format)."""


def requested_device(device: str | None = None) -> str:
    """``device``, else ``STREAMREC_DEVICE``, else auto: one of auto, cpu, cuda."""
    return (device or os.environ.get("STREAMREC_DEVICE", "auto")).lower()


def choose_providers(device: str | None = None) -> list[str]:
    device = requested_device(device)
    available = ort.get_available_providers()
    has_gpu = bool(glob("/dev/nvidia[0-9]*"))
    if device == "cuda" or (device == "auto" and has_gpu):
        if "CUDAExecutionProvider" not in available:
            raise ModelError("STREAMREC_DEVICE=cuda but onnxruntime has no CUDA provider")
        _preload_cuda_libraries()
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _preload_cuda_libraries() -> None:
    """The CUDA provider needs CUDA 13 and cuDNN 9; where they come as pip wheels
    (nvidia-*-cu13, as beside torch) onnxruntime finds them only when preloaded."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as exc:  # a missing wheel is fine when the system has the libraries
        log.debug("onnxruntime.preload_dlls: %s", exc)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class SequentialModel:
    """An exported GRU model: item table + one ONNX graph (see network.ServeGraph)."""

    def __init__(
        self, path: str | Path, device: str | None = None, threads: int | None = None
    ) -> None:
        self.path = Path(path)
        meta_path = self.path / "metadata.json"
        if not meta_path.is_file():
            raise ModelError(f"{self.path}: no metadata.json")
        try:
            self.meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise ModelError(f"{meta_path}: not JSON: {exc}") from None
        if self.meta.get("format") != FORMAT:
            raise ModelError(f"{self.path}: format {self.meta.get('format')!r}, want {FORMAT}")
        onnx_path = self.path / "model.onnx"
        if not onnx_path.is_file():
            raise ModelError(f"{self.path}: no model.onnx")
        if file_sha256(onnx_path) != self.meta.get("onnx_sha256"):
            raise ModelError(f"{onnx_path}: SHA-256 differs from metadata.json (corrupt?)")
        self.items: list[str] = json.loads((self.path / "items.json").read_text())
        if len(self.items) + 1 != self.meta["n_items"]:
            raise ModelError(f"{self.path}: items.json does not match metadata n_items")
        self.index = {item: n for n, item in enumerate(self.items, start=1)}
        self.version: str = self.meta["version"]
        self.dim: int = self.meta["dim"]
        self.k: int = self.meta["k"]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or int(os.environ.get("STREAMREC_ORT_THREADS", "1"))
        opts.log_severity_level = 3
        wanted = choose_providers(device)
        try:
            self.session = ort.InferenceSession(str(onnx_path), opts, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"{onnx_path}: onnxruntime cannot load it: {exc}") from None
        # Models exported since 2026-12-03 take the top-K as input "k" (train.py).
        self.takes_k = any(i.name == "k" for i in self.session.get_overridable_initializers())
        self.providers = self.session.get_providers()
        if self.providers[0] != wanted[0]:
            # onnxruntime falls back to the CPU silently when the CUDA provider cannot load.
            message = (
                f"{onnx_path}: {wanted[0]} could not start (CUDA 13 / cuDNN 9 libraries?); "
                f"running on {self.providers[0]}"
            )
            if requested_device(device) == "cuda":
                raise ModelError(message)
            log.warning(message)

    def item_index(self, item: str | None) -> int:
        return self.index.get(item, 0) if item is not None else 0

    def run(
        self,
        items: np.ndarray,
        h0: np.ndarray,
        gather: np.ndarray,
        exclude: np.ndarray,
        k: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One inference call: see network.ServeGraph for the meaning of each array.
        ``k``: the top items wanted per answer, at most the model's ``k`` (fewer cost
        less; a model exported before "k" was an input always gives its own ``k``)."""
        feed = {
            "items": items.astype(np.int64, copy=False),
            "h0": h0.astype(np.float32, copy=False),
            "gather": gather.astype(np.int64, copy=False),
            "exclude": exclude.astype(np.int64, copy=False),
        }
        if k is not None and self.takes_k:
            feed["k"] = np.array([self.top_count(k)], np.int64)
        states, scores, top = self.session.run(None, feed)
        return states, scores, top

    def top_count(self, k: int | None) -> int:
        """How many top items :meth:`run` gives per answer when asked for ``k``."""
        return max(1, min(k, self.k)) if k is not None and self.takes_k else self.k

    def recommend_histories(self, histories: list[list[str]], k: int = 20) -> list[list[str]]:
        """Offline use: each full history from a zero state, seen items masked."""
        idx = [[self.item_index(i) for i in h] for h in histories]
        idx = [[i for i in h if i] for h in idx]
        b = len(idx)
        length = max(1, *(len(h) for h in idx)) if idx else 1
        items = np.zeros((b, length), dtype=np.int64)
        for row, h in enumerate(idx):
            items[row, : len(h)] = h
        gather = np.array([row * (length + 1) + len(h) for row, h in enumerate(idx)])
        width = max(1, *(len(set(h)) for h in idx)) if idx else 1
        exclude = np.zeros((b, width), dtype=np.int64)
        for row, h in enumerate(idx):
            seen = sorted(set(h))
            exclude[row, : len(seen)] = seen
        _, _, top = self.run(items, np.zeros((b, self.dim), np.float32), gather, exclude, k)
        return [[self.items[j - 1] for j in row[:k] if j > 0] for row in top]
