"""The run's log: ``OUT/log.csv`` (one row per logged step) and TensorBoard when installed."""
from __future__ import annotations

import csv
import os

# max_*_gib: the CUDA allocator's peaks so far in this process (empty on other devices)
COLUMNS = ["step", "loss", "lr", "grad_norm", "samples_per_s", "val_loss", "max_allocated_gib", "max_reserved_gib"]


class RunLog:
    def __init__(self, out: str, step: int = 0):
        """Open ``out/log.csv``; a resumed run (``step`` > 0) keeps the rows up to ``step``."""
        path = os.path.join(out, "log.csv")
        rows = []
        if step > 0 and os.path.exists(path):
            with open(path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        with open(path + ".tmp", "w", newline="") as f:
            w = csv.DictWriter(f, COLUMNS)
            w.writeheader()
            w.writerows(rows)
        os.replace(path + ".tmp", path)
        self._file = open(path, "a", newline="")
        self._csv = csv.DictWriter(self._file, COLUMNS)
        try:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(os.path.join(out, "tb"))
        except Exception:  # noqa: BLE001 - TensorBoard is optional
            self._tb = None

    def write(self, row: dict):
        self._csv.writerow(row)
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and v != "":
                    self._tb.add_scalar(k, float(v), row["step"])

    def close(self):
        self._file.close()
        if self._tb is not None:
            self._tb.close()
