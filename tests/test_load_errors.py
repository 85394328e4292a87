"""A model that does not load says why, in one line with the fix (issue 17, item 5).

The hub's answers are the real ``huggingface_hub`` errors, built by ``hf_raise_for_status`` from a
response carrying the hub's ``X-Error-Code`` header, exactly as the library does. Most tests raise them
from diffusers' own hub call (``model_info``) so that diffusers 0.42 wraps them as it really does (a
generic "not fully cached" ``OSError`` whose ``__cause__`` is the hub error); one patches
``from_pretrained`` itself, as the issue asks, for the bare errors other diffusers paths let through.
Offline mode and a missing variant are not patched at all.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx2
import pytest
from huggingface_hub import constants
from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RevisionNotFoundError
from huggingface_hub.utils import hf_raise_for_status
from kernel import Kernel, assert_usage_error

from nbdist.options import GenerateOptions, NbdistUsageError
from nbdist.parent.output.report import end_lines, setup_refusal
from nbdist.parent.results.collector import ResultBuilder
from nbdist.parent.results.result import GenerationResult
from nbdist.pipelines import load_pipeline

GATED = "some-org/gated-model"


def hub_error(code: str, status: int, repo: str = GATED) -> Exception:
    """The exception huggingface_hub raises for a hub answer with this ``X-Error-Code``."""
    request = httpx2.Request("GET", f"https://huggingface.co/api/models/{repo}")
    response = httpx2.Response(status, headers={"X-Error-Code": code}, request=request)
    try:
        hf_raise_for_status(response)
    except Exception as exc:  # the very exception it raises is the point
        return exc
    raise AssertionError(f"hf_raise_for_status accepted {code}")


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """An empty hub cache, online mode, and a function that sets what diffusers' ``model_info`` raises."""
    import diffusers.pipelines.pipeline_utils as pipeline_utils

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(pipeline_utils, "_resolve_revision", lambda name, revision=None, **_: revision)

    def answer(exc: BaseException) -> None:
        def model_info(*args: Any, **kwargs: Any) -> Any:
            raise exc

        monkeypatch.setattr(pipeline_utils, "model_info", model_info)

    return answer


def refused(model: str, **kwargs: Any) -> NbdistUsageError:
    with pytest.raises(NbdistUsageError) as info:
        load_pipeline(model, "float32", **kwargs)
    message = str(info.value)
    assert "\n" not in message and len(message) < 300, message
    return info.value


def causes(exc: BaseException) -> list[BaseException]:
    out, todo = [], [exc]
    while todo:
        current = todo.pop()
        out.append(current)
        todo += [e for e in (current.__cause__, current.__context__) if e is not None and e not in out]
    return out


def test_gated_repo_says_accept_the_licence_and_log_in(hub: Any) -> None:
    hub(hub_error("GatedRepo", 401))
    error = refused(GATED)
    assert str(error) == (
        f"'{GATED}' is a gated model: accept its licence on https://huggingface.co/{GATED}, "
        "then log in with `hf auth login` (or set HF_TOKEN)"
    )
    assert any(isinstance(e, GatedRepoError) for e in causes(error))  # the hub's own error is kept behind it


def test_unknown_repo_says_check_the_id(hub: Any) -> None:
    hub(hub_error("RepoNotFound", 404, "some-org/no-such-model"))
    message = str(refused("some-org/no-such-model"))
    assert message.startswith("no model 'some-org/no-such-model' on the model hub: check the id"), message
    assert "hf auth login" in message  # a private model looks the same from outside


def test_unknown_revision_is_named(hub: Any) -> None:
    hub(hub_error("RevisionNotFound", 404))
    message = str(refused(GATED, revision="v9-nope"))
    assert message.startswith(f"'{GATED}' has no revision 'v9-nope': check the branch, tag or commit"), message


def test_no_network_says_offline_and_offers_a_local_folder(hub: Any) -> None:
    hub(httpx2.ConnectError("[Errno -2] Name or service not known"))
    message = str(refused(GATED))
    assert message.startswith(f"could not reach the model hub (offline?) and '{GATED}' is not in the local cache")
    assert "--model ./my-sd-model" in message


@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "wrapped"])
def test_full_disk_names_the_cache_and_hf_home(hub: Any, monkeypatch: pytest.MonkeyPatch, wrapped: bool) -> None:
    """ENOSPC while the files download, as the write raises it or behind another error (a download backend)."""
    from diffusers import DiffusionPipeline

    def download(*args: Any, **kwargs: Any) -> Any:
        full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{constants.HF_HUB_CACHE}/blobs/abc.incomplete")
        if not wrapped:
            raise full
        raise RuntimeError("download failed") from full

    monkeypatch.setattr(DiffusionPipeline, "download", download)
    message = str(refused(GATED))
    assert message == (
        f"the disk filled up while downloading '{GATED}' into {constants.HF_HUB_CACHE}: free space there, "
        "or set HF_HOME to a folder on a bigger disk before starting the kernel"
    )


def test_missing_variant_says_drop_it(tiny_model: str) -> None:
    """No patch: the tiny model has no fp16 files, and diffusers says so with a plain ValueError."""
    message = str(refused(tiny_model, variant="fp16"))
    assert message == f"{tiny_model!r} has no --variant fp16 files: drop --variant fp16"


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: hub_error("GatedRepo", 403), "is a gated model: accept its licence"),
        (lambda: hub_error("RepoNotFound", 401), "on the model hub: check the id"),
        (lambda: hub_error("RevisionNotFound", 404), "has no revision 'dev'"),
        (lambda: LocalEntryNotFoundError("Cannot find the requested files in the disk cache"), "(offline?)"),
    ],
    ids=["gated", "repo", "revision", "local-entry"],
)
def test_bare_hub_errors_from_from_pretrained(monkeypatch: pytest.MonkeyPatch, make: Any, expected: str) -> None:
    from diffusers import DiffusionPipeline

    def from_pretrained(*args: Any, **kwargs: Any) -> Any:
        raise make()

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", from_pretrained)
    assert expected in str(refused(GATED, revision="dev"))


def test_an_unknown_hub_failure_keeps_its_first_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import DiffusionPipeline

    def from_pretrained(*args: Any, **kwargs: Any) -> Any:
        raise OSError("model_index.json is not valid JSON\n(line 3)")

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", from_pretrained)
    message = str(refused(GATED))
    assert message.startswith(f"could not get '{GATED}' from the model hub (model_index.json is not valid JSON)")


def test_hf_hub_offline_with_an_uncached_id_for_real(tmp_path: Path) -> None:
    """``HF_HUB_OFFLINE=1`` set before Python starts, an empty cache, nothing patched."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_CACHE", None)
    code = (
        "from nbdist.options import NbdistUsageError\n"
        "from nbdist.pipelines import load_pipeline\n"
        "try:\n    load_pipeline('some-org/not-cached', 'float32')\n"
        "except NbdistUsageError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == (
        "offline mode is on (HF_HUB_OFFLINE=1) and 'some-org/not-cached' is not in the local cache: unset "
        "HF_HUB_OFFLINE to download it, or pass a local folder saved with save_pretrained, e.g. --model ./my-sd-model"
    ), out.stderr[-2000:]


def test_a_workers_load_failure_is_the_same_one_line(hub: Any, tmp_path: Path) -> None:
    """A worker that loads the model itself (``--device-map``, the CLI) sends the refusal whole, and the
    end of the run shows it as the line a load in the kernel gives, uncut."""
    from nbdist.spec import PoolSpec
    from nbdist.worker.serve import serve

    hub(hub_error("GatedRepo", 401))  # inherited by the forked worker
    in_kernel = str(refused(GATED))
    fork = multiprocessing.get_context("fork")
    queue = fork.Queue()
    spec = PoolSpec("cpu", "float32", 1, str(tmp_path), queue, GenerateOptions(), model=GATED)
    worker = fork.Process(target=serve, args=(spec,))
    worker.start()
    builder = ResultBuilder()
    builder.on_message(queue.get(timeout=120))
    worker.join(60)
    assert worker.exitcode == 0
    result = GenerationResult([], [], GenerateOptions(), 0, GATED, 1, 0.0, worker_failures=builder.worker_failures)
    assert setup_refusal(result) == in_kernel
    assert f"  [worker 0] {in_kernel}" in end_lines(result)


def test_magic_shows_a_gated_model_as_one_line(tmp_path: Path) -> None:
    """Through a real kernel: its ``from_pretrained`` answers as the hub does for a gated repo."""
    patch = (
        "import diffusers, httpx2\n"
        "from huggingface_hub.utils import hf_raise_for_status\n"
        "def _gated(*args, **kwargs):\n"
        f"    request = httpx2.Request('GET', 'https://huggingface.co/api/models/{GATED}')\n"
        "    hf_raise_for_status(httpx2.Response(401, headers={'X-Error-Code': 'GatedRepo'}, request=request))\n"
        "diffusers.DiffusionPipeline.from_pretrained = _gated\n"
    )
    with Kernel(cwd=str(tmp_path)) as kernel:
        assert kernel.execute(f"%load_ext nbdist\n{patch}").error is None
        ex = kernel.execute(f"%%distgen --model {GATED}\na cat")
    assert ex.error is None, ex.error
    assert_usage_error(ex, f"'{GATED}' is a gated model: accept its licence on https://huggingface.co/{GATED}")
    assert "hf auth login" in ex.stream("stderr")


def test_revision_error_type_is_the_hubs() -> None:
    """Guard for the tests above: the helper builds huggingface_hub's own classes."""
    assert isinstance(hub_error("RevisionNotFound", 404), RevisionNotFoundError)
    assert type(hub_error("GatedRepo", 401)) is GatedRepoError
