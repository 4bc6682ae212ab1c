"""Jupyter notebooks: code cells linted as one program, findings by cell, fixes that rewrite only
the fixed cells' sources and leave every other byte of the file as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from trainlint.config import Settings, apply_cli_overrides
from trainlint.engine import Linter
from trainlint.notebook import Notebook, NotebookLinter, Program
from trainlint.project import ProjectIndex

from tests.conftest import FIXTURES, run_cli

NOTEBOOKS = FIXTURES / "notebooks"


def notebook_linter(*codes: str) -> NotebookLinter:
    return NotebookLinter(Linter(apply_cli_overrides(Settings(), list(codes), None, None), ProjectIndex([])))


def make_notebook(*cells: dict[str, Any], language: str = "python") -> str:
    metadata = {"kernelspec": {"display_name": language, "language": language, "name": language}}
    return json.dumps({"cells": list(cells), "metadata": metadata, "nbformat": 4, "nbformat_minor": 5}, indent=1)


def code_cell(source: str, **metadata: Any) -> dict[str, Any]:
    lines = source.splitlines(keepends=True)
    return {"cell_type": "code", "execution_count": None, "metadata": metadata, "outputs": [], "source": lines}


def located(findings) -> list[tuple[int | None, int, int, str]]:
    return [(f.cell, f.start.row, f.start.column, f.code) for f in findings]


def source_values(raw: str) -> list[tuple[int, int]]:
    """The span of each ``"source": <value>`` value in the file, found with the standard
    library's decoder (independently of trainlint's own JSON scanning)."""
    decoder = json.JSONDecoder()
    spans = []
    index = raw.find('"source": ')
    while index >= 0:
        start = index + len('"source": ')
        _, end = decoder.raw_decode(raw, start)
        spans.append((start, end))
        index = raw.find('"source": ', end)
    return spans


def without(raw: str, spans: list[tuple[int, int]], which: set[int]) -> str:
    """The raw text with the source values of the given cells (0-based) cut out."""
    for position in sorted(which, reverse=True):
        start, end = spans[position]
        raw = raw[:start] + "<cut>" + raw[end:]
    return raw


def fix_copy(tmp_path: Path, name: str, *options: str) -> tuple[str, str, Any]:
    target = tmp_path / name
    shutil.copyfile(NOTEBOOKS / name, target)
    result = run_cli("--no-cache", "--fix", *options, name, cwd=tmp_path)
    original = (NOTEBOOKS / name).read_bytes().decode("utf-8")
    return original, target.read_bytes().decode("utf-8"), result


# -- the command line ---------------------------------------------------------------------------
def test_findings_name_the_cell_and_the_line_within_it() -> None:
    result = run_cli("--no-cache", "--select", "TL105,TL202", "classifier.ipynb", cwd=NOTEBOOKS)
    locations = [line.split(" TL")[0] for line in result.stdout.splitlines() if line.startswith("classifier.ipynb")]
    assert locations == ["classifier.ipynb:cell 7:7:25:", "classifier.ipynb:cell 7:10:9:", "classifier.ipynb:cell 9:7:13:"]
    assert "classifier.ipynb:cell 7:10:9: TL105 [*]" in result.stdout
    # The full format shows the line of the cell, not of the JSON file.
    assert "7 |     log_p = torch.log(torch.softmax(model(x.to(device)), dim=1))" in result.stdout
    assert result.returncode == 1


def test_json_output_has_the_cell_as_ruff_does() -> None:
    result = run_cli("--no-cache", "--select", "TL105,TL202", "--output-format", "json", "classifier.ipynb", cwd=NOTEBOOKS)
    records = json.loads(result.stdout)
    assert [(r["cell"], r["location"]["row"], r["location"]["column"], r["code"]) for r in records] == [
        (7, 7, 25, "TL202"),
        (7, 10, 9, "TL105"),
        (9, 7, 13, "TL202"),
    ]
    assert records[0]["end_location"] == {"row": 7, "column": 64}
    assert records[0]["filename"].endswith("classifier.ipynb")


def test_a_directory_includes_its_notebooks(tmp_path: Path) -> None:
    for name in ("classifier.ipynb", "truncated.ipynb", "r_kernel.ipynb"):
        shutil.copyfile(NOTEBOOKS / name, tmp_path / name)
    checkpoints = tmp_path / ".ipynb_checkpoints"
    checkpoints.mkdir()
    shutil.copyfile(NOTEBOOKS / "classifier.ipynb", checkpoints / "classifier-checkpoint.ipynb")
    result = run_cli("--no-cache", "--select", "TL202", "--output-format", "concise", ".", cwd=tmp_path)
    files = sorted({line.split(":")[0] for line in result.stdout.splitlines() if ".ipynb:" in line})
    assert files == ["classifier.ipynb", "truncated.ipynb"]  # the R notebook is not Python


def test_invalid_json_is_a_clear_syntax_finding() -> None:
    result = run_cli("--no-cache", "--output-format", "concise", "truncated.ipynb", cwd=NOTEBOOKS)
    assert result.stdout.startswith(
        "truncated.ipynb:109:1: TL001 invalid notebook: not valid JSON: "
        "Expecting property name enclosed in double quotes (the file ends early)\n"
    )
    assert result.returncode == 1


def test_syntax_error_in_a_cell_names_the_cell() -> None:
    result = run_cli("--no-cache", "--output-format", "json", "syntax_error.ipynb", cwd=NOTEBOOKS)
    [record] = json.loads(result.stdout)
    assert (record["code"], record["cell"], record["location"]) == ("TL001", 3, {"row": 1, "column": 12})


def test_a_syntax_error_names_lines_of_its_cell_not_of_the_joined_program(tmp_path: Path) -> None:
    """Python says "expected an indented block after 'with' statement on line N": N must be a
    line of the cell the reader opens, not a row of every cell joined together."""
    notebook = make_notebook(
        code_cell("import torch\nmodel = torch.nn.Linear(2, 2)\nx = torch.randn(4, 2)\n"),
        code_cell("# in the forward pass:\nwith torch.autocast('cpu'):\n\n...\n"),
    )
    (tmp_path / "fragment.ipynb").write_text(notebook, encoding="utf-8")
    result = run_cli("--no-cache", "--output-format", "json", "fragment.ipynb", cwd=tmp_path)
    [record] = json.loads(result.stdout)
    assert (record["code"], record["cell"]) == ("TL001", 2)
    assert record["message"].endswith("after 'with' statement on line 2"), record["message"]


# -- fixing ------------------------------------------------------------------------------------
def test_fix_rewrites_only_the_fixed_cells(tmp_path: Path) -> None:
    original, fixed, result = fix_copy(tmp_path, "classifier.ipynb", "--select", "TL105,TL202")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 fixed, 0 remaining" in result.stdout
    before, after = json.loads(original), json.loads(fixed)
    # Cells 7 and 9 (0-based 6 and 8) changed, and only in their source.
    assert "".join(after["cells"][6]["source"]) == "".join(before["cells"][6]["source"]).replace(
        "torch.log(F.softmax(model(xb), dim=-1))", "F.log_softmax(model(xb), dim=-1)"
    ).replace("        scaler.step(optimizer)\n", "        scaler.step(optimizer)\n        scaler.update()\n")
    assert after["cells"][8]["source"][6] == "    log_p = torch.log_softmax(model(x.to(device)), dim=1)\n"
    after["cells"][6]["source"] = before["cells"][6]["source"]
    after["cells"][8]["source"] = before["cells"][8]["source"]
    assert after == before
    # Byte for byte: outside the two source values nothing moved, and the file is what Jupyter
    # itself would write for the fixed notebook (sorted keys, one-space indent, final newline).
    assert without(fixed, source_values(fixed), {6, 8}) == without(original, source_values(original), {6, 8})
    assert fixed == json.dumps(json.loads(fixed), sort_keys=True, indent=1, ensure_ascii=False) + "\n"
    # Fixing again changes nothing.
    again = run_cli("--no-cache", "--fix", "--select", "TL105,TL202", "classifier.ipynb", cwd=tmp_path)
    assert again.returncode == 0 and (tmp_path / "classifier.ipynb").read_text(encoding="utf-8") == fixed


def test_fix_keeps_another_writers_layout(tmp_path: Path) -> None:
    """Two-space indent, CRLF, escaped non-ASCII, string and list sources, no final newline."""
    original, fixed, result = fix_copy(tmp_path, "video_vscode.ipynb")
    assert "1 fixed, 1 remaining" in result.stdout  # the unsafe TL108 fix waits for --unsafe-fixes
    spans_before, spans_after = source_values(original), source_values(fixed)
    assert without(fixed, spans_after, {2}) == without(original, spans_before, {2})
    assert fixed == json.dumps(json.loads(fixed), indent=2, ensure_ascii=True).replace("\n", "\r\n")
    assert "# \\u03a3 over classes of p\\u00b7log p" in fixed  # the fixed cell keeps the escaping
    assert "-(p * F.log_softmax(scores.float(), dim=1)).sum(1)" in fixed

    unsafe = run_cli("--no-cache", "--fix", "--unsafe-fixes", "video_vscode.ipynb", cwd=tmp_path)
    assert "1 fixed, 0 remaining" in unsafe.stdout
    final = (tmp_path / "video_vscode.ipynb").read_bytes().decode("ascii")
    assert 'with torch.autocast(\\"cuda\\", dtype=torch.bfloat16):' in final
    assert without(final, source_values(final), {2}) == without(original, spans_before, {2})


def test_diff_shows_the_fix_and_writes_nothing(tmp_path: Path) -> None:
    shutil.copyfile(NOTEBOOKS / "classifier.ipynb", tmp_path / "classifier.ipynb")
    result = run_cli("--no-cache", "--diff", "--select", "TL105", "classifier.ipynb", cwd=tmp_path)
    assert '+    "        scaler.update()\\n",' in result.stdout
    assert (tmp_path / "classifier.ipynb").read_bytes() == (NOTEBOOKS / "classifier.ipynb").read_bytes()


def test_stdin_with_a_notebook_name() -> None:
    text = (NOTEBOOKS / "classifier.ipynb").read_text(encoding="utf-8")
    result = run_cli("--select", "TL202", "--fix", "-", "--stdin-filename", "nb.ipynb", stdin=text)
    assert json.loads(result.stdout)["cells"][8]["source"][6] == "    log_p = torch.log_softmax(model(x.to(device)), dim=1)\n"
    assert "2 fixed" in result.stderr


# -- reading cells (in process) ----------------------------------------------------------------
LOG_SOFTMAX = "log_p = torch.log(torch.softmax(x, dim=1))\n"


def test_magics_and_shell_lines_keep_positions() -> None:
    text = make_notebook(
        code_cell("!pip install torch \\\n    torchvision\n%load_ext autoreload\nimport torch\nx = torch.ones(2, 3)\n"),
        {"cell_type": "markdown", "metadata": {}, "source": ["# notes\n", LOG_SOFTMAX]},
        code_cell("files = !ls\nx?\n??torch.log\nfor i in range(2):\n    %time y = 1\n    " + LOG_SOFTMAX),
        code_cell("%%bash\necho 'torch.log(torch.softmax(x, dim=1))'\n" + LOG_SOFTMAX),
        code_cell("%%time\n" + LOG_SOFTMAX),
        code_cell(LOG_SOFTMAX, vscode={"languageId": "sql"}),
        code_cell('doc = """\n%not a magic in a string\n"""\n' + LOG_SOFTMAX),
    )
    findings = notebook_linter("TL202").lint(text, "nb.ipynb")
    assert located(findings) == [(3, 6, 13, "TL202"), (5, 2, 9, "TL202"), (7, 4, 9, "TL202")]


def test_fix_restores_the_magics(tmp_path: Path) -> None:
    source = "%%time\nfiles = !ls\nimport torch\nx = torch.ones(3)\n%matplotlib inline\n" + LOG_SOFTMAX + "!nvidia-smi"
    text = make_notebook(code_cell(source))
    outcome = notebook_linter("TL202").fix(text, "nb.ipynb", None, unsafe_fixes=False)
    fixed_source = "".join(json.loads(outcome.text)["cells"][0]["source"])
    assert fixed_source == source.replace("torch.log(torch.softmax(x, dim=1))", "torch.log_softmax(x, dim=1)")
    assert [f.cell for f in outcome.fixed] == [1] and outcome.remaining == []


def test_other_kernels_are_not_linted() -> None:
    text = (NOTEBOOKS / "r_kernel.ipynb").read_text(encoding="utf-8")
    assert notebook_linter("TL202").lint(text, "r.ipynb") == []
    assert notebook_linter("TL202").fix(text, "r.ipynb", None, unsafe_fixes=True).text == text


@pytest.mark.parametrize(
    "text,message",
    [
        ("[1, 2]", "invalid notebook: expected a JSON object with a `cells` list"),
        ('{"worksheets": [], "nbformat": 3}', "unsupported notebook: nbformat 3"),
        ('{"cells": [{"cell_type": "code", "source": 3}]}', "invalid notebook: the `source` of cell 1 is not text"),
        ('{"cells": [7]}', "invalid notebook: cell 1 is not an object with a `cell_type`"),
        ('{"cells": [\n  {"cell_type": "code",\n   "source": [}]}', "invalid notebook: not valid JSON: Expecting value"),
    ],
)
def test_files_that_are_not_notebooks(text: str, message: str) -> None:
    [finding] = notebook_linter("TL202").lint(text, "x.ipynb")
    assert finding.code == "TL001" and finding.message.startswith(message) and finding.cell is None
    assert notebook_linter("TL202").fix(text, "x.ipynb", None, unsafe_fixes=True).text == text


def test_invalid_json_position_is_the_files() -> None:
    [finding] = notebook_linter("TL202").lint('{"cells": [\n  {"cell_type": "code",\n   "source": [}]}', "x.ipynb")
    assert (finding.start.row, finding.start.column) == (3, 15)


def test_cells_that_cannot_be_told_apart_after_fixing_are_left_alone() -> None:
    """The guard behind every rewrite: markers and placeholders must come back in order."""
    text = make_notebook(code_cell("import torch\n%time x = 1\n"), code_cell(LOG_SOFTMAX))
    program = Program.of(Notebook.parse(text))
    assert program.split(program.text) == {1: "import torch\n%time x = 1\n", 2: LOG_SOFTMAX}
    first_marker = program.text.splitlines(keepends=True)[0]
    assert program.split(program.text.replace(first_marker, "")) is None
    assert program.split(program.text.replace("pass  # trainlint: ipython line 1", "")) is None
    assert program.split(program.text.replace("pass  # trainlint", "    pass  # trainlint")) is None


def test_sources_as_one_string_and_empty_lists_keep_their_shape() -> None:
    cells = [
        {"cell_type": "code", "execution_count": 1, "metadata": {}, "outputs": [], "source": "import torch\n" + LOG_SOFTMAX},
        {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": []},
    ]
    text = json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}, indent=1)
    fixed = notebook_linter("TL202").fix(text, "nb.ipynb", None, unsafe_fixes=False).text
    cells[0]["source"] = "import torch\nlog_p = torch.log_softmax(x, dim=1)\n"
    assert fixed == json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}, indent=1)


def test_machine_formats_locate_cells() -> None:
    import io

    from trainlint import output

    text = (NOTEBOOKS / "classifier.ipynb").read_text(encoding="utf-8")
    findings = notebook_linter("TL202").lint(text, "classifier.ipynb")
    stream = io.StringIO()
    output.github(findings, stream)
    first = stream.getvalue().splitlines()[0]
    # The lines of a cell are not lines of the .ipynb file: the annotation is on the file.
    assert first.startswith("::error title=trainlint (TL202),file=classifier.ipynb::classifier.ipynb:cell 7:7:25: TL202")
    assert [r["cell"] for r in output.json_records(findings)] == [7, 9]
    round_trip = [type(f).from_json(f.to_json()) for f in findings]  # the cache keeps the cell
    assert round_trip == findings


def test_automagic_lines_are_ipython_not_syntax_errors(tmp_path: Path) -> None:
    """`pip install ...`, `ls ./data`, `cat log.txt`: valid IPython (automagic is on by default).
    They are left alone, and the notebook around them is linted and fixed."""
    text = make_notebook(
        code_cell("pip install -q torch torchvision\nls ./data\n"),
        code_cell("import torch\n"),
        code_cell("cat train.log\nlogits = torch.randn(4, 10)\nlog_p = torch.log(torch.softmax(logits, dim=1))\n"),
        code_cell("pip = 3  # a variable named like a magic is Python\nprint(pip)\n"),
        # a statement that starts with a magic's name and goes on over several lines is Python too
        code_cell('config = {\n    "model": "resnet18",\n}\nhistory = dict(\n    steps=3,\n)\n'),
    )
    path = tmp_path / "explore.ipynb"
    path.write_text(text, encoding="utf-8")
    result = run_cli("--no-cache", "--output-format", "concise", "explore.ipynb", cwd=tmp_path)
    assert "TL001" not in result.stdout
    assert "explore.ipynb:cell 3:3:9: TL202" in result.stdout
    run_cli("--no-cache", "--fix", "explore.ipynb", cwd=tmp_path)
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    assert "".join(cells[0]["source"]) == "pip install -q torch torchvision\nls ./data\n"
    assert "".join(cells[2]["source"]).startswith("cat train.log\n")
    assert "torch.log_softmax(logits, dim=1)" in "".join(cells[2]["source"])
