"""How long ``infer.py`` will take on a machine you do not have: ``python -m duelist plan``.

    python -m duelist plan runs=[runs/a,runs/b] test=test.parquet hardware=t4x2 time_budget_min=690

For each run, the test file's rows are tokenized as the run scores them (its own tokenizer from its checkpoint, its
token budget ``model.max_length``), the forward FLOPs of each row are counted at the model's full depth (a·L + b·L²
for a row of L tokens, two counts on the meta device: ``footprint``'s curve), and their sum is timed at the hardware's
sustained FLOP/s (:data:`duelist.core.hardware.THROUGHPUT`, each figure with its source); swap TTA (``tta=swap``)
doubles it. Then whether every member fits ``time_budget_min``, and if not, the share of rows the second member can
score in what the first leaves (``infer.py ensemble.cascade=true``: the first member on every row, the second on the
rows the first is least sure of). Feature-model runs score in seconds on a CPU: counted as zero. A projection from
counted FLOPs at a sustained rate: padding, tokenization and loading are not in it (``infer.py``'s own time budget
measures as it goes).
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
        [], "model files (conf/model) to plan before any run exists, e.g. gemma2_9b_random: tokens from characters"
    )
    test: str = option(help="the test file infer.py will score (parquet, csv or jsonl)")
    hardware: str = option("t4x2", f"the machine: {' | '.join(THROUGHPUT)}")
    tta: str = option("swap", "swap (each row scored twice, A and B exchanged) | none")
    time_budget_min: float = option(690.0, "minutes infer.py may take (Kaggle: 12 h, less loading and margin)")
    rows: int = option(0, "project to this many rows, lengths drawn from the file's (0: the file's own rows)")
    out: Optional[str] = option(None, "JSON path (default: outputs/plan/<test file>-<hardware>.json)")


CHARS_PER_TOKEN = "pkg:duelist/assets/chars_per_token.json"
CJK = ("Chinese", "Japanese", "Korean")


def estimated_lengths(test: Any, max_length: int) -> tuple[np.ndarray, str]:
    """Tokens per row without the model's tokenizer: the row's characters (prompt and both responses) over the
    characters per token of its language (Qwen2.5's tokenizer on the bundled sample: English, Chinese; other
    languages as the table says), cut at the token budget; the template's few tokens are not counted."""
    import json

    from duelist.core.files import resolve_path
    from duelist.core.languages import detect_languages, language_names

    table = json.loads(Path(resolve_path(CHARS_PER_TOKEN)).read_text())
    ratios = table["chars_per_token"]
    if "language" in test and test["language"].notna().all():
        languages = language_names(test["language"])
    else:
        languages = detect_languages(test["prompt"].fillna("").astype(str))
    ratio = languages.map(lambda lang: ratios.get(lang, ratios["Chinese" if lang in CJK else "English"]))
    chars = sum(test[c].fillna("").astype(str).str.len() for c in ("prompt", "response_a", "response_b"))
    tokens = np.minimum(np.ceil(chars.to_numpy() / ratio.to_numpy()), max_length).astype(int)
    how = f"characters / characters per token of the row's language ({table['tokenizer']}), cut at {max_length}"
    return tokens, how


def plan_model(name: str, test: Any, opts: PlanOptions, rng: np.random.Generator) -> dict[str, Any]:
    """A model file's plan before any run: its shape from the file, its tokens estimated from characters."""
    from duelist.models.network_flops import flops_curve
    from duelist.tools.footprint import compose

    try:
        cfg = compose(name, None)
    except DuelistError as err:
        raise DuelistError(f"models=[{name}]: {err}; a real shape without download: {name}_random") from err
    lengths, how = estimated_lengths(test, int(cfg.model.max_length))
    return timed(name, cfg.model.name, lengths, flops_curve(cfg), opts, rng, how)


def timed(
    member: str, model: str, lengths: np.ndarray, curve: dict, opts: PlanOptions, rng: np.random.Generator, how: str
) -> dict[str, Any]:
    from duelist.models.network_flops import row_flops

    if opts.rows:
        lengths = rng.choice(lengths, size=opts.rows, replace=True)
    reward = lengths.ndim == 2  # two sequences per row: swap-symmetric, TTA adds nothing
    flops = float(row_flops(curve, lengths).sum()) * (2 if opts.tta == "swap" and not reward else 1)
    hw = THROUGHPUT[opts.hardware]
    per_row = lengths.sum(axis=1) if reward else lengths
    return {
        "run": member,
        "model": model,
        "rows": int(len(lengths)),
        "tokens": int(lengths.sum()),
        "tokens_counted": how,
        "tokens_p50_p99_max": [int(np.percentile(per_row, 50)), int(np.percentile(per_row, 99)), int(per_row.max())],
        "flops_curve": curve,
        "forward_flops": flops,
        "hours": flops / (hw.devices * hw.flops) / 3600,
    }


def plan_member(run_dir: Path, test: Any, opts: PlanOptions, rng: np.random.Generator) -> dict[str, Any]:
    from duelist.models.kinds import kind_of
    from duelist.models.network_flops import base_config, flops_curve, row_lengths
    from duelist.runs.run_dir import RunDir

    cfg = RunDir(run_dir).require_checkpoint().read_checkpoint_config()
    if kind_of(cfg.model).name != "network":
        return {"run": str(run_dir), "model": cfg.model.name, "hours": 0.0, "note": "trees: seconds on a CPU"}
    lengths, cfg = row_lengths(run_dir, test)
    curve = flops_curve(cfg, config=base_config(run_dir, cfg))
    how = f"the run's tokenizer and token budget (max_length {cfg.model.max_length})"
    return timed(str(run_dir), cfg.model.name, lengths, curve, opts, rng, how)


def cascade(hours: list[float], budget_h: float) -> dict[str, Any]:
    """What fits: every member on every row, or the first on every row and the second on a share of them."""
    if sum(hours) <= budget_h:
        return {"fits": True, "second_member_share": 1.0 if len(hours) > 1 else None, "spare_h": budget_h - sum(hours)}
    if len(hours) < 2 or hours[0] > budget_h:
        return {"fits": False, "second_member_share": 0.0 if len(hours) > 1 else None, "spare_h": budget_h - sum(hours)}
    return {"fits": False, "second_member_share": (budget_h - hours[0]) / hours[1], "spare_h": 0.0}


def run(opts: PlanOptions) -> dict[str, Any]:
    from duelist.data.reading import load_test

    if opts.hardware not in THROUGHPUT:
        raise DuelistError(f"hardware={opts.hardware}: one of {', '.join(THROUGHPUT)}")
    if opts.tta not in ("swap", "none"):
        raise DuelistError(f"tta={opts.tta}: swap | none")
    if not opts.runs and not opts.models:
        raise DuelistError(
            "runs=[RUN_DIR,...]: the runs infer.py will score with (or models=[NAME,...] before any run)"
        )
    test = load_test(opts.test)
    rng = np.random.default_rng(0)
    members = [plan_member(Path(r), test, opts, rng) for r in opts.runs]
    members += [plan_model(name, test, opts, rng) for name in opts.models]
    hw = THROUGHPUT[opts.hardware]
    report = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "test": opts.test,
        "hardware": {"name": opts.hardware, **vars(hw)},
        "tta": opts.tta,
        "time_budget_min": opts.time_budget_min,
        "members": members,
        "plan": cascade([m["hours"] for m in members], opts.time_budget_min / 60),
        "what_it_is": "a projection: counted forward FLOPs at a sustained FLOP/s; padding, tokenizing and loading "
        "are not in it",
    }
    out = Path(opts.out or f"outputs/plan/{Path(opts.test).stem}-{opts.hardware}.json")
    write_json(out, report)
    print_plan(report, out)
    return report


def print_plan(report: dict[str, Any], out: Path) -> None:
    hw = report["hardware"]
    rows = next((m["rows"] for m in report["members"] if "rows" in m), 0)
    print(
        f"plan for {rows} rows of {report['test']} on {hw['name']} ({hw['devices']} × {hw['flops'] / 1e12:.0f} TFLOP/s "
        f"{hw['precision']}: {hw['source']}), tta={report['tta']}, budget {report['time_budget_min']:.0f} min"
    )
    for m in report["members"]:
        if "rows" not in m:
            print(f"  {shown(m['run'])} ({m['model']}): {m['note']}")
            continue
        p50, p99, top = m["tokens_p50_p99_max"]
        name = shown(m["run"]) if Path(m["run"]).exists() else m["run"]
        print(
            f"  {name}: {m['hours']:.2f} h ({m['hours'] * 60:.1f} min) for all rows; tokens per row p50 {p50}, p99 "
            f"{p99}, max {top} ({m['tokens_counted']})"
        )
    plan = report["plan"]
    if plan["fits"]:
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
