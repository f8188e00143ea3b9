"""The command line checked before Hydra runs: a typo in a key, a group option or a fixed-choice value stops with
one ``error:`` line naming the setting and what is allowed (:func:`check_command_line`)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

# Hydra's own flags that take a value (the next argument is not an override)
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--info", "-i", "--experimental-rerun"}
_OTHER_CONFIG = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"}


def entry_point_groups(config_dir: Path) -> dict[str, list[str]]:
    """The config groups each entry point composes (``train``, ``infer``: the groups of its defaults list)."""
    import yaml

    groups = {}
    for name in ("train", "infer"):
        defaults = yaml.safe_load((Path(config_dir) / f"{name}.yaml").read_text()).get("defaults", [])
        groups[name] = [next(iter(d)) for d in defaults if isinstance(d, dict) and not next(iter(d)).startswith("over")]
    return groups


def _one_line(err: Exception, overrides: list[str], config_dir: Path, config_name: str) -> str:
    """Hydra's several-line composition error as one line that names the setting and what is allowed."""
    import re

    text, cause = str(err), err.__cause__
    missing_option = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if missing_option:
        group, option = missing_option.groups()
        options = re.findall(r"^\t(\S+)$", text, flags=re.M)
        return f"{group}={option}: no such option in conf/{group}/; available: {', '.join(options)}"
    key = re.search(r"Could not override '([^']+)'", text) or re.search(r"Error merging override ([^=\s]+)=", text)
    key = key.group(1) if key else None
    if key and "No match in the defaults list" in text:  # a group of the other entry point
        groups = entry_point_groups(config_dir)
        owner = next((f"; it is a group of {name}.py" for name, own in groups.items() if key in own), "")
        own = ", ".join(groups[config_name])
        return f"{key}: not a group of {config_name}.py{owner}; {config_name}.py's groups: {own}"
    if key and cause is not None and type(cause).__name__ in ("ConfigKeyError", "ConfigAttributeError"):
        parent, _, leaf = key.rpartition(".")
        known = ""
        try:
            from hydra import compose, initialize_config_dir

            with initialize_config_dir(str(config_dir)):
                cfg = compose(config_name, overrides=[o for o in overrides if not o.split("=")[0].lstrip("+~") == key])
            node = OmegaConf.select(cfg, parent) if parent else cfg
            if node is not None and hasattr(node, "keys"):
                known = f"; {parent or config_name} has: {', '.join(map(str, node.keys()))}"
        except Exception:  # the list of keys is a courtesy; the line stands without it
            pass
        return f"{key}: no such setting{known} (every key is in conf/, with a comment)"
    if key and cause is not None:
        first = str(cause).strip().splitlines()[0]
        value = next(
            (o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == key and "=" in o), None
        )
        return f"{key}={value}: {first}" if value is not None else f"{key}: {first}"
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("To append")]
    return "; ".join(lines)


def check_command_line(config_dir: str | Path, config_name: str, argv: list[str]) -> None:
    """Compose ``config_dir/config_name`` (the entry point's own ``conf/``) with the command line's overrides before
    Hydra runs (the first value of each sweep), so a typo in a key, a group option or a fixed-choice value stops with
    one ``error:`` line and exit code 2, like every other input error (Hydra itself prints several lines, suggests
    ``+key=value`` and exits 1). ``hydra.*`` settings, Hydra's own flags and commands with another config are left to
    Hydra."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from duelist.core.errors import DuelistError

    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _OTHER_CONFIG or arg.split("=")[0] in _OTHER_CONFIG:
            return
        elif arg.startswith("-"):
            skip = arg in _FLAGS_WITH_VALUE
        else:
            args.append(arg)
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except Exception:
        return  # a syntax error: Hydra reports it with the position
    overrides = []
    for override in parsed:
        if override.key_or_group.split("/")[0].split(".")[0] == "hydra":
            continue
        if override.is_sweep_override():
            try:
                overrides.append(f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}")
            except Exception:  # interval(...) and other sweeper-only syntax: the sweeper checks it
                continue
        else:
            overrides.append(override.input_line)
    try:
        with initialize_config_dir(str(Path(config_dir).resolve())):
            cfg = compose(config_name, overrides=overrides)
    except Exception as err:
        raise DuelistError(_one_line(err, overrides, Path(config_dir).resolve(), config_name)) from err
    import dataclasses

    for override in parsed:  # +key / ++key add keys to open maps (data.language_quota); a typed group has none to add
        parent, _, leaf = override.key_or_group.rpartition(".")
        if (override.is_add() or override.is_force_add()) and parent and parent.split(".")[0] != "hydra":
            node = OmegaConf.select(cfg, parent)
            schema = OmegaConf.get_type(node) if node is not None else None
            if (
                schema is not None
                and dataclasses.is_dataclass(schema)
                and leaf not in {f.name for f in dataclasses.fields(schema)}
            ):
                known = ", ".join(k for k in node.keys() if k != leaf)
                raise DuelistError(
                    f"{override.input_line}: {parent} has no setting {leaf} to add ({parent} has: {known}); "
                    f"+ adds keys only to open maps such as data.language_quota"
                )
