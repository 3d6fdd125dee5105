"""The sequential recommender: torch network and training (extra ``[train]``), ONNX
export, and the onnxruntime runtime the worker uses (no torch in the worker)."""
