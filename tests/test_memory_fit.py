"""Big models fit, or the cell is refused before anything starts, naming the flags that make it fit.

The arithmetic runs for real on this CPU machine: GPU sizes come from the stand-in ``nvidia-smi``
(``tests/fake_gpus.py``), and checkpoints of realistic size are folders of *sparse* safetensors files
(a valid header, then ``truncate`` to the full size: the file reports 24 GB and uses a few KB of disk).
Where a run would really start, the tests call the check itself (``check_fit``), since a fake 24 GB
checkpoint cannot be loaded; the refusals also go through ``nbdist.generate`` and a real kernel.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import struct
import sys
from pathlib import Path

import psutil
import pytest
from fake_gpus import fake_gpus, path_with
from kernel import Kernel, assert_usage_error

import nbdist
from nbdist.options import GenerateOptions, NbdistUsageError
from nbdist.parent.machine import memory_fit
from nbdist.parent.machine.devices import visible_gpu_count
from nbdist.parent.machine.gpus import query_gpus
from nbdist.parent.machine.memory_fit import GiB, Machine, Setting, check_fit, fit_table, gpu_need, refusal
from nbdist.parent.machine.model_size import GB, estimate, known_model, safetensors_bytes

no_gpu = pytest.mark.skipif(visible_gpu_count() > 0, reason="checks what happens on a machine without GPUs")

FLUX = {
    "transformer": ("diffusers", "FluxTransformer2DModel", 23.8),
    "text_encoder_2": ("transformers", "T5EncoderModel", 9.5),
    "text_encoder": ("transformers", "CLIPTextModel", 0.25),
    "vae": ("diffusers", "AutoencoderKL", 0.17),
}
SD15 = {
    "unet": ("diffusers", "UNet2DConditionModel", 1.72),
    "text_encoder": ("transformers", "CLIPTextModel", 0.25),
    "vae": ("diffusers", "AutoencoderKL", 0.17),
}


def sparse_safetensors(path: Path, nbytes: int, dtype: str = "BF16") -> None:
    """A valid safetensors file of ``nbytes`` of tensor data that takes (almost) no disk: zeros are holes."""
    item = {"BF16": 2, "F16": 2, "F32": 4}[dtype]
    header = json.dumps({"weight": {"dtype": dtype, "shape": [nbytes // item], "data_offsets": [0, nbytes]}})
    header += " " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header.encode())
        f.truncate(8 + len(header) + nbytes)


def checkpoint(folder: Path, parts: dict, cls: str, *, dtype: str = "BF16", variant: str | None = None) -> str:
    """A pipeline folder shaped like a real one: model_index.json, each component's config and weights."""
    index = {"_class_name": cls, "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}
    for name, (library, klass, gb) in parts.items():
        index[name] = [library, klass]
        (folder / name).mkdir(parents=True)
        config = {"sample_size": 64} if name == "unet" else {}  # SD1.5: 64 latents x 8 = 512 pixels
        config |= {"block_out_channels": [128, 256, 512, 512]} if name == "vae" else {}
        (folder / name / "config.json").write_text(json.dumps(config))
        stem = "diffusion_pytorch_model" if library == "diffusers" else "model"
        scale = 2 if dtype == "F32" else 1
        sparse_safetensors(folder / name / f"{stem}.safetensors", int(gb * GB) * scale, dtype)
        if variant:
            sparse_safetensors(folder / name / f"{stem}.{variant}.safetensors", int(gb * GB), "F16")
    (folder / "model_index.json").write_text(json.dumps(index))
    return str(folder)


@pytest.fixture
def flux_folder(tmp_path: Path) -> str:
    return checkpoint(tmp_path / "FLUX.1-schnell", FLUX, "FluxPipeline")


def gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *specs: dict, host_gb: float = 256) -> None:
    """Make this process see the given GPUs through the stand-in nvidia-smi."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(memory_fit, "_has_children", lambda: False)  # this test process's own children aside
    monkeypatch.setattr(memory_fit, "_host_available", lambda: host_gb * GiB)
    monkeypatch.setenv("PATH", path_with(fake_gpus(tmp_path / "gpus", list(specs))))


def fit(
    model: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gpu: dict, host_gb: float = 256, **options: object
) -> None:
    """``check_fit`` as the plan calls it, one worker on one fake GPU, ``host_gb`` of host RAM available."""
    gpus(monkeypatch, tmp_path, gpu, host_gb=host_gb)
    check_fit(model, GenerateOptions(**options), "cuda", "bfloat16", 1, query_gpus())


# -- sizes from files ----------------------------------------------------------------------------------


def test_sparse_files_have_the_size_without_the_disk(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    sparse_safetensors(path, 20 * GB)
    assert path.stat().st_size > 20 * GB
    assert path.stat().st_blocks * 512 < 10**6  # holes: nothing written
    assert safetensors_bytes(path, "bfloat16") == 20 * GB
    assert safetensors_bytes(path, "float32") == 40 * GB  # loaded as float32: twice the bytes
    sparse_safetensors(path, 8 * GB, "F32")
    assert safetensors_bytes(path, "float16") == 4 * GB


def test_a_real_safetensors_file_is_read_like_safetensors_says(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "real.safetensors"
    save_file({"a": torch.zeros(1000, dtype=torch.float32), "ids": torch.arange(10)}, str(path))
    assert safetensors_bytes(path, "float16") == 1000 * 2 + 10 * 8  # floats converted, int64 kept
    assert safetensors_bytes(path, "float32") == 1000 * 4 + 10 * 8


def test_folder_estimate_sums_components_and_respects_the_variant(tmp_path: Path, flux_folder: str) -> None:
    model = estimate(flux_folder, "bfloat16", GenerateOptions())
    assert model is not None and model.name == "FLUX.1-schnell"
    assert {c.name for c in model.components} == set(FLUX)
    assert abs(model.total - sum(gb for *_, gb in FLUX.values()) * GB) < 10**4

    folder = checkpoint(tmp_path / "sd15", SD15, "StableDiffusionPipeline", dtype="F32", variant="fp16")
    plain = estimate(folder, "float16", GenerateOptions())
    fp16 = estimate(folder, "float16", GenerateOptions(variant="fp16"))
    assert plain is not None and fp16 is not None
    assert abs(plain.total - fp16.total) < 10**4  # the fp32 files scaled to float16 weigh what the fp16 ones do
    assert abs(fp16.total - 2.14 * GB) < 10**4


def test_a_loaded_pipeline_is_counted_tensor_by_tensor(tiny_pipe) -> None:
    model = estimate(tiny_pipe, "float32", GenerateOptions())
    assert model is not None and model.in_kernel
    expected = sum(
        p.numel() * 4 for part in ("unet", "vae", "text_encoder") for p in getattr(tiny_pipe, part).parameters()
    )
    assert expected <= model.total < expected * 1.05  # plus buffers (position ids)


def test_hub_ids_known_or_not() -> None:
    flux = known_model("black-forest-labs/FLUX.1-dev", "bfloat16")
    assert flux is not None and 33 * GB < flux.total < 35 * GB
    assert known_model("someone/unknown-model", "bfloat16") is None
    assert estimate("someone/unknown-model", "bfloat16", GenerateOptions()) is None  # no estimate, no refusal


# -- the arithmetic and the messages -------------------------------------------------------------------


def test_flux_on_24gb_is_refused_naming_what_fits(monkeypatch, tmp_path, flux_folder) -> None:
    with pytest.raises(NbdistUsageError) as info:
        fit(flux_folder, monkeypatch, tmp_path, {"memory_gb": 24, "free_gb": 23.9})
    message = str(info.value)
    assert message == (
        "FLUX.1-schnell needs ~33.1 GiB per worker, GPU 0 has 23.9 GiB free: add --offload model or --quantize nf4"
    )


def test_flux_with_offload_model_on_24gb_is_accepted(monkeypatch, tmp_path, flux_folder) -> None:
    fit(flux_folder, monkeypatch, tmp_path, {"memory_gb": 24, "free_gb": 23.9}, offload="model")


def test_flux_on_80gb_is_accepted(monkeypatch, tmp_path, flux_folder) -> None:
    fit(flux_folder, monkeypatch, tmp_path, {"memory_gb": 80, "free_gb": 79})


def test_not_enough_host_memory_for_the_kernel_copy(monkeypatch, tmp_path, flux_folder) -> None:
    with pytest.raises(NbdistUsageError) as info:
        fit(flux_folder, monkeypatch, tmp_path, {"memory_gb": 80, "free_gb": 79}, host_gb=16)
    assert str(info.value) == (
        "FLUX.1-schnell needs ~31.4 GiB of host memory (the kernel's copy), 16.0 GiB is available: add --quantize nf4"
    )


def test_sd15_on_16gb_is_accepted(monkeypatch, tmp_path) -> None:
    folder = checkpoint(tmp_path / "sd15", SD15, "StableDiffusionPipeline")
    fit(folder, monkeypatch, tmp_path, {"memory_gb": 16, "free_gb": 15})


def test_flux_on_16gb_suggests_only_what_fits(monkeypatch, tmp_path, flux_folder) -> None:
    with pytest.raises(
        NbdistUsageError, match=r"GPU 0 has 15\.0 GiB free: add --offload sequential or --quantize nf4$"
    ):
        fit(flux_folder, monkeypatch, tmp_path, {"memory_gb": 16, "free_gb": 15})
    with pytest.raises(
        NbdistUsageError, match=r"add --offload sequential \(instead of --offload model\) or --quantize"
    ):
        fit(flux_folder, monkeypatch, tmp_path, {"memory_gb": 16, "free_gb": 15}, offload="model")


def test_the_gpu_that_lacks_is_named(monkeypatch, tmp_path) -> None:
    folder = checkpoint(tmp_path / "sd15", SD15, "StableDiffusionPipeline")
    gpus(monkeypatch, tmp_path, {"memory_gb": 16}, {"memory_gb": 16, "free_gb": 2.5})
    with pytest.raises(NbdistUsageError) as info:
        check_fit(folder, GenerateOptions(), "cuda", "float16", 2, query_gpus())
    assert (
        str(info.value)
        == "sd15 needs ~2.6 GiB per worker, GPU 1 has 2.5 GiB free: add --offload model or --quantize nf4"
    )
    check_fit(folder, GenerateOptions(), "cuda", "float16", 1, query_gpus())  # -n 1 uses GPU 0 only
    gpus(monkeypatch, tmp_path, {"memory_gb": 16, "free_gb": 1})
    with pytest.raises(NbdistUsageError, match=r"GPU 0 has 1\.0 GiB free: add --quantize nf4 --offload model$"):
        check_fit(folder, GenerateOptions(), "cuda", "float16", 1, query_gpus())  # neither alone fits
    gpus(monkeypatch, tmp_path, {"memory_gb": 16, "free_gb": 0.5})
    with pytest.raises(NbdistUsageError) as info:
        check_fit(folder, GenerateOptions(), "cuda", "float16", 1, query_gpus())
    assert str(info.value).endswith(
        "GPU 0 has 0.5 GiB free, and even --quantize nf4 --offload sequential --vae-tiling needs ~1.1 GiB: "
        "use a larger GPU, or smaller images or batches"
    )


def test_working_memory_grows_with_pixels_and_batch_and_tiling_caps_the_decode() -> None:
    sd15 = known_model("stable-diffusion-v1-5/stable-diffusion-v1-5", "float16")
    assert sd15 is not None
    small = gpu_need(sd15, Setting(), 512 * 512, 1)
    big = gpu_need(sd15, Setting(), 2048 * 2048, 4)
    tiled = gpu_need(sd15, Setting(vae_tiling=True), 2048 * 2048, 4)
    assert small < 3 * GiB < tiled < big
    run = {"workers": 1, "pixels": 1536 * 1536, "batch": 2}
    message = refusal(sd15, Setting(), Machine((8 * GiB,), None), **run)
    assert message == "SD1.5 needs ~8.6 GiB per worker, GPU 0 has 8.0 GiB free: add --vae-tiling or --offload model"
    message = refusal(sd15, Setting(), Machine((3 * GiB,), None), **run)  # the activations alone are too big
    assert message is not None and message.endswith(
        "--offload sequential --vae-tiling needs ~4.9 GiB: use a larger GPU, or smaller images or batches"
    )


def test_host_memory_counts_the_kernel_copy_and_offload_copies() -> None:
    flux = known_model("black-forest-labs/FLUX.1-schnell", "bfloat16")
    assert flux is not None
    run = {"workers": 2, "pixels": 1024**2, "batch": 1}
    gpus2 = (24 * GiB, 24 * GiB)
    # offload model fits the GPUs, but three copies (kernel + one per worker) do not fit 64 GiB of RAM
    message = refusal(flux, Setting(offload="model"), Machine(gpus2, 64 * GiB), **run)
    assert message is not None and message.startswith("FLUX.1-schnell needs ~94.2 GiB of host memory")
    assert message.endswith("add --offload sequential (instead of --offload model) or --quantize nf4")
    assert refusal(flux, Setting(quantize="nf4"), Machine(gpus2, 8 * GiB), **run) is None  # workers load it


def test_torchao_counts_a_quantized_copy_per_worker_in_host_memory() -> None:
    """Issue 31, item 5: each worker quantizes its copy with torchao on the CPU before moving it to its
    GPU, all at once; the fit counted 0 host bytes for it (as for bitsandbytes, which quantizes on the
    GPU), so this refusal was None before. Two workers of FLUX.1-schnell: ~2 x 16.9 GiB."""
    flux = known_model("black-forest-labs/FLUX.1-schnell", "bfloat16")
    assert flux is not None
    run = {"workers": 2, "pixels": 1024**2, "batch": 1}
    gpus2 = (24 * GiB, 24 * GiB)
    assert refusal(flux, Setting(quantize="torchao-int8wo"), Machine(gpus2, 32 * GiB), **run) == (
        "FLUX.1-schnell needs ~33.7 GiB of host memory (one per worker, each quantized on the CPU for --quantize "
        "torchao-int8wo (2)), 32.0 GiB is available: add --quantize nf4 (instead of --quantize torchao-int8wo)"
    )
    assert refusal(flux, Setting(quantize="torchao-int8wo"), Machine(gpus2, 40 * GiB), **run) is None
    assert refusal(flux, Setting(quantize="nf4"), Machine(gpus2, 8 * GiB), **run) is None  # on the GPU


def test_fuse_lora_with_nf4_is_refused_before_anything_starts(tiny_model: str) -> None:
    """Issue 31, item 5: peft warns that merging a LoRA into 4-bit weights, and out again, drifts by
    rounding; --fuse-lora unfuses at every LoRA change. Refused in one line by the plan, which the magic,
    the CLI and ``generate`` share (before: the run went on to the GPU check, and on a GPU to the workers)."""
    with pytest.raises(NbdistUsageError) as info:
        nbdist.generate(tiny_model, ["a dog"], quantize="nf4", fuse_lora=True)
    assert str(info.value).startswith("--fuse-lora with --quantize nf4: merging a LoRA into 4-bit weights")
    assert "\n" not in str(info.value) and multiprocessing.active_children() == []


def test_device_map_places_whole_components() -> None:
    flux = known_model("black-forest-labs/FLUX.1-schnell", "bfloat16")
    assert flux is not None
    run = {"workers": 1, "pixels": 1024**2, "batch": 1}
    pair = Machine((23 * GiB, 23 * GiB), None)  # two 24 GB cards: 46 GiB in all, but the transformer is whole
    message = refusal(flux, Setting(device_map="balanced"), pair, **run)
    assert message == (
        "FLUX.1-schnell's largest component needs ~23.4 GiB on one GPU with --device-map balanced, GPU 0 has "
        "23.0 GiB free: add --offload sequential without --device-map or --quantize nf4"
    )
    assert refusal(flux, Setting(device_map="balanced"), Machine((40 * GiB, 40 * GiB), None), **run) is None


# -- before anything starts: the plan, the options, a real kernel ---------------------------------------


def test_generate_refuses_before_loading_or_forking(monkeypatch, tmp_path, flux_folder) -> None:
    gpus(monkeypatch, tmp_path, {"memory_gb": 24, "free_gb": 23.9})
    with pytest.raises(NbdistUsageError, match="add --offload model or --quantize nf4"):
        nbdist.generate(flux_folder, ["a dog"])
    assert multiprocessing.active_children() == []


def test_a_cpu_run_is_not_checked(flux_folder) -> None:
    check_fit(flux_folder, GenerateOptions(), "cpu", "float32", 4)


@no_gpu
def test_offload_and_quantize_need_a_gpu(monkeypatch, tmp_path, tiny_model) -> None:
    with pytest.raises(NbdistUsageError, match=r"^--offload needs a GPU; drop --device cpu or drop --offload$"):
        GenerateOptions(offload="model", device="cpu").validate()
    gpus(monkeypatch, tmp_path)  # an nvidia-smi that lists no GPU: the run is on the CPU
    for option, value in (("offload", "sequential"), ("quantize", "nf4")):
        with pytest.raises(NbdistUsageError) as info:
            nbdist.generate(tiny_model, ["a dog"], **{option: value})
        flag = f"--{option}"
        assert str(info.value) == f"{flag} needs a GPU, and this run is on the CPU (no GPU visible): drop {flag}"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"offload": "disk"}, "unknown --offload 'disk'; choose one of model, sequential"),
        ({"quantize": "fp4"}, "unknown --quantize 'fp4'; choose one of nf4, int8, torchao-int8wo"),
        ({"offload": "model", "device_map": "balanced"}, "--offload and --device-map both decide"),
    ],
)
def test_option_values(changes: dict, message: str) -> None:
    with pytest.raises(NbdistUsageError) as info:
        GenerateOptions(**changes).validate()
    assert message in str(info.value)


def test_quantize_without_bitsandbytes_is_one_line(monkeypatch, tmp_path, tiny_model) -> None:
    from importlib.machinery import PathFinder

    if PathFinder.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    gpus(monkeypatch, tmp_path, {"memory_gb": 24})
    with pytest.raises(NbdistUsageError) as info:
        nbdist.generate(tiny_model, ["a dog"], quantize="nf4")
    assert str(info.value) == "--quantize nf4 needs bitsandbytes, which is not installed: pip install bitsandbytes"
    with pytest.raises(NbdistUsageError, match=r"pip install torchao$"):
        nbdist.generate(tiny_model, ["a dog"], quantize="torchao-int8wo")
    assert sys.modules.get("bitsandbytes") is None  # looked for, never imported


def test_quantize_found_on_the_path_is_never_imported(monkeypatch, tmp_path, flux_folder) -> None:
    """An installed bitsandbytes passes the check without being imported (it would start CUDA)."""
    stand_in = tmp_path / "site" / "bitsandbytes"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text("raise RuntimeError('imported in the kernel')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    fit(flux_folder, monkeypatch, tmp_path, {"memory_gb": 24, "free_gb": 23.9}, quantize="nf4")
    with pytest.raises(NbdistUsageError, match="give --model ID_OR_PATH, not a loaded pipeline"):
        check_fit(object(), GenerateOptions(quantize="nf4"), "cuda", "bfloat16", 1)


def test_the_pool_key_changes_with_the_memory_options() -> None:
    from nbdist.parent.planning.plan import PoolKey

    base = PoolKey("m", 1, "cuda", "bfloat16", 1, 1, False, None, "None")
    for change in ({"offload": "model"}, {"quantize": "nf4"}, {"vae_tiling": True}):
        other = PoolKey(**{**base.__dict__, **change})
        assert other != base and base.difference(other) == next(iter(change))


def test_magic_refuses_flux_on_a_24gb_gpu(tmp_path: Path, flux_folder: str) -> None:
    bin_dir = fake_gpus(tmp_path / "gpus", [{"memory_gb": 24, "free_gb": 23.9}])
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    with Kernel(cwd=str(tmp_path), env={**env, "PATH": path_with(bin_dir)}) as kernel:
        assert kernel.execute("%load_ext nbdist").error is None
        ex = kernel.execute(f"%%distgen --model {flux_folder}\na lighthouse\n")
        assert_usage_error(ex, "FLUX.1-schnell needs ~33.1 GiB per worker, GPU 0 has 23.9 GiB free: add")
        host = "import nbdist.parent.machine.memory_fit as m; m._host_available = lambda: 256 * 2**30"
        assert kernel.execute(host).error is None  # the same answer whatever this machine's RAM
        ex = kernel.execute(f"%%distgen --model {flux_folder}\na lighthouse\n")
        assert_usage_error(ex, "FLUX.1-schnell needs ~33.1 GiB per worker, GPU 0 has 23.9 GiB free")
        assert_usage_error(ex, "add --offload model or --quantize nf4")
        assert not ex.image_updates()
        ex = kernel.execute(f"%%distgen --model {flux_folder} --offload model --device-map balanced\na lighthouse\n")
        assert_usage_error(ex, "--offload and --device-map both decide where the weights live")
        assert kernel.value("len(__import__('nbdist.pipelines').pipelines._CACHE)") == 0  # nothing loaded
        assert not [p for p in psutil.Process(kernel.pid).children() if p.status() != psutil.STATUS_ZOMBIE]


# -- in the workers ------------------------------------------------------------------------------------


def test_vae_tiling_is_enabled_in_the_workers(tiny_model: str, tmp_path: Path) -> None:
    """The worker's copy (by fork) calls ``vae.enable_tiling()``; the kernel's pipeline stays as it was."""
    from nbdist.pipelines import load_pipeline

    pipe = load_pipeline(tiny_model, "float32")
    marker = tmp_path / "tiling"
    original = pipe.vae.enable_tiling

    def enable_tiling(*args: object, **kwargs: object) -> None:
        marker.write_text(str(os.getpid()))
        original(*args, **kwargs)

    pipe.vae.enable_tiling = enable_tiling
    result = nbdist.generate(pipe, ["a dog"], steps=1, seed=0, num_processes=1, device="cpu", vae_tiling=True)
    assert result.complete, (result.worker_failures, result.logs)
    assert marker.exists() and int(marker.read_text()) != os.getpid()
    assert not pipe.vae.use_tiling


def test_readme_has_the_table_memory_fit_computes() -> None:
    """The table in docs/gpus.md (linked from the README) is the one the refusals' arithmetic gives."""
    page = (Path(__file__).parent.parent / "docs" / "gpus.md").read_text(encoding="utf-8")
    assert fit_table() in page


def test_workers_load_quantized_through_pipeline_quantization_config(monkeypatch, flux_folder) -> None:
    """``_load`` hands ``from_pretrained`` a config quantizing the transformer and T5, not CLIP nor the VAE."""
    from diffusers import DiffusionPipeline, PipelineQuantizationConfig

    from nbdist.spec import WorkerSetup
    from nbdist.worker.setup import _load

    seen: dict = {}
    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", lambda model, **kwargs: seen.update(kwargs) or "pipe")
    for kind, backend in (("nf4", "bitsandbytes_4bit"), ("int8", "bitsandbytes_8bit")):
        options = GenerateOptions(quantize=kind)
        setup = WorkerSetup("cuda", "bfloat16", 1, "/tmp", None, options, pipeline=None, model=flux_folder)
        assert _load(setup) == "pipe"
        config = seen["quantization_config"]
        assert isinstance(config, PipelineQuantizationConfig) and config.quant_backend == backend
        assert sorted(config.components_to_quantize) == ["text_encoder_2", "transformer"]
    assert seen["quantization_config"].quant_kwargs == {"load_in_8bit": True}
    assert sys.modules.get("bitsandbytes") is None


@no_gpu
def test_the_cli_under_a_launcher_checks_the_same(tiny_model) -> None:
    from nbdist.launched import LaunchEnv, _check

    env = LaunchEnv(rank=0, world_size=1, local_rank=0, local_world_size=1, launcher="torchrun")
    with pytest.raises(NbdistUsageError, match=r"^--offload needs a GPU, and this run is on the CPU"):
        _check(tiny_model, ["a dog"], GenerateOptions(offload="model"), env)


@pytest.mark.gpu
@pytest.mark.skipif(visible_gpu_count() == 0, reason="needs a CUDA GPU")
@pytest.mark.parametrize("offload", ["model", "sequential"])
def test_offload_on_gpus_gives_the_same_images(tiny_model: str, offload: str) -> None:
    """On a GPU machine: the offload hooks place the weights on the worker's GPU as they run; same images."""
    import numpy as np
    import torch

    plain = nbdist.generate(tiny_model, ["a dog"], steps=2, seed=0, num_processes=1)
    result = nbdist.generate(tiny_model, ["a dog"], steps=2, seed=0, num_processes=1, offload=offload)
    assert plain.complete and result.complete, (result.worker_failures, result.logs)
    diff = np.abs(np.asarray(plain.images[0], dtype=np.int16) - np.asarray(result.images[0], dtype=np.int16))
    assert diff.max() <= 2
    tiled = nbdist.generate(tiny_model, ["a dog"], steps=2, seed=0, num_processes=1, offload=offload, vae_tiling=True)
    assert tiled.complete, (tiled.worker_failures, tiled.logs)
    assert not torch.cuda.is_initialized()  # offloading happened in the worker, not in this process


def test_an_sdxl_vae_decoded_in_float32_is_counted(tiny_model: str) -> None:
    """SDXL's pipelines decode a float16 VAE in float32 (``force_upcast``): twice the decode's activations
    and a float32 copy of the VAE's weights. Uncounted, a run the check let through ran out of memory in
    its decode (issue 31, item 4)."""
    from dataclasses import replace

    from nbdist.parent.machine.memory_fit import DECODE_WORKING
    from nbdist.tiny_families import ensure_family

    sdxl = known_model("stabilityai/stable-diffusion-xl-base-1.0", "float16")
    assert sdxl is not None and sdxl.vae_upcast
    vae = sdxl.sizes(None)["vae"]
    pixels = 1024 * 1024
    extra = gpu_need(sdxl, Setting(), pixels, 1) - gpu_need(replace(sdxl, vae_upcast=False), Setting(), pixels, 1)
    assert extra == DECODE_WORKING + vae
    bf16 = known_model("stabilityai/stable-diffusion-xl-base-1.0", "bfloat16")
    assert bf16 is not None and gpu_need(bf16, Setting(), pixels, 1) == gpu_need(
        replace(bf16, vae_upcast=False), Setting(), pixels, 1
    )  # no upcast in bfloat16
    message = refusal(sdxl, Setting(), Machine((int(9.5 * GiB),), None), workers=1, pixels=pixels, batch=1)
    assert message is not None and message.startswith("SDXL needs ~9.7 GiB per worker") and "--vae-tiling" in message
    # Known from the folder and from a loaded pipeline alike; an SD1.x pipeline never upcasts.
    options = GenerateOptions()
    assert estimate(str(ensure_family("sdxl")), "float16", options).vae_upcast  # type: ignore[union-attr]
    assert not estimate(tiny_model, "float16", options).vae_upcast  # type: ignore[union-attr]
