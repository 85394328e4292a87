"""The kernel's model cache holds one pipeline by default: a new model frees the old one.

Why: a real model is gigabytes of the kernel's RAM; a cache that kept every model a notebook ever
named grew by one model per switch. Checked with weak references in a real kernel after real runs
(the warm pool, the results and the cache are all in play), and in this process for
``NBDIST_CACHE_SIZE``. Measured figures: docs/usage.md ("Memory in the kernel").
"""

from __future__ import annotations

import gc
import weakref

import pytest

import nbdist
from nbdist.options import NbdistUsageError
from nbdist.pipelines import cached_pipeline, clear_cache


def test_switching_models_frees_the_old_one_and_clear_cache_frees_the_last(kernel, tiny_model: str) -> None:
    demo = str(nbdist.demo_model())
    assert kernel.execute("import gc, weakref, nbdist\nfrom nbdist.pipelines import cached_pipeline").error is None
    ex = kernel.execute(f"%%distgen --model {tiny_model} -n 1 --steps 1 --seed 0 -o a\na cat")
    assert ex.error is None, ex.error
    assert kernel.execute(f"ref_a = weakref.ref(cached_pipeline({tiny_model!r}, 'float32'))").error is None
    ex = kernel.execute(f"%%distgen --model {demo} -n 1 --steps 1 --seed 0 -o b\na red circle on a blue background")
    assert ex.error is None, ex.error
    assert kernel.value("(gc.collect(), ref_a())[1] is None"), "model A is still alive after switching to B"
    assert kernel.value("(len(a.images), len(b.images))") == (1, 1)  # the results keep their images
    assert kernel.execute(f"ref_b = weakref.ref(cached_pipeline({demo!r}, 'float32'))").error is None
    assert kernel.value("ref_b() is not None")
    assert kernel.execute("nbdist.clear_cache()").error is None
    assert kernel.value("(gc.collect(), ref_b())[1] is None"), "clear_cache left the last model alive"
    assert kernel.value("nbdist.status().pids") == []  # the warm workers held it: they are gone too


def test_cache_size_keeps_more_and_drops_the_least_recently_used(monkeypatch, tiny_model: str) -> None:
    demo = str(nbdist.demo_model())
    monkeypatch.setenv("NBDIST_CACHE_SIZE", "2")
    clear_cache()
    try:
        a = weakref.ref(cached_pipeline(tiny_model, "float32"))
        b = weakref.ref(cached_pipeline(demo, "float32"))
        assert cached_pipeline(tiny_model, "float32") is a()  # a hit: no load, and A is now the newest
        cached_pipeline(demo, "bfloat16")  # a third key drops the least recently used: B in float32
        gc.collect()
        assert a() is not None and b() is None
        monkeypatch.setenv("NBDIST_CACHE_SIZE", "0")
        with pytest.raises(NbdistUsageError, match="NBDIST_CACHE_SIZE must be a positive integer"):
            cached_pipeline(demo, "float16")
    finally:
        clear_cache()
