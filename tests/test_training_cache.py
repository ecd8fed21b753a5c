"""The trainer's --cache (frozen LMM outputs and latents kept per record) changes no loss."""
import pytest

from tests.test_training import _cfg, tiny  # noqa: F401  (fixture)

pytestmark = pytest.mark.training  # runs a trainer


@pytest.mark.parametrize("blend", ["random"])
def test_cache_gives_the_same_losses(tiny, tmp_path, blend):  # noqa: F811
    from training.train import Trainer

    runs = {}
    for cache in (False, True):
        tr = Trainer(_cfg(tiny, tmp_path / f"c{cache}", stage=1, steps=4, lr=1e-3, random_crop=False,
                          blend=blend, cache=cache, precision="fp32")).setup()
        runs[cache] = tr.train()
        if cache:
            assert tr.cache.lmm and tr.cache.latents  # the cache was used
    for a, b in zip(runs[False], runs[True]):
        assert abs(a - b) <= 1e-5 * max(1.0, abs(a)), (runs[False], runs[True])
