"""Compile the benchmark's Triton kernels for the GPU machine, on a machine without a GPU.

A lent GPU session has 30 device minutes, and a fresh machine compiles every kernel of ours and
every autotune candidate before it times anything (~1 s each, a few hundred of them). Here the
benchmark's own cases of ours run on the CPU at their real shapes with Triton's driver replaced
by a stand-in for an H100 (:class:`StandInH100`): each launch is specialised and compiled exactly
as on the device (same arguments, same divisibility of sizes and pointers, every autotune
candidate), the compiled kernel goes into Triton's file cache, and the launch itself does
nothing. Carried as ``.triton_cache/`` (``run_on_device.sh`` relocates it), the device then loads
these kernels instead of compiling them; ``kernels.py`` prints how many it loaded and compiled.

Triton's cache key includes a hash of the Triton build (``triton_key``: its Python sources and
``libtriton.so``). The GPU machine runs Triton 3.6.0 under Python 3.12, whose ``libtriton.so``
differs from this machine's build, so ``--libtriton`` names the device build's library (from the
cp312 wheel) and the key is formed with its hash: the same key the device computes, if its
Triton is that wheel. If it is not, the device compiles as it would have anyway.

    bash benchmarks/precompile.sh                 # installs Triton 3.6.0, runs this, slims, packs
    python benchmarks/precompile.py --cache DIR --libtriton <cp312 libtriton.so> \\
        [--families delta,gla] [--shapes S,L] [--no-e2e] [--peers]

``--peers`` compiles fla's chunk ops too (its first calls compiled and autotuned for 110-260 s
each on the device), with ``torch.cuda``'s device queries answered as an H100 answers them.

Autotuning itself (timing the candidates) needs the GPU: the device still times them once.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

H100 = {"max_shared_mem": 232448, "multiprocessor_count": 132, "max_num_regs": 65536,
        "warpSize": 32, "sm_clock_rate": 1980000, "mem_clock_rate": 2619000, "mem_bus_width": 5120}


class _StandInUtils:
    def get_device_properties(self, device: int) -> dict[str, int]:
        return dict(H100)

    def load_binary(self, name: str, kernel: bytes, shared: int, device: int) -> tuple:
        return object(), object(), 0, 0, 1024  # module, function, registers, spills, max threads


class StandInH100:
    """Triton's active driver for an sm_90 device that is not there: kernels compile for it,
    launches do nothing, and the autotuner's "timing" of a candidate is one (empty) launch, so
    every candidate is compiled."""

    utils = _StandInUtils()

    def is_active(self) -> bool:
        return True

    def get_current_device(self) -> int:
        return 0

    def set_current_device(self, device: int) -> None:
        pass

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self) -> Any:
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)

    def get_benchmarker(self) -> Callable[..., list[float]]:
        def bench(fn: Callable[[], None], quantiles: Any = None, **_: Any) -> list[float]:
            fn()
            return [1.0, 1.0, 1.0]
        return bench

    def launcher_cls(self, src: Any, metadata: Any) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def key_as_on_device(device_libtriton: Path) -> str:
    """Triton's build key with the device build's ``libtriton.so`` hash in place of this one's,
    installed where Triton's cache looks it up; returns the key."""
    import sysconfig

    import triton
    from triton.runtime import cache

    ext = sysconfig.get_config_var("EXT_SUFFIX").split(".")[-1]
    here = _sha256(Path(triton.__file__).parent / "_C" / f"libtriton.{ext}")
    key = cache.triton_key().replace(here, _sha256(device_libtriton))
    cache.triton_key = lambda: key  # get_cache_key reads the module's global
    return key


def stand_in(cache_dir: Path, device_libtriton: Path | None) -> None:
    """Everything before the first kernel: cache folder, driver, build key, Triton backend."""
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_CACHE_DIR"] = str(cache_dir.resolve())
    os.environ["MIRAS_KERNELS"] = "triton"
    os.environ.pop("TRITON_CACHE_AUTOTUNING", None)  # never store the stand-in's timings
    import triton
    from triton.runtime import driver

    driver.set_active(StandInH100())
    if device_libtriton is not None:
        key_as_on_device(device_libtriton)
    import mirasdsl.kernels.dispatch as dispatch

    dispatch.triton_available = lambda device: True  # the kernels "run" on CPU tensors
    print(f"triton {triton.__version__} ({triton.__file__}), cache {cache_dir}", flush=True)


def stand_in_torch_cuda() -> None:
    """What fla asks ``torch.cuda`` at import and per call (device name, capability, SM count)
    answered as an H100 does, so fla picks the device's kernels and tile lists; its kernels run
    on CPU tensors (no device index: no device context)."""
    import types

    import torch

    props = types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", major=9, minor=0, multi_processor_count=132,
                                  total_memory=85_000_000_000, shared_memory_per_block_optin=H100["max_shared_mem"])
    torch.cuda.get_device_name = lambda device=None: props.name
    torch.cuda.get_device_capability = lambda device=None: (9, 0)
    torch.cuda.get_device_properties = lambda device=None: props
    torch.cuda.current_device = lambda: 0
    torch.cuda.device_count = lambda: 1


class _OnceTimer:
    """``harness.Timer``'s interface, each call made once and not timed: the harness's own
    calls (forward without autograd; forward + backward of its fixed cotangent) compile what
    the device would."""

    def median_ms(self, fn: Callable[[], Any]) -> float:
        fn()
        return 0.0


def run_case(name: str, make: Callable[[], Any]) -> None:
    """One benchmark case through the harness's forward and forward + backward calls."""
    from harness import time_forward, time_forward_backward

    start = time.time()
    prep = make()
    time_forward(prep, _OnceTimer())
    note = ""
    try:
        time_forward_backward(prep, _OnceTimer())
    except Exception as exc:  # noqa: BLE001 - e.g. fla refuses its gated backward on Hopper + Triton 3.6
        note = f" (backward not compiled: {type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    print(f"  {name}: {time.time() - start:.1f} s{note}", flush=True)


def gdn_mixer_case(seq_len: int) -> Callable[[], Any]:
    """The end-to-end model's Gated DeltaNet mixer, called as the model calls it (bf16 autocast,
    batch 1): the same kernel launches, without the 340M model's CPU arithmetic."""
    def make() -> Any:
        import torch

        import cases
        from end_to_end import spec_variants

        mixer = cases.mixer_from_spec(spec_variants()["gdn-hybrid"], lambda n: n.mixer.memory.kind == "matrix")
        return cases.module_case(mixer, torch.randn(1, seq_len, mixer.node.d_model, requires_grad=True))
    return make


def compiled_here(impl: str, family: str) -> bool:
    """Cases whose kernels are Triton's to compile: ours (attention is SDPA / flex, compiled by
    torch on the device) and fla's (titans-pytorch and SDPA have none)."""
    return not family.startswith("attention") and (impl == "ours" or impl.startswith("fla."))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, default=Path(".triton_cache"))
    p.add_argument("--libtriton", type=Path, default=None,
                   help="the GPU machine's libtriton.so (Triton 3.6.0, cp312 wheel); default: this build's")
    p.add_argument("--families", default="", help="comma list (substring match); empty: all of ours")
    p.add_argument("--shapes", default="S,L")
    p.add_argument("--no-e2e", action="store_true", help="leave out the end-to-end model's mixer")
    p.add_argument("--peers", action="store_true",
                   help="also fla's chunk ops (fla-core on PYTHONPATH), with torch.cuda answering as an H100")
    a = p.parse_args(argv)
    if a.libtriton is not None and not a.libtriton.is_file():
        print(f"precompile.py: error: --libtriton {a.libtriton}: no such file", file=sys.stderr)
        return 2
    a.cache.mkdir(parents=True, exist_ok=True)
    stand_in(a.cache, a.libtriton)
    import cases
    from kernels import plan
    from triton_cache import HitCounter

    cases.set_device("cpu")
    counter = HitCounter()
    counter.install()
    if a.peers:
        stand_in_torch_cuda()
    wanted = argparse.Namespace(shapes=a.shapes, families=a.families, dry_run=False,
                                impls="ours,peer" if a.peers else "ours")
    todo = [(f"{row.impl} {row.family} {row.shape}", make) for row, make in plan(wanted)
            if compiled_here(row.impl, row.family)]
    if not a.no_e2e:
        todo.append(("end_to_end gdn mixer, B=1, T=16384", gdn_mixer_case(16384)))
    for name, make in todo:
        run_case(name, make)
    print(counter.line())
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
