"""Command-line scripts, run from the repository root as modules (``python -m scripts.demo``)
or through the Makefile; the shell scripts by path.

* the demo: :mod:`.demo` (``make demo``);
* generators of shipped files: ``build_workflows.py`` (``example_workflows/``; standard
  library only, so it also runs by path), :mod:`.render_thumbnails` (the workflow
  thumbnails and ``docs/miniature_demo.png``), :mod:`.make_images` (the pictures composed
  from them) and :mod:`.docs_tables` (the docs' tables from their data files);
* set-up and CI: ``setup_env.sh`` (``make setup``), ``test_oldest_transformers.sh``,
  ``check_user_install.sh`` and the driver it runs in a user's ComfyUI
  (:mod:`.user_install_driver`), ``check_registry.sh``.

The ComfyUI launcher lives with the host harness (``comfy_host/launch.py``) and the GPU
check with the benchmarks (``benchmarks/gpu_check.py``).
"""
