"""Speed and memory benchmarks (``make bench``): table to stdout, JSON to benchmarks/results/.

* :mod:`.run` — the run: models, figures, results; :mod:`.figures` — each figure, its
  target and whether it is met; :mod:`.report` — the table;
* :mod:`.worker` — one case in a fresh process (its ``CASES`` registry), the cases in
  :mod:`.cases`, measured with :mod:`.measure`; the work counted by ``model_builders.flops``;
  the prompts and images of :mod:`.prompts`;
* :mod:`.gpu_check` — the real-size GPU check (any CUDA machine; not part of ``make bench``).
"""
