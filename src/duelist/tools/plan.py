"""How long ``infer.py`` will take on a machine you do not have: ``python -m duelist plan``.

    python -m duelist plan runs=[runs/a,runs/b] test=test.parquet hardware=t4x2 quantization=int8 time_budget_min=690

For each run, the test file's rows are tokenized as the run scores them (its own tokenizer from its checkpoint, its
token budget ``model.max_length``, its head's sequences per pair), the forward FLOPs of each sequence are counted at
the model's full depth (a·L + b·L² for a sequence of L tokens, two counts on the meta device: ``footprint``'s curve),
and their sum is timed at the rate the model gets on the hardware (:data:`duelist.core.hardware.THROUGHPUT`, each
figure with its source): where its weights (at ``quantization``; an unmerged QLoRA run's 4-bit base is nf4) and a
batch of ``max_batch_tokens`` fit one device, one copy per device and every device busy; where they fit only split
over the devices (``device_map``), one device busy at a time; else it does not fit in memory. Swap TTA (``tta=swap``)
doubles a pair head's work; a reward head is swap-symmetric. Then whether every member fits ``time_budget_min``, and
if not, the share of rows the second member can score in what the first leaves (``infer.py ensemble.cascade=true``:
the first member on every row, the second on the rows the first is least sure of). Feature-model runs score in
seconds on a CPU: counted as zero. A projection from counted FLOPs at a sustained rate: padding, tokenization and
loading are not in it (``infer.py``'s own time budget measures as it goes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from duelist.core import options
from duelist.core.errors import DuelistError, exit_cleanly_on_user_error
from duelist.core.files import shown, write_json
from duelist.core.hardware import THROUGHPUT
from duelist.core.logs import quiet_library_logs
from duelist.core.options import option


@dataclass
class PlanOptions:
    runs: list = option([], "run dirs, in the order infer.py gets them (the cascade's first member first)")
    models: list = option(
        [], "model files (conf/model) to plan before any run, e.g. gemma2_9b (no download): tokens from characters"
    )
    test: str = option(help="the test file infer.py will score (parquet, csv or jsonl)")
    hardware: str = option("t4x2", f"the machine: {' | '.join(THROUGHPUT)}")
    quantization: str = option("none", "how infer.py loads the weights (its quantization=): none | int8 | nf4")
    max_batch_tokens: int = option(16384, "infer.py's max_batch_tokens: the batch that must fit beside the weights")
    tta: str = option("swap", "swap (each row scored twice, A and B exchanged) | none")
    time_budget_min: float = option(690.0, "minutes infer.py may take (Kaggle: 12 h, less loading and margin)")
    rows: int = option(0, "project to this many rows, lengths drawn from the file's (0: the file's own rows)")
    out: Optional[str] = option(None, "JSON path (default: outputs/plan/<test file>-<hardware>.json)")


CHARS_PER_TOKEN = "pkg:duelist/assets/chars_per_token.json"
CJK = ("Chinese", "Japanese", "Korean")


def estimated_lengths(test: Any, model_cfg: Any) -> tuple[np.ndarray, str]:
    """Tokens of each row's sequences without the model's tokenizer (rows x the head's sequences per pair): a
    sequence's characters (its head's texts: prompt and both responses, or prompt and one) over the characters per
    token of the row's language (Qwen2.5's tokenizer on the bundled sample: English, Chinese; other languages as the
    table says), cut at the token budget; the template's few tokens are not counted."""
    import json

    from duelist.core.files import resolve_path
    from duelist.core.languages import detect_languages, language_names
    from duelist.models.heads import head_of

    table = json.loads(Path(resolve_path(CHARS_PER_TOKEN)).read_text())
    ratios = table["chars_per_token"]
    if "language" in test and test["language"].notna().all():
        languages = language_names(test["language"])
    else:
        languages = detect_languages(test["prompt"].fillna("").astype(str))
    ratio = languages.map(lambda lang: ratios.get(lang, ratios["Chinese" if lang in CJK else "English"]))
    texts = [test[c].fillna("").astype(str).str.len().to_numpy() for c in ("prompt", "response_a", "response_b")]
    chars = head_of(model_cfg).sequence_chars(*texts)
    max_length = int(model_cfg.max_length)
    tokens = np.minimum(np.ceil(chars / ratio.to_numpy()[:, None]), max_length).astype(int)
    how = f"characters / characters per token of the row's language ({table['tokenizer']}), cut at {max_length}"
    return tokens, how


def plan_model(name: str, test: Any, opts: PlanOptions, rng: np.random.Generator) -> dict[str, Any]:
    """A model file's plan before any run: its shape from the file (or from the model file its ``shape`` names, when
    the weights are not here: nothing is downloaded), its tokens estimated from characters."""
    from duelist.core.hydra_setup import compose_train
    from duelist.models.kinds import kind_of
    from duelist.models.network_flops import flops_curve, hf_config

    try:
        cfg = compose_train([f"model={name}"])
        if not kind_of(cfg.model).timed_by_flops:
            raise DuelistError(f"model={name} scores in seconds on a CPU: nothing to plan")
        config = hf_config(cfg)
    except DuelistError as err:
        raise DuelistError(f"plan models=[{name}]: {err}") from err
    lengths, how = estimated_lengths(test, cfg.model)
    return timed(name, cfg.model, config, opts.quantization, lengths, flops_curve(cfg, config=config), opts, rng, how)


def timed(
    member: str,
    model_cfg: Any,
    config: Any,
    quantization: str,
    lengths: np.ndarray,
    curve: dict,
    opts: PlanOptions,
    rng: np.random.Generator,
    how: str,
) -> dict[str, Any]:
    """One member's plan: ``lengths`` are the tokens of each row's sequences (rows x its head's sequences per pair),
    ``config`` the network's shape at full depth, its weights held at ``quantization``."""
    from duelist.core.hardware import placement
    from duelist.models.heads import head_of
    from duelist.models.network_build import attention
    from duelist.models.network_flops import row_flops, weight_gb, working_gb

    if opts.rows:
        lengths = lengths[rng.choice(len(lengths), size=opts.rows, replace=True)]
    head = head_of(model_cfg)
    flops = float(row_flops(curve, lengths).sum()) * head.passes(opts.tta)
    hw = THROUGHPUT[opts.hardware]
    weights = weight_gb(config, quantization)
    eager = attention(model_cfg) == "eager"  # flash-attention and sdpa keep no scores: Gemma-2 runs eager
    working = working_gb(config, opts.max_batch_tokens, int(model_cfg.max_length), eager)
    placed = placement(hw, quantization, weights, working)
    per_row = lengths.sum(axis=1)
    return {
        "run": member,
        "model": model_cfg.name,
        "head": head.name,
        "passes": head.passes(opts.tta),
        "rows": int(len(lengths)),
        "tokens": int(lengths.sum()),
        "tokens_counted": how,
        "tokens_p50_p99_max": [int(np.percentile(per_row, 50)), int(np.percentile(per_row, 99)), int(per_row.max())],
        "flops_curve": curve,
        "forward_flops": flops,
        "quantization": quantization,
        "weights_gb": weights,
        "working_gb": working,
        "placement": placed.how,
        "devices_busy": placed.busy,
        "rate": hw.rates[quantization].source,
        "hours": flops / placed.flops_per_s / 3600 if placed.busy else None,
    }


def plan_member(run_dir: Path, test: Any, opts: PlanOptions, rng: np.random.Generator) -> dict[str, Any]:
    from duelist.models.kinds import run_kind
    from duelist.models.network_flops import base_config, flops_curve, row_lengths, scoring_quantization
    from duelist.runs.run_dir import RunDir

    run = RunDir(run_dir).require_checkpoint()
    cfg = run.read_checkpoint_config()
    if not run_kind(run).timed_by_flops:
        return {"run": str(run_dir), "model": cfg.model.name, "hours": 0.0, "note": "trees: seconds on a CPU"}
    lengths, cfg = row_lengths(run_dir, test)
    config = base_config(run_dir, cfg)
    quantization = scoring_quantization(run, cfg, opts.quantization)
    how = f"the run's tokenizer and token budget (max_length {cfg.model.max_length})"
    return timed(
        str(run_dir), cfg.model, config, quantization, lengths, flops_curve(cfg, config=config), opts, rng, how
    )


BATCH_TOKENS = 16384  # infer.py max_batch_tokens of the docs' Kaggle recipe: the batch that must fit beside the weights


def hours_by_placement(
    hardware: str, weights_gb: dict[str, float], working_gb: float, flops: float
) -> dict[str, dict[str, Any]]:
    """For each quantization of ``weights_gb`` (none | int8 | nf4 -> GB of weights), where the model runs on
    ``hardware`` (:func:`duelist.core.hardware.placement`) and the hours ``flops`` of forward passes take there (None:
    it does not fit in memory)."""
    from duelist.core.hardware import placement

    hw = THROUGHPUT[hardware]
    out = {}
    for quantization, weights in weights_gb.items():
        placed = placement(hw, quantization, weights, working_gb)
        out[quantization] = {
            "placement": placed.how,
            "devices_busy": placed.busy,
            "hours": flops / placed.flops_per_s / 3600 if placed.busy else None,
            "rate": hw.rates[quantization].source,
        }
    return out


def cascade(hours: list[float | None], budget_h: float) -> dict[str, Any]:
    """What fits: every member on every row, or the first on every row and the second on a share of them; a member
    that does not fit in memory (None) fits nothing."""
    if any(h is None for h in hours):
        return {"fits": False, "second_member_share": None, "spare_h": None, "memory": False}
    if sum(hours) <= budget_h:
        return {"fits": True, "second_member_share": 1.0 if len(hours) > 1 else None, "spare_h": budget_h - sum(hours)}
    if len(hours) < 2 or hours[0] > budget_h:
        return {"fits": False, "second_member_share": 0.0 if len(hours) > 1 else None, "spare_h": budget_h - sum(hours)}
    return {"fits": False, "second_member_share": (budget_h - hours[0]) / hours[1], "spare_h": 0.0}


def run(opts: PlanOptions) -> dict[str, Any]:
    from dataclasses import asdict

    from duelist.data.reading import load_test

    if opts.hardware not in THROUGHPUT:
        raise DuelistError(f"hardware={opts.hardware}: one of {', '.join(THROUGHPUT)}")
    if opts.tta not in ("swap", "none"):
        raise DuelistError(f"tta={opts.tta}: swap | none")
    if opts.quantization not in ("none", "int8", "nf4"):
        raise DuelistError(f"quantization={opts.quantization}: none | int8 | nf4")
    if not opts.runs and not opts.models:
        raise DuelistError(
            "runs=[RUN_DIR,...]: the runs infer.py will score with (or models=[NAME,...] before any run)"
        )
    test = load_test(opts.test)
    rng = np.random.default_rng(0)
    members = [plan_member(Path(r), test, opts, rng) for r in opts.runs]
    members += [plan_model(name, test, opts, rng) for name in opts.models]
    report = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "test": opts.test,
        "hardware": {"name": opts.hardware, **asdict(THROUGHPUT[opts.hardware])},
        "tta": opts.tta,
        "max_batch_tokens": opts.max_batch_tokens,
        "time_budget_min": opts.time_budget_min,
        "members": members,
        "plan": cascade([m["hours"] for m in members], opts.time_budget_min / 60),
        "what_it_is": "a projection: counted forward FLOPs at a sustained FLOP/s (measured, or assumed where the "
        "source says so), weights counted from the shape and a batch's memory estimated; padding, tokenizing and "
        "loading are not in it",
    }
    out = Path(opts.out or f"outputs/plan/{Path(opts.test).stem}-{opts.hardware}.json")
    write_json(out, report)
    print_plan(report, out)
    return report


def print_plan(report: dict[str, Any], out: Path) -> None:
    hw = report["hardware"]
    rows = next((m["rows"] for m in report["members"] if "rows" in m), 0)
    print(
        f"plan for {rows} rows of {report['test']} on {report['hardware']['name']} ({hw['devices']} × "
        f"{hw['memory_gb']:.0f} GB), tta={report['tta']}, budget {report['time_budget_min']:.0f} min"
    )
    for m in report["members"]:
        if "rows" not in m:
            print(f"  {shown(m['run'])} ({m['model']}): {m['note']}")
            continue
        p50, p99, top = m["tokens_p50_p99_max"]
        name = shown(m["run"]) if Path(m["run"]).exists() else m["run"]
        if m["hours"] is None:
            print(f"  {name}: {m['placement']}")
            continue
        rate = hw["rates"][m["quantization"]]
        passes = f"{m['passes']} passes (swap TTA)" if m["passes"] == 2 else "1 pass"
        print(f"  {name}: {m['hours']:.2f} h ({m['hours'] * 60:.1f} min) for all rows, {passes}")
        print(f"    memory: {m['placement']}")
        print(f"    rate: {rate['flops'] / 1e12:.1f} TFLOP/s a device ({rate['source']})")
        print(f"    tokens per row p50 {p50}, p99 {p99}, max {top} ({m['tokens_counted']})")
    plan = report["plan"]
    if plan.get("memory") is False:
        print("  does not fit in memory: a member's weights and a batch do not fit the devices (quantization=int8|nf4)")
    elif plan["fits"]:
        print(f"  fits: {plan['spare_h']:.2f} h to spare")
    elif plan["second_member_share"]:
        print(
            f"  does not fit: the first member on every row, the second on the {plan['second_member_share']:.0%} of"
            " rows the first is least sure of (the cascade)"
        )
    else:
        print(f"  does not fit: {-plan['spare_h']:.2f} h over, even the first member alone")
    print(f"  {report['what_it_is']}")
    print(f"wrote {out}")


def parse(argv: Sequence[str] | None = None) -> PlanOptions:
    return options.parse(PlanOptions, argv, "python -m duelist plan", __doc__.split("\n\n")[0])


@exit_cleanly_on_user_error
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    quiet_library_logs()
    return run(parse(argv))
