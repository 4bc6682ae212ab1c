"""``--show-settings``: the settings a run would use, and where each one came from.

Each line is ``key = value  # source``, the source being the configuration file, the command-line
option that set it, or ``default``; the rules that end up enabled follow. Values are written as
in ``[tool.trainlint]``, so a line can be pasted into pyproject.toml.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from trainlint.catalog import rule_infos
from trainlint.config import Settings, display_config_path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path):
        return json.dumps(value.as_posix())
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }" if value else "{}"
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value)


def _source(settings: Settings, key: str, options: Sequence[tuple[str, bool]]) -> str:
    """The first command-line option given, else the file when it sets the key, else default."""
    for option, given in options:
        if given:
            return option
    if key in settings.file_keys and settings.config_path is not None:
        return display_config_path(settings.config_path)
    return "default"


def settings_lines(args: argparse.Namespace, settings: Settings) -> list[tuple[str, str, str]]:
    """(key, value, source) for every setting, after the command line was applied."""
    selection_options = [("--select", args.select is not None), ("--extend-select", bool(args.extend_select))]
    rows = [
        ("select", settings.select if settings.select is not None else "(the rules on by default)", selection_options),
        ("extend-select", settings.extend_select, selection_options),
        ("ignore", settings.ignore, [("--ignore", bool(args.ignore))]),
        ("per-file-ignores", settings.per_file_ignores, []),
        ("test-paths", settings.test_paths, []),
        ("exclude", settings.exclude, []),
        ("extend-exclude", settings.extend_exclude, []),
        ("respect-gitignore", settings.respect_gitignore, []),
        ("force-exclude", settings.force_exclude or args.force_exclude, [("--force-exclude", args.force_exclude)]),
        ("unsafe-fixes", settings.unsafe_fixes or args.unsafe_fixes, [("--unsafe-fixes", args.unsafe_fixes)]),
        ("cache-dir", settings.cache_path, []),
    ]
    lines = [(key, _toml(value) if not isinstance(value, str) else value, _source(settings, key, options))
             for key, value, options in rows]
    for code, info in rule_infos().items():
        configured = settings.rule_options.get(code, {})
        for option, default in info.default_options.items():
            value = configured.get(option, default)
            source = display_config_path(settings.config_path) if option in configured and settings.config_path else "default"
            lines.append((f"rules.{code}.{option}", _toml(value), source))
    return lines


def show_settings(args: argparse.Namespace, settings: Settings, paths: Sequence[str], stream: TextIO) -> int:
    config = display_config_path(settings.config_path) if settings.config_path else "none (defaults)"
    stream.write(f"Settings for: {' '.join(paths)}\n")
    stream.write(f"Configuration file: {config}\n")
    stream.write(f"Project root: {settings.root}\n\n")
    lines = settings_lines(args, settings)
    width = max(len(f"{key} = {value}") for key, value, _ in lines)
    for key, value, source in lines:
        stream.write(f"{f'{key} = {value}':<{width}}  # {source}\n")
    enabled = sorted(settings.enabled_codes())
    stream.write(f"\nEnabled rules ({len(enabled)}): {', '.join(enabled)}\n")
    return 0
