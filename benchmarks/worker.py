"""One benchmark case in a fresh process: ``python -m benchmarks.worker CASE JSON_ARGS``.

Every case runs in its own interpreter so that its peak RSS (``ru_maxrss``) is its
own and no case warms another's caches; only the case's own module is imported. The
result is printed as one line ``RESULT {json}`` on stdout. :data:`CASES` is the
registry: a case's name → the function (in ``benchmarks/cases/``) that measures it,
called with the JSON arguments.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import time

T_START = time.time()  # wall clock at interpreter start of this module (the cold-load cases report it)

import torch  # noqa: E402

CASES = {
    "hardware": "benchmarks.cases.hardware:hardware",              # figure 1
    "de_encode": "benchmarks.cases.encode:de_encode",              # figures 2, 3
    "clip_encode": "benchmarks.cases.clip:clip_encode",            # figure 3
    "cold_de": "benchmarks.cases.cold:cold_de",                    # figure 4
    "cold_clip": "benchmarks.cases.cold:cold_clip",                # figure 4
    "server_cache": "benchmarks.cases.server:server_cache",        # figure 5
    "de_scaling": "benchmarks.cases.encode:de_scaling",            # figure 6
    "trainer": "benchmarks.cases.trainer:trainer",                 # figure 7
    "de_cancel": "benchmarks.cases.cancel:de_cancel",              # figure 8
}


def case(name: str):
    """The function registered as ``name``."""
    module, func = CASES[name].split(":")
    return getattr(importlib.import_module(module), func)


def main():
    name, args = sys.argv[1], json.loads(sys.argv[2])
    if args.get("threads"):
        torch.set_num_threads(int(args["threads"]))
    out = case(name)(dict(args, t_module=T_START))
    sys.stdout.write("RESULT " + json.dumps(out) + "\n")
    sys.stdout.flush()
    os._exit(0)  # do not spend the parent's clock on interpreter teardown


if __name__ == "__main__":
    main()
