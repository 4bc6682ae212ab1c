"""``[tool.trainlint]`` in pyproject.toml, merged with the command line into one Settings."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from trainlint.catalog import rule_infos

if TYPE_CHECKING:
    from trainlint.rule import Rule

# Codes for problems with the input itself, reported whatever is selected (as ruff does).
SYNTAX_ERROR = "TL001"
IO_ERROR = "TL002"
INTERNAL_ERROR = "TL003"
ALWAYS_ON = frozenset({SYNTAX_ERROR, IO_ERROR, INTERNAL_ERROR})

_LIST_KEYS = ("select", "ignore", "extend-select", "exclude", "extend-exclude", "test-paths")
_BOOL_KEYS = ("force-exclude", "unsafe-fixes", "respect-gitignore")
_DEPRECATED_KEYS = {
    "bare-noqa": "'bare-noqa' is deprecated and has no effect: a bare `# noqa` now always suppresses "
    "trainlint's findings on its line, as in ruff and flake8; remove the key",
}
_KNOWN_KEYS = frozenset({*_LIST_KEYS, *_BOOL_KEYS, *_DEPRECATED_KEYS, "per-file-ignores", "rules", "cache-dir"})

DEFAULT_EXCLUDES = (
    ".bzr", ".direnv", ".eggs", ".git", ".hg", ".ipynb_checkpoints", ".mypy_cache", ".nox",
    ".pytype", ".ruff_cache", ".svn", ".tox", ".trainlint_cache", ".venv", "__pypackages__",
    "_build", "buck-out", "build", "dist", "node_modules", "site-packages", "venv",
)


# Tests are not training: the training rules (every TL1xx-TL4xx) skip files matching these, as
# `per-file-ignores` would. `test-paths = []` lints tests like any code.
DEFAULT_TEST_PATHS = ("tests/*", "test/*", "*/tests/*", "*/test/*", "test_*.py", "*_test.py", "conftest.py")
TRAINING_RULES = ("TL1", "TL2", "TL3", "TL4")


class ConfigError(Exception):
    """A bad option, key or code: exit 2 with this one-line message."""


@dataclass
class Settings:
    root: Path = field(default_factory=Path.cwd)
    config_path: Path | None = None
    select: list[str] | None = None
    extend_select: list[str] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDES))
    extend_exclude: list[str] = field(default_factory=list)
    per_file_ignores: dict[str, list[str]] = field(default_factory=dict)
    test_paths: list[str] = field(default_factory=lambda: list(DEFAULT_TEST_PATHS))
    rule_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    force_exclude: bool = False
    unsafe_fixes: bool = False
    respect_gitignore: bool = True
    cache_dir: Path | None = None
    file_keys: frozenset[str] = frozenset()  # the keys the configuration file set (--show-settings)
    warnings: list[str] = field(default_factory=list)  # one line each, printed by the command line

    def enabled_codes(self) -> frozenset[str]:
        rules = rule_infos()
        if self.select is None:
            enabled = {code for code, rule in rules.items() if rule.default_enabled}
        else:
            enabled = set(expand_selectors(self.select, "select"))
        enabled |= set(expand_selectors(self.extend_select, "extend-select"))
        enabled -= set(expand_selectors(self.ignore, "ignore"))
        return frozenset(enabled)

    def make_rules(self) -> list[Rule]:
        from trainlint.rule import all_rules

        rules = all_rules()
        return [rules[code](self.rule_options.get(code)) for code in sorted(self.enabled_codes())]

    def ignored_for(self, path: str) -> frozenset[str]:
        """Codes that ``per-file-ignores`` switches off for a file. Patterns are relative to the
        configuration's directory, whatever the current directory (``path`` is as displayed:
        relative to the current directory, or absolute)."""
        from fnmatch import fnmatch

        if not self.per_file_ignores and not self.test_paths:
            return frozenset()
        relative_path = _relative_to(path, self.root)
        name = relative_path.rsplit("/", 1)[-1]
        codes: set[str] = set()
        ignores = [*self.per_file_ignores.items(), *((pattern, list(TRAINING_RULES)) for pattern in self.test_paths)]
        for pattern, selectors in ignores:
            if fnmatch(relative_path, pattern) or fnmatch(name, pattern):
                codes |= set(expand_selectors(selectors, "per-file-ignores"))
        return frozenset(codes)

    def is_test_path(self, path: str | os.PathLike[str]) -> bool:
        """Whether a file matches ``test-paths`` (relative to the configuration's directory)."""
        from fnmatch import fnmatch

        relative_path = _relative_to(os.fspath(path), self.root)
        name = relative_path.rsplit("/", 1)[-1]
        return any(fnmatch(relative_path, pattern) or fnmatch(name, pattern) for pattern in self.test_paths)

    def digest(self) -> str:
        """What the cache key needs: everything that can change a file's findings."""
        data = {
            "codes": sorted(self.enabled_codes()),
            "per_file_ignores": self.per_file_ignores,
            "test_paths": self.test_paths,
            "rule_options": self.rule_options,
        }
        from trainlint.source import content_digest

        return content_digest(json.dumps(data, sort_keys=True).encode(), size=12)

    @property
    def cache_path(self) -> Path:
        return self.cache_dir or self.root / ".trainlint_cache"


def _relative_to(path: str, root: Path) -> str:
    absolute = os.path.abspath(path)
    base = os.path.abspath(root)
    if absolute.startswith(base.rstrip(os.sep) + os.sep):
        return Path(os.path.relpath(absolute, base)).as_posix()
    return Path(path).as_posix()


def expand_selectors(selectors: Iterable[str], where: str) -> list[str]:
    """Codes matched by selectors such as ``TL101``, ``TL1`` or ``ALL``; unknown ones are errors."""
    codes = list(rule_infos())  # TL001-TL003 are rules too (trainlint/rules/meta.py)
    expanded: list[str] = []
    for selector in selectors:
        if not isinstance(selector, str):
            raise ConfigError(f"{where}: expected a rule code, got {selector!r}")
        selector = selector.strip().upper()
        matched = codes if selector == "ALL" else [c for c in codes if c.startswith(selector)]
        if not selector or not matched:
            raise ConfigError(f"{where}: unknown rule code or prefix {selector!r}")
        expanded.extend(matched)
    return expanded


def find_config(start: Path) -> Path | None:
    """The nearest pyproject.toml above ``start`` that has a [tool.trainlint] table."""
    directory = start.resolve()
    if directory.is_file():
        directory = directory.parent
    for candidate_dir in (directory, *directory.parents):
        candidate = candidate_dir / "pyproject.toml"
        if candidate.is_file():
            try:
                text = candidate.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if "trainlint" not in text:
                continue
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                # it names trainlint: silently ignoring it would lint with the wrong settings
                raise ConfigError(f"{candidate}: invalid TOML: {exc}") from None
            tool = data.get("tool", {})
            if isinstance(tool, dict) and "trainlint" in tool:
                return candidate
    return None


def load_settings(config_file: Path | None, start: Path) -> Settings:
    """Settings from ``config_file`` (``--config``) or the nearest pyproject.toml above ``start``."""
    path = config_file if config_file is not None else find_config(start)
    if path is None:
        return Settings(root=Path.cwd())
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--config: {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"--config: {path}: is a directory, not a TOML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    in_pyproject = _is_pyproject(data, path)
    return settings_from_table(_trainlint_table(data, path), path, in_pyproject)


def _is_pyproject(data: Mapping[str, Any], path: Path) -> bool:
    """A pyproject.toml by name, or by its tables (``[tool]``, ``[project]``, ``[build-system]``),
    which a trainlint-only file never has."""
    return path.name == "pyproject.toml" or any(key in data for key in ("tool", "project", "build-system"))


def _trainlint_table(data: Mapping[str, Any], path: Path) -> Mapping[str, Any]:
    """The settings in a TOML document: its ``[tool.trainlint]`` when it is a pyproject.toml,
    else the whole document."""
    if not _is_pyproject(data, path):
        return data
    tool = data.get("tool", {})
    table = tool.get("trainlint") if isinstance(tool, dict) else None
    if table is None:
        raise ConfigError(f"--config: {display_config_path(path)}: has no [tool.trainlint] table")
    if not isinstance(table, dict):
        raise ConfigError(f"{display_config_path(path)}: [tool.trainlint] must be a table")
    return table


def display_config_path(path: Path) -> str:
    """The configuration file as error messages name it: relative to the current directory when
    it is inside it, else absolute."""
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(absolute)


def _string_list(table: Mapping[str, Any], key: str, where: str) -> list[str] | None:
    if key not in table:
        return None
    value = table[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: '{key}' must be a list of strings")
    return list(value)


def _selector_list(table: Mapping[str, Any], key: str, where: str) -> list[str] | None:
    """A list of rule codes or prefixes, each checked now so that the error names the file and key."""
    value = _string_list(table, key, where)
    if value is not None:
        expand_selectors(value, f"{where}: '{key}'")
    return value


def settings_from_table(table: Mapping[str, Any], path: Path, in_pyproject: bool = False) -> Settings:
    """Settings from the trainlint table of ``path``; errors name the file and the key."""
    name = display_config_path(path)
    where = f"{name} [tool.trainlint]" if in_pyproject else name
    unknown = sorted(set(table) - _KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}'")
    settings = Settings(root=path.resolve().parent, config_path=path, file_keys=frozenset(table))
    settings.select = _selector_list(table, "select", where)
    settings.extend_select = _selector_list(table, "extend-select", where) or []
    settings.ignore = _selector_list(table, "ignore", where) or []
    exclude = _string_list(table, "exclude", where)
    if exclude is not None:
        settings.exclude = exclude
    settings.extend_exclude = _string_list(table, "extend-exclude", where) or []
    test_paths = _string_list(table, "test-paths", where)
    if test_paths is not None:
        settings.test_paths = test_paths
    for key in _BOOL_KEYS:
        if key in table:
            if not isinstance(table[key], bool):
                raise ConfigError(f"{where}: '{key}' must be true or false")
            setattr(settings, key.replace("-", "_"), table[key])
    for key, message in _DEPRECATED_KEYS.items():
        if key in table:
            settings.warnings.append(f"{where}: {message}")
    if "cache-dir" in table:
        settings.cache_dir = settings.root / _confined_cache_dir(table["cache-dir"], where)
    settings.per_file_ignores = _per_file_ignores(table.get("per-file-ignores", {}), where)
    settings.rule_options = _rule_options(table.get("rules", {}), where)
    settings.enabled_codes()  # validates every selector now, so errors surface before linting
    return settings


def _confined_cache_dir(value: Any, where: str) -> str:
    """``cache-dir`` as the configuration may set it: a directory of its own inside the project.
    A checkout's pyproject.toml is not trusted to make trainlint create and write directories
    elsewhere (``/home/me/.ssh``, ``../..``); ``--cache-dir`` on the command line may."""
    if not isinstance(value, str):
        raise ConfigError(f"{where}: 'cache-dir' must be a string")
    normalized = os.path.normpath(value)
    if os.path.isabs(value) or normalized in (".", os.curdir) or normalized.split(os.sep)[0] == os.pardir:
        raise ConfigError(
            f"{where}: 'cache-dir' must be a directory inside the project, not {value!r} "
            "(use --cache-dir on the command line for another place)"
        )
    return normalized


def _per_file_ignores(value: Any, where: str) -> dict[str, list[str]]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: 'per-file-ignores' must be a table of pattern = [codes]")
    result = {}
    for pattern, codes in value.items():
        listed = _string_list({pattern: codes}, pattern, f"{where} per-file-ignores")
        expand_selectors(listed or [], f"{where}: per-file-ignores '{pattern}'")
        result[pattern] = listed or []
    return result


def _rule_options(value: Any, where: str) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: 'rules' must be a table of [tool.trainlint.rules.<CODE>]")
    rules = rule_infos()
    result: dict[str, dict[str, Any]] = {}
    for code, options in value.items():
        rule = rules.get(code.upper())
        if rule is None:
            raise ConfigError(f"{where}: unknown rule code '{code}' in [tool.trainlint.rules]")
        if not isinstance(options, dict):
            raise ConfigError(f"{where}: [tool.trainlint.rules.{code}] must be a table")
        for key, option in options.items():
            if key not in rule.default_options:
                raise ConfigError(f"{where}: unknown option '{key}' for rule {rule.code}")
            _check_option(rule.code, key, option, rule.default_options[key], rule.option_bounds.get(key), where)
        result[rule.code] = dict(options)
    return result


def _check_option(code: str, key: str, value: Any, default: Any, bounds: tuple[float, float] | None, where: str) -> None:
    """The option has the default's type (an integer where a float is expected is fine; a boolean
    is not a number) and, for a number, lies strictly between the rule's bounds."""
    expected = type(default)
    numeric = expected is float and isinstance(value, (int, float))
    if isinstance(value, bool) != (expected is bool) or not (isinstance(value, expected) or numeric):
        raise ConfigError(f"{where}: option '{key}' of rule {code} must be {expected.__name__}, got {value!r}")
    if bounds is not None:
        low, high = bounds
        if not low < value < high:  # also false for NaN
            upper = "" if high == float("inf") else f" and less than {high:g}"
            raise ConfigError(
                f"{where}: option '{key}' of rule {code} must be greater than {low:g}{upper}, got {value!r}"
            )


def apply_cli_overrides(
    settings: Settings,
    select: Sequence[str] | None,
    extend_select: Sequence[str] | None,
    ignore: Sequence[str] | None,
) -> Settings:
    """The command line is a second layer over the file, as in ruff: ``--select`` starts afresh
    (the file's ``ignore`` no longer applies), ``--extend-select`` re-enables what the file
    ignores, and ``--ignore`` removes from the result."""
    if select is not None or extend_select:
        chosen = set(expand_selectors(select, "--select")) if select is not None else set(settings.enabled_codes())
        chosen |= set(expand_selectors(extend_select or [], "--extend-select"))
        settings.select, settings.extend_select, settings.ignore = sorted(chosen), [], []
    if ignore:
        settings.ignore = [*settings.ignore, *ignore]
        expand_selectors(ignore, "--ignore")
    return settings
