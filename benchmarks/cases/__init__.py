"""The benchmark cases, one function each, run by :mod:`benchmarks.worker` (its ``CASES``
registry names them) in a process of their own; each returns a JSON-able dict."""
