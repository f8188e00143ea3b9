"""Does a QLoRA run's reload reproduce its OOF on every CPU kernel within reach? One process per kernel setting
(``ONEDNN_MAX_CPU_ISA``, ``ATEN_CPU_CAPABILITY``: AMX-BF16, AVX-512 with and without bf16 instructions, AVX2), each
training the three QLoRA runs of the test suite (``DUELIST_CPU_BNB=1``: a tiny Gemma-2 with fp32 and bf16 weights, a
tiny Qwen3 reward model) and measuring, against the run's own oof.parquet:

- the reload scoring the validation rows in the batches validation used (``trainer.eval_batch_size``),
- the reload in other batches (16 rows, and one row at a time: other padding, other matmul shapes),
- the merged export (``python -m duelist export``) in the validation batches,

once with duelist's 4-bit path (dequantize to the compute dtype, then matmul: :func:`duelist.core.hardware.
plain_4bit_kernels`) and once with bitsandbytes' own CPU path (weights repacked and computed in bf16 on CPUs with
AVX-512 BF16: what duelist did before), so the two can be compared on the same machine.

    python bench/qlora_kernels.py                       # every setting; about 10 minutes on 2 cores
    python bench/qlora_kernels.py settings=[default]

Writes ``bench/results/qlora-kernels-<machine>.json`` with device, versions and commit.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List

from duelist.core import options
from duelist.core.options import option

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {  # name -> environment: the kernels oneDNN (matmul, bf16) and ATen (elementwise, reductions) may use
    "default": {},
    "avx512_bf16_no_amx": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
    "avx512_no_bf16": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
}
RUNS = {  # the QLoRA runs of tests/test_gpu_paths_on_cpu.py and tests/test_reward_models.py
    "gemma2_fp32": [],
    "gemma2_bf16": ["model.dtype=bf16"],
    "qwen3_reward": ["model=tiny_qwen3_rm", "model.name_or_path={rm}", "trainer.batch_size=8", "trainer.max_steps=4"],
}
QLORA = ["lora=qlora", "lora.r=8", "lora.dropout=0.0", "trainer.lr=1e-3"]  # on the test suite's TINY settings


def worker(mode: str, out: str) -> None:
    """One kernel setting (its environment is this process's): train, reload, merge, compare."""
    os.environ["DUELIST_CPU_BNB"] = "1"
    import numpy as np
    import torch

    import duelist.models.network_build as network_build
    from duelist.core.hardware import autocast_dtype, half_weights
    from duelist.core.hydra_setup import compose_train
    from duelist.core.logs import quiet_library_logs
    from duelist.data.splits import load_train_valid
    from duelist.models.heads import head_of
    from duelist.models.network_scoring import predict_p_a
    from duelist.runs.run_dir import RunDir
    from duelist.tasks.train import train
    from duelist.tools.example_data import write_tiny_reward_model
    from duelist.tools.export import export_run

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import TINY  # the tiny runs' settings of the test suite

    quiet_library_logs()
    if mode == "bitsandbytes":  # bitsandbytes' own CPU path: what duelist did before plain_4bit_kernels
        network_build.plain_4bit_kernels = lambda model: 0
    cpu = torch.device("cpu")
    root = Path(tempfile.mkdtemp(prefix="duelist-qlora-kernels-"))
    rm = write_tiny_reward_model(root / "tiny_qwen3_rm")

    def rescore(run: Path, oof, batch: int) -> np.ndarray:
        built, cfg = network_build.load_checkpoint(run, cpu)
        _, valid = load_train_valid(cfg.data)
        valid = valid.set_index("id").loc[oof["id"]].reset_index()
        head = head_of(cfg.model)
        ids = head.encoder(built.tokenizer, cfg.model).encode(valid, None)
        amp = autocast_dtype("auto", cpu, half_weights(built.model))
        return predict_p_a(built.model, head, ids, built.tokenizer.pad_token_id, batch, cpu, amp, quiet=True)

    found = {"aten_capability": torch.backends.cpu.get_cpu_capability()}
    for name, overrides in RUNS.items():
        cfg = compose_train([*TINY, *QLORA, *(o.format(rm=rm) for o in overrides)])
        run = root / name
        train(cfg, run)
        oof = RunDir(run).read_oof()
        p = oof["p_a"].to_numpy()
        batch = int(cfg.trainer.eval_batch_size)
        row = {f"reload_batch_{b}": float(np.abs(rescore(run, oof, b) - p).max()) for b in (batch, 16, 1)}
        export_run(run, root / f"{name}-merged")
        row["merged"] = float(np.abs(rescore(root / f"{name}-merged", oof, batch) - p).max())
        found[name] = row
        print(mode, name, json.dumps(row), flush=True)
    Path(out).write_text(json.dumps(found))


@dataclass
class KernelsOptions:
    settings: List[str] = option(list(SETTINGS), f"kernel settings: {', '.join(SETTINGS)}")
    out: str = option(str(ROOT / "bench" / "results" / f"qlora-kernels-{platform.machine()}.json"), "JSON path")


def main(argv: list[str]) -> None:
    from duelist.core.files import write_json
    from duelist.tools.bench import device_name, versions

    opts = options.parse(KernelsOptions, argv, "python bench/qlora_kernels.py", __doc__.split("\n\n")[0])
    results: dict = {}
    for setting in opts.settings:
        for mode in ("duelist", "bitsandbytes"):
            with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
                env = {**os.environ, **SETTINGS[setting], "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
                done = subprocess.run(
                    [sys.executable, __file__, "--worker", mode, tmp.name], env=env, capture_output=True, text=True
                )
                if done.returncode != 0:
                    raise SystemExit(f"{setting}/{mode} failed:\n{done.stderr[-3000:]}")
                results.setdefault(setting, {"environment": SETTINGS[setting]})[mode] = json.loads(
                    Path(tmp.name).read_text()
                )
            print(setting, mode, json.dumps(results[setting][mode]), flush=True)
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    report = {
        "what": "max |p_a - OOF| of a QLoRA run's reload (validation batches, 16 rows, 1 row) and merged export, per "
        "CPU kernel setting; duelist's 4-bit path vs bitsandbytes' own CPU path",
        "device": device_name(torch.device("cpu")),
        "cpu_flags": sorted(f for f in cpu_flags() if "bf16" in f or "amx" in f or f.startswith("avx512_vnni")),
        "versions": versions() | {"bitsandbytes": __import__("bitsandbytes").__version__},
        "commit": commit.strip(),
        "settings": results,
    }
    write_json(Path(opts.out), report)
    print(f"wrote {opts.out}")


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2], sys.argv[3])
    else:
        main(sys.argv[1:])
