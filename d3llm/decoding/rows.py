"""Per-row tables: the shared mechanics of everything the engine keeps per row (canvas, method state, bookkeeping).

Rows join a running batch and leave it at step boundaries, so every per-row structure needs the same two
operations: keep a subset of rows (``select``) and append the rows of another table (``concat``). A dataclass lists
its per-row fields in ``row_fields`` (numpy arrays whose first axis is the row, or lists); a 2-D field whose second
axis differs between the two tables (e.g. ``[n, blocks]`` for rows with different generation lengths) is padded to
the wider one with the fill value given in ``row_fields``. A field may also be a torch tensor on the model's device
(per-position method state too large for the host, e.g. CreditDecoding's credit over the vocabulary); its axes past
the row must agree between the tables. Fields named in ``step_fields`` hold what one iteration
hands from ``plan`` to ``commit``; they are selected with the rows but dropped on ``concat`` (a plan recomputes them
before they are read again).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch


def pad_columns(a: np.ndarray, width: int, fill: Any) -> np.ndarray:
    """``a`` ``[n, w, ...]`` widened to ``[n, width, ...]`` with ``fill`` (``a`` itself when already that wide)."""
    if a.shape[1] >= width:
        return a
    out = np.full((a.shape[0], width, *a.shape[2:]), fill, dtype=a.dtype)
    out[:, : a.shape[1]] = a
    return out


class RowTable:
    """Mixin for dataclasses holding per-row data (see the module docstring)."""

    row_fields: ClassVar[dict[str, Any]] = {}  # name -> fill value for padding a wider second axis
    step_fields: ClassVar[tuple[str, ...]] = ()

    def select(self, keep: np.ndarray):
        """The table of the rows ``keep`` (indices into the current rows, in that order)."""
        clone = dataclasses.replace(self)
        for name in (*self.row_fields, *self.step_fields):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, torch.Tensor):
                value = value[torch.as_tensor(keep, dtype=torch.long, device=value.device)]
            elif isinstance(value, list):
                value = [value[i] for i in keep]
            else:
                value = value[keep]
            setattr(clone, name, value)
        return clone

    def concat(self, other):
        """This table's rows followed by ``other``'s (shared, non-row fields are taken from ``self``)."""
        clone = dataclasses.replace(self)
        for name, fill in self.row_fields.items():
            a, b = getattr(self, name), getattr(other, name)
            if a is None or b is None:
                if a is not None or b is not None:
                    raise ValueError(f"cannot join rows: field {name!r} is set on one side only")
                continue
            if isinstance(a, list):
                setattr(clone, name, a + b)
                continue
            if isinstance(a, torch.Tensor):
                setattr(clone, name, torch.cat([a, b]))
                continue
            if a.ndim >= 2 and a.shape[1] != b.shape[1]:
                width = max(a.shape[1], b.shape[1])
                a, b = pad_columns(a, width, fill), pad_columns(b, width, fill)
            setattr(clone, name, np.concatenate([a, b]))
        for name in self.step_fields:
            setattr(clone, name, None)
        return clone
