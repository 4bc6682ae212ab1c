"""``[tool.trainlint]`` configuration: what each key does, and that mistakes stop the run (exit 2)
with one line naming the bad key or code, never silence."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import run_cli
from trainlint.config import ConfigError, Settings, apply_cli_overrides, expand_selectors, load_settings
from trainlint.rule import all_rules


def write_config(directory: Path, body: str, name: str = "pyproject.toml") -> Path:
    path = directory / name
    path.write_text(body, encoding="utf-8")
    return path


# -- selection -------------------------------------------------------------------------------------


def test_selectors_expand_codes_prefixes_and_all() -> None:
    codes = set(all_rules())
    assert expand_selectors(["TL001"], "select") == ["TL001"]
    assert set(expand_selectors(["TL00"], "select")) == {c for c in codes if c.startswith("TL00")}
    assert set(expand_selectors(["tl"], "select")) >= codes  # case-insensitive
    assert set(expand_selectors(["ALL"], "select")) >= codes


@pytest.mark.parametrize("bad", ["TL9999", "XX1", "", "TL99"])
def test_unknown_selector_is_an_error_naming_it(bad: str) -> None:
    with pytest.raises(ConfigError, match="unknown rule code or prefix"):
        expand_selectors([bad], "select")


def test_default_selection_is_the_rules_on_by_default() -> None:
    enabled = Settings().enabled_codes()
    assert "TL004" not in enabled  # unused-noqa is off by default
    assert {code for code, rule in all_rules().items() if rule.default_enabled} == set(enabled)


def test_select_extend_select_and_ignore_combine_like_ruff(tmp_path: Path) -> None:
    write_config(tmp_path, '[tool.trainlint]\nselect = ["TL00"]\nignore = ["TL003"]\nextend-select = ["TL004"]\n')
    settings = load_settings(None, tmp_path)
    assert settings.enabled_codes() == {"TL001", "TL002", "TL004"}
    # the command line is a layer over the file: --extend-select re-enables what the file ignores
    extended = apply_cli_overrides(load_settings(None, tmp_path), None, ["TL003"], None)
    assert extended.enabled_codes() == {"TL001", "TL002", "TL003", "TL004"}
    # --select starts afresh, --ignore removes from the result
    apply_cli_overrides(settings, ["TL00"], None, ["TL002"])
    assert settings.enabled_codes() == {"TL001", "TL003", "TL004"}


def test_per_file_ignores_match_paths_relative_to_the_config(tmp_path: Path, monkeypatch) -> None:
    write_config(tmp_path, '[tool.trainlint]\nper-file-ignores = { "tests/*" = ["TL00"], "conftest.py" = ["TL001"] }\n')
    settings = load_settings(None, tmp_path)
    monkeypatch.chdir(tmp_path)
    assert "TL001" in settings.ignored_for("tests/test_x.py")
    assert "TL001" in settings.ignored_for("src/deep/conftest.py")  # a bare name matches anywhere
    assert settings.ignored_for("src/train.py") == frozenset()
    # run from a sub-directory: the displayed path is relative to it, the pattern to the config
    (tmp_path / "tests").mkdir()
    monkeypatch.chdir(tmp_path / "tests")
    assert "TL001" in settings.ignored_for("test_x.py")


def test_rule_options_are_merged_over_the_defaults(tmp_path: Path) -> None:
    rule = next((r for r in all_rules().values() if r.default_options), None)
    if rule is None:
        pytest.skip("no rule with options is registered yet")
    key, default = next(iter(rule.default_options.items()))
    if isinstance(default, bool):
        value, literal = not default, str(not default).lower()
    elif isinstance(default, (int, float)):
        value = default * 2  # within the option's bounds (eps must stay below 1)
        literal = repr(value)
    else:
        value = f"{default}x"
        literal = f'"{value}"'
    write_config(tmp_path, f"[tool.trainlint]\n[tool.trainlint.rules.{rule.code}]\n{key} = {literal}\n")
    settings = load_settings(None, tmp_path)
    made = {r.code: r for r in apply_cli_overrides(settings, [rule.code], None, None).make_rules()}
    assert made[rule.code].options[key] == value


# -- where the configuration comes from ------------------------------------------------------------


def test_nearest_pyproject_with_a_trainlint_table_wins(tmp_path: Path) -> None:
    write_config(tmp_path, '[tool.trainlint]\nselect = ["TL001"]\n')
    inner = tmp_path / "pkg"
    inner.mkdir()
    write_config(inner, '[project]\nname = "pkg"\n')  # no [tool.trainlint]: skipped
    settings = load_settings(None, inner / "train.py")
    assert settings.config_path == tmp_path / "pyproject.toml"
    assert settings.root == tmp_path.resolve()
    assert settings.enabled_codes() == {"TL001"}


def test_config_file_option_reads_a_plain_toml_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'select = ["TL002"]\nunsafe-fixes = true\n', name="trainlint.toml")
    settings = load_settings(path, tmp_path)
    assert settings.enabled_codes() == {"TL002"} and settings.unsafe_fixes


def test_no_configuration_gives_the_defaults(tmp_path: Path) -> None:
    settings = load_settings(None, tmp_path)
    assert settings.config_path is None and not settings.unsafe_fixes and settings.respect_gitignore


def test_changing_the_configuration_changes_the_cache_key(tmp_path: Path) -> None:
    base = load_settings(None, tmp_path)
    write_config(tmp_path, '[tool.trainlint]\nignore = ["TL108"]\n')
    assert load_settings(None, tmp_path).digest() != base.digest()
    assert Settings().digest() == Settings().digest()


# -- errors: exit 2, one line naming the problem ---------------------------------------------------

CONFIG_ERRORS = [
    ('[tool.trainlint]\nselct = ["TL1"]\n', "unknown key 'selct'"),
    ('[tool.trainlint]\nselect = ["TL999"]\n', "unknown rule code or prefix 'TL999'"),
    ('[tool.trainlint]\nignore = ["E501"]\n', "unknown rule code or prefix 'E501'"),
    ('[tool.trainlint]\nselect = "TL1"\n', "'select' must be a list of strings"),
    ('[tool.trainlint]\nforce-exclude = "yes"\n', "'force-exclude' must be true or false"),
    ('[tool.trainlint]\ncache-dir = 3\n', "'cache-dir' must be a string"),
    ('[tool.trainlint]\nper-file-ignores = { "tests/*" = ["TL777"] }\n', "per-file-ignores 'tests/*'"),
    ('[tool.trainlint]\nper-file-ignores = ["tests/*"]\n', "'per-file-ignores' must be a table"),
    ("[tool.trainlint.rules.TL123]\n", "unknown rule code 'TL123'"),
    ("[tool.trainlint.rules.TL001]\nfoo = 1\n", "unknown option 'foo' for rule TL001"),
    ("[tool.trainlint]\nrules = { TL001 = 3 }\n", "[tool.trainlint.rules.TL001] must be a table"),
    ("[tool.trainlint\nselect = []\n", "invalid TOML"),
    ('[tool.trainlint]\nselect = ["TL999"]\n', "[tool.trainlint]: 'select': unknown rule code or prefix 'TL999'"),
    ('[tool.trainlint]\nextend-select = ["E"]\n', "[tool.trainlint]: 'extend-select': unknown rule code or prefix 'E'"),
    ("[tool.trainlint.rules.TL201]\neps = -1.0\n", "option 'eps' of rule TL201 must be greater than 0 and less than 1, got -1.0"),
    ("[tool.trainlint.rules.TL201]\neps = 1\n", "option 'eps' of rule TL201 must be greater than 0 and less than 1, got 1"),
    ("[tool.trainlint.rules.TL201]\neps = nan\n", "option 'eps' of rule TL201 must be greater than 0"),
    ("[tool.trainlint.rules.TL201]\neps = true\n", "option 'eps' of rule TL201 must be float, got True"),
    ("[tool.trainlint.rules.TL401]\nmax_norm = 0\n", "option 'max_norm' of rule TL401 must be greater than 0, got 0"),
    ("[tool.trainlint.rules.TL401]\nmax_norm = inf\n", "option 'max_norm' of rule TL401 must be greater than 0, got inf"),
    ('[tool.trainlint.rules.TL401]\nmax_norm = "1"\n', "option 'max_norm' of rule TL401 must be float, got '1'"),
]


@pytest.mark.parametrize("body,message", CONFIG_ERRORS, ids=[m for _, m in CONFIG_ERRORS])
def test_configuration_error_names_the_problem(tmp_path: Path, body: str, message: str) -> None:
    write_config(tmp_path, body)
    with pytest.raises(ConfigError) as raised:
        load_settings(None, tmp_path)
    assert message in str(raised.value)
    assert str(raised.value).startswith(str(tmp_path / "pyproject.toml"))  # the file, then the key


def test_config_option_reads_a_whole_pyproject_of_any_name(tmp_path: Path) -> None:
    whole = '[project]\nname = "x"\n\n[tool.trainlint]\nselect = ["TL002"]\n\n[tool.ruff]\nline-length = 100\n'
    settings = load_settings(write_config(tmp_path, whole, name="ci-pyproject.toml"), tmp_path)
    assert settings.enabled_codes() == {"TL002"}
    without = write_config(tmp_path, '[project]\nname = "x"\n', name="other.toml")
    with pytest.raises(ConfigError, match="other.toml: has no \\[tool.trainlint\\] table"):
        load_settings(without, tmp_path)


def test_configuration_error_names_the_file_relative_to_the_current_directory(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    write_config(tmp_path / "sub", "[tool.trainlint.rules.TL201]\neps = -1.0\n")
    (tmp_path / "sub" / "train.py").write_text("import torch\n", encoding="utf-8")
    result = run_cli("--no-cache", "sub", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "trainlint: error: sub/pyproject.toml [tool.trainlint]: option 'eps' of rule TL201 "
        "must be greater than 0 and less than 1, got -1.0\n"
    )


def test_configuration_errors_through_the_command_line(tmp_path: Path) -> None:
    """The same mistakes, as a user sees them: exit 2 and one line on stderr, nothing on stdout."""
    (tmp_path / "train.py").write_text("import torch\n", encoding="utf-8")
    cases = {
        "unknown-key": ('[tool.trainlint]\nselct = ["TL1"]\n', [], "unknown key 'selct'"),
        "unknown-code": ("[tool.trainlint.rules.TL123]\n", [], "unknown rule code 'TL123'"),
        "bad-select": ("", ["--select", "TL9,XX"], "--select: unknown rule code or prefix 'TL9'"),
        "bad-ignore": ("", ["--ignore", "F401"], "--ignore: unknown rule code or prefix 'F401'"),
        "bad-extend": ("", ["--extend-select", "ZZ"], "--extend-select: unknown rule code or prefix 'ZZ'"),
        "missing-config": ("", ["--config", "nope.toml"], "--config: nope.toml: no such file"),
    }
    for name, (body, arguments, message) in cases.items():
        project = tmp_path / name
        project.mkdir()
        (project / "train.py").write_text("import torch\n", encoding="utf-8")
        if body:
            write_config(project, body)
        result = run_cli(*arguments, "--no-cache", ".", cwd=project)
        assert result.returncode == 2, (name, result.stdout, result.stderr)
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("trainlint: error: ") and message in lines[0], name


def test_config_option_and_nearest_pyproject_through_the_command_line(tmp_path: Path) -> None:
    """select from the nearest pyproject.toml is honoured; --config FILE replaces it."""
    (tmp_path / "bad.py").write_text("import torch\nx = (\n", encoding="utf-8")
    write_config(tmp_path, '[tool.trainlint]\nselect = ["TL002"]\nper-file-ignores = { "bad.py" = ["TL001"] }\n')
    write_config(tmp_path, 'select = ["TL001"]\n', name="strict.toml")
    quiet = run_cli("--no-cache", "--output-format", "concise", ".", cwd=tmp_path)
    assert quiet.returncode == 0 and "All checks passed!" in quiet.stdout
    strict = run_cli("--no-cache", "--config", "strict.toml", "--output-format", "concise", ".", cwd=tmp_path)
    assert strict.returncode == 1 and strict.stdout.startswith("bad.py:2:5: TL001 ")


def test_excludes_apply_relative_to_the_config(tmp_path: Path) -> None:
    from trainlint.discovery import discover

    write_config(tmp_path, '[tool.trainlint]\nextend-exclude = ["legacy", "src/gen/*.py"]\n')
    for name in ("src/train.py", "src/gen/auto.py", "legacy/old.py", "src/legacy/old.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("import torch\n", encoding="utf-8")
    settings = load_settings(None, tmp_path)
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path / "src")
        found = [t.display for t in discover(["."], settings)]
    finally:
        os.chdir(cwd)
    # "legacy" (a bare name) is excluded at any depth, "src/gen/*.py" from the config's directory
    assert found == ["train.py"]


# -- tests are not training ------------------------------------------------------------------------

TEST_LIKE_PATHS = ["tests/test_train.py", "tests/helpers/models.py", "pkg/tests/unit.py", "test_amp.py", "pkg/amp_test.py", "conftest.py"]


@pytest.mark.parametrize("relative", TEST_LIKE_PATHS)
def test_training_rules_skip_test_code_by_default(tmp_path: Path, relative: str) -> None:
    amp_video = (Path(__file__).parent / "fixtures" / "cli" / "amp_video.py").read_text(encoding="utf-8")
    (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / relative).write_text(amp_video, encoding="utf-8")
    (tmp_path / "train.py").write_text(amp_video, encoding="utf-8")
    result = run_cli("--no-cache", "--output-format", "concise", ".", cwd=tmp_path)
    assert result.stdout.splitlines()[:-1] == [line for line in result.stdout.splitlines()[:-1] if line.startswith("train.py:")]
    assert "train.py:15:14: TL108" in result.stdout
    write_config(tmp_path, "[tool.trainlint]\ntest-paths = []\n")
    linted = run_cli("--no-cache", "--output-format", "concise", ".", cwd=tmp_path)
    assert f"{relative}:15:14: TL108" in linted.stdout


def test_test_paths_are_configurable_and_syntax_errors_are_still_reported(tmp_path: Path) -> None:
    (tmp_path / "checks").mkdir()
    (tmp_path / "checks" / "smoke.py").write_text((Path(__file__).parent / "fixtures" / "cli" / "amp_video.py").read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "broken.py").write_text("import torch\nx = (\n", encoding="utf-8")
    write_config(tmp_path, '[tool.trainlint]\ntest-paths = ["checks/*", "tests/*"]\n')
    result = run_cli("--no-cache", "--output-format", "concise", ".", cwd=tmp_path)
    assert "checks/smoke.py" not in result.stdout
    assert "tests/broken.py:2:5: TL001" in result.stdout  # a broken file is reported wherever it is
    write_config(tmp_path, "[tool.trainlint]\ntest-paths = 7\n")
    bad = run_cli("--no-cache", ".", cwd=tmp_path)
    assert bad.returncode == 2 and "test-paths" in bad.stderr
