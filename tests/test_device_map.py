"""``--device-map balanced`` / ``--max-memory``: strict parsing, clear refusals, and the placement itself.

The placement needs GPUs: ``test_balanced_placement_on_gpus`` runs on a GPU machine and is skipped
elsewhere. Everything that must happen *before* a process starts (parsing, the no-GPU message, the
magic's UsageError, the CLI's exit status) is tested here on any machine.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys

import numpy as np
import pytest
import torch

import nbdist
from nbdist.options import GenerateOptions, NbdistUsageError
from nbdist.parent.machine.devices import visible_gpu_count
from nbdist.placement import check_placement, normalise_max_memory, parse_max_memory, parse_size, validate_placement

GiB = 2**30
no_gpu = pytest.mark.skipif(visible_gpu_count() > 0, reason="checks the message given on a machine without GPUs")


def test_parse_max_memory_examples() -> None:
    assert parse_max_memory("0=10GiB,1=10GiB,cpu=30GiB") == {0: 10 * GiB, 1: 10 * GiB, "cpu": 30 * GiB}
    assert parse_max_memory(" 0 = 1.5GB , CPU=512MiB ") == {0: 1_500_000_000, "cpu": 512 * 2**20}
    assert parse_max_memory("1=1gib") == {1: GiB}  # units are case-insensitive, GPU numbers need not start at 0
    assert parse_max_memory("0=4096") == {0: 4096}  # bare number: bytes
    assert parse_size("2TiB") == 2 * 2**40 and parse_size("3kb") == 3000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "--max-memory is empty"),
        ("0=10GiB,", "empty entry (a stray comma?)"),
        ("0=10GiB,,1=2GiB", "empty entry"),
        ("0:10GiB", "'0:10GiB' has no '='"),
        ("gpu0=10GiB", "device 'gpu0' is neither a GPU number (0, 1, ...) nor 'cpu'"),
        ("-1=10GiB", "device '-1' is neither"),
        ("0=ten", "'ten' is not a size"),
        ("0=10 GiBs", "'10 GiBs' is not a size"),
        ("0=", "'' is not a size"),
        ("0=0GiB", "'0GiB' is zero; leave a device out"),
        ("0=1GiB,0=2GiB", "device 0 is given twice"),
        ("cpu=1GiB,CPU=2GiB", "device 'cpu' is given twice"),
    ],
)
def test_parse_max_memory_rejects(text: str, message: str) -> None:
    with pytest.raises(NbdistUsageError, match=r"^--max-memory") as info:
        parse_max_memory(text)
    assert message in str(info.value)


def test_max_memory_as_a_dict_from_python() -> None:
    assert normalise_max_memory({0: "10GiB", "cpu": 1000}) == {0: 10 * GiB, "cpu": 1000}
    assert normalise_max_memory({"1": "1GB"}) == {1: 10**9}
    assert normalise_max_memory(None) is None
    with pytest.raises(NbdistUsageError, match="neither a GPU number"):
        normalise_max_memory({"cuda:0": "1GiB"})
    with pytest.raises(NbdistUsageError, match="non-empty dict or a string"):
        normalise_max_memory({})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_memory": "0=1GiB"}, "--max-memory only applies with --device-map balanced"),
        ({"device_map": "auto"}, "unknown --device-map 'auto'; choose one of balanced"),
        ({"device_map": "balanced", "device": "cpu"}, "drop --device cpu"),
        ({"device_map": "balanced", "num_processes": 2}, "-n 2 does not apply"),
        ({"device_map": "balanced", "schedule": "dynamic"}, "--schedule dynamic does not apply"),
        ({"device_map": "balanced", "max_memory": "cpu=30GiB"}, "--max-memory names no GPU"),
        ({"device_map": "balanced", "max_memory": "0=1XB"}, "'1XB' is not a size"),
    ],
)
def test_options_refuse_what_cannot_work(changes: dict, message: str) -> None:
    with pytest.raises(NbdistUsageError) as info:
        GenerateOptions(**changes).validate()
    assert message in str(info.value)


def test_placement_against_the_machine() -> None:
    balanced = GenerateOptions(device_map="balanced", max_memory="0=1GiB,2=1GiB,cpu=4GiB")
    validate_placement(balanced)
    with pytest.raises(NbdistUsageError, match=r"no GPU is visible here\. Drop --device-map to run on the CPU"):
        check_placement(balanced, 0)
    with pytest.raises(NbdistUsageError, match=r"names GPU 2, but only 2 GPU\(s\) are visible \(numbered 0-1\)"):
        check_placement(balanced, 2)
    check_placement(balanced, 3)
    with pytest.raises(NbdistUsageError, match="this launcher started 4"):
        check_placement(balanced, 3, launched_processes=4)
    check_placement(GenerateOptions(), 0)  # no device map: nothing to check


@no_gpu
def test_generate_without_gpus_says_so_before_anything_starts(tiny_model) -> None:
    with pytest.raises(NbdistUsageError, match="no GPU is visible here"):
        nbdist.generate(tiny_model, ["a dog"], device_map="balanced", max_memory={0: "1GiB"})
    assert multiprocessing.active_children() == []


@no_gpu
def test_magic_device_map_messages(kernel, tiny_model) -> None:
    ex = kernel.execute(f"%%distgen --model {tiny_model} --device-map balanced --max-memory 0=1GiB,cpu=2GiB\na dog\n")
    assert (ex.reply["status"], ex.reply["ename"]) == ("error", "UsageError")  # IPython shows it in one line
    assert "no GPU is visible here. Drop --device-map to run on the CPU" in ex.reply["evalue"]
    assert "Traceback" not in ex.stream()
    assert not ex.image_updates()

    ex = kernel.execute(f"%%distgen --model {tiny_model} --device-map balanced --max-memory 0=lots\na dog\n")
    assert ex.reply["ename"] == "UsageError" and "--max-memory: 'lots' is not a size" in ex.reply["evalue"]

    ex = kernel.execute(f"%%distgen --model {tiny_model} --device-map sideways\na dog\n")
    assert ex.reply["ename"] == "UsageError" and "invalid choice: 'sideways'" in ex.reply["evalue"]

    ex = kernel.execute("%%distgen?\n")
    help_text = str(ex.reply.get("payload"))
    assert "--device-map" in help_text and "--max-memory" in help_text and "--save-dir" in help_text


@no_gpu
def test_cli_device_map_without_gpus(tiny_model, tmp_path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "nbdist",
        "generate",
        "--model",
        tiny_model,
        "-p",
        "a dog",
        "--out",
        str(tmp_path / "o"),
    ]
    proc = subprocess.run([*cmd, "--device-map", "balanced"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "nbdist generate: error: --device-map balanced spreads the model over GPUs, and no GPU is visible here. "
        "Drop --device-map to run on the CPU."
    ]
    assert not (tmp_path / "o").exists()


def test_device_mapped_pipeline_is_reset_in_the_workers(tiny_model, tiny_pipe) -> None:
    """A pipeline loaded with a device map carries accelerate hooks; workers call reset_device_map().

    ``device_map="cpu"`` is the device map a CPU machine can load; the workers reset it in their own
    (forked) copy, move it to their device and generate the same images as a plain call, while the
    caller's pipeline keeps its map.
    """
    from nbdist.pipelines import load_pipeline

    mapped = load_pipeline(tiny_model, "float32", device_map="cpu")
    assert mapped.hf_device_map
    result = nbdist.generate(mapped, ["a dog", "a cat"], steps=2, seed=7, num_processes=2)
    assert result.complete, result.summary()
    assert mapped.hf_device_map  # only the workers' copies were reset
    assert result.device_map is None  # no --device-map run: nothing placed across GPUs
    for record in result:
        expected = tiny_pipe(
            record.prompt,
            num_inference_steps=2,
            guidance_scale=7.5,
            generator=torch.Generator("cpu").manual_seed(7 + record.index),
        ).images[0]
        diff = np.abs(np.asarray(record.image, dtype=np.int16) - np.asarray(expected, dtype=np.int16)).max()
        assert diff <= 2


@pytest.mark.gpu
@pytest.mark.skipif(visible_gpu_count() == 0, reason="needs a CUDA GPU")
def test_balanced_placement_on_gpus(tiny_model, tmp_path) -> None:
    """On a GPU machine: one worker loads the model with device_map="balanced"; the map is reported."""
    gpus = visible_gpu_count()
    memory = ",".join(f"{i}=2GiB" for i in range(gpus))
    result = nbdist.generate(
        tiny_model,
        ["a dog", "a cat", "a lighthouse"],
        steps=2,
        seed=0,
        device_map="balanced",
        max_memory=memory,
        save_dir=str(tmp_path),
    )
    assert result.complete, (result.summary(), result.worker_failures, result.logs)
    assert result.num_processes == 1
    device_map = result.device_map
    assert device_map and {"unet", "vae", "text_encoder"} <= set(device_map)
    assert set(device_map.values()) <= set(range(gpus))
    assert {r.device for r in result} == {result.workers[0].device}
    assert result.workers[0].device.startswith("balanced:")
    assert not torch.cuda.is_initialized()  # the placement happened in the worker, not in this process
    assert len(list(tmp_path.glob("*.png"))) == 3
