"""Finished batches taken apart and put together: rows of a batch, batches concatenated, single windows."""

from __future__ import annotations

from typing import Any, Dict, Iterator, List

import torch


def concat_batches(parts: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One batch out of parts with the same keys, every tensor in memory of its own (a DataLoader worker then
    sends only the batch, not the larger batch a part was cut from)."""
    if len(parts) == 1:
        return _owned(parts[0])
    out: Dict[str, Any] = {}
    for name, value in parts[0].items():
        values = [p[name] for p in parts]
        if isinstance(value, torch.Tensor):
            out[name] = torch.cat(values)
        elif isinstance(value, dict):
            out[name] = concat_batches(values)
        else:
            out[name] = [x for v in values for x in v]
    return out


def _owned(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _owned(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor) and value.untyped_storage().nbytes() > value.numel() * value.element_size():
        return value.clone()
    return value


def batch_size_of(batch: Dict[str, Any]) -> int:
    return len(batch["key"])


def split_batch(batch: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
    """Per-window dicts (own memory, so a DataLoader can collate and send them safely)."""
    def pick(value: Any, i: int) -> Any:
        if isinstance(value, torch.Tensor):
            return value[i].clone()
        if isinstance(value, dict):
            return {k: pick(v, i) for k, v in value.items()}
        return value[i]

    for i in range(batch_size_of(batch)):
        yield {name: pick(value, i) for name, value in batch.items()}
