"""Options of the ``python -m duelist COMMAND`` tools, typed the way ``train.py`` and ``infer.py`` take theirs:
``key=value`` (Hydra's override style, lists as ``key=[a,b]``), so every command a user types has one style::

    python -m duelist runs sort=val/log_loss model=tiny_gemma2
    python -m duelist kaggle runs=[RUN_A,RUN_B] out=kaggle_pkg quantization=nf4

Each tool declares its options as a dataclass whose fields carry a one-line ``help``; :func:`parse` checks the
arguments against it (an unknown key, a value of the wrong type or outside a fixed set of choices stops in one line
that names the known options) and ``--help`` prints them.
"""

from __future__ import annotations

import dataclasses
import enum
import sys
from typing import Any, Sequence, TypeVar

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from duelist.core.errors import DuelistError

T = TypeVar("T")


def option(default: Any = MISSING, help: str = "", **kwargs: Any) -> Any:
    """A field of a tool's options: its default (none: required) and its one-line help."""
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def plain(text: str) -> str:
    """A docstring as a terminal shows it: without reStructuredText's double backticks."""
    return text.replace("``", "")


def help_text(schema: type, prog: str, about: str) -> str:
    about = plain(about)
    lines = [f"{prog} [key=value ...]", "", about.strip(), "", "options (key=value; lists as key=[a,b]):"]
    for f in dataclasses.fields(schema):
        kind = getattr(f.type, "__name__", str(f.type))
        kind = kind[len("Optional[") : -1] if kind.startswith("Optional[") else kind
        if isinstance(f.type, type) and issubclass(f.type, enum.Enum):
            kind = " | ".join(f.type.__members__)
        if f.default is not dataclasses.MISSING and f.default is not MISSING:
            default = f.default.name if isinstance(f.default, enum.Enum) else f.default
            shown = f"default: {default}"
        elif f.default_factory is not dataclasses.MISSING:
            shown = f"default: {f.default_factory()}"
        else:
            shown = "required"
        lines.append(f"  {f.name}={kind}  ({shown})")
        lines.append(f"      {f.metadata.get('help', '')}")
    return "\n".join(lines)


def parse(schema: type[T], argv: Sequence[str] | None, prog: str, about: str) -> T:
    """``argv`` (``key=value`` strings) as an instance of ``schema``; ``-h``/``--help`` prints the options and exits."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(help_text(schema, prog, about))
        raise SystemExit(0)
    names = [f.name for f in dataclasses.fields(schema)]
    known = f"known options: {', '.join(names)} (--help describes them)"
    for arg in argv:
        if "=" not in arg or arg.startswith("-"):
            key = arg.lstrip("-").split("=")[0].replace("-", "_")
            hint = f" (as key=value: {key}=...)" if key in names else ""
            raise DuelistError(f"{prog}: {arg!r} is not key=value{hint}; {known}")
    cfg = OmegaConf.structured(schema)
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(argv))
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise DuelistError(f"{prog}: give {', '.join(m + '=...' for m in missing)}; {known}")
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", "") or ""
        what = str(err).splitlines()[0]
        if key and key.split(".")[0] not in names:
            what = f"no option {key}"
        raise DuelistError(f"{prog}: {what}; {known}") from None
