"""`--add-noqa`: every reported line gets `# noqa: CODE`, existing comments stay, an existing
`# noqa: X` gets the code merged in, and a line that cannot end with a comment is left alone.
Afterwards the same run reports nothing new, and a second `--add-noqa` adds nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import FIXTURES, run_cli

LOG_OF_SOFTMAX = "torch.log(torch.softmax(x, dim=1))"


def test_add_noqa_through_the_command_line(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "cli" / "amp_video.py", tmp_path / "video.py")
    shutil.copy(FIXTURES / "notebooks" / "classifier.ipynb", tmp_path / "classifier.ipynb")
    (tmp_path / "losses.py").write_text(
        "import torch\n\n"
        "def losses(x):\n"
        f"    a = {LOG_OF_SOFTMAX}  # log-probabilities\n"
        f"    b = {LOG_OF_SOFTMAX}  # noqa: E501\n"
        f"    c = {LOG_OF_SOFTMAX}  # NOQA:E501 long line, kept as written\n"
        f"    d = {LOG_OF_SOFTMAX} + \\\n"
        "        0.0\n"
        f'    e = {LOG_OF_SOFTMAX}, """\n'
        '    text"""\n'
        f"    f = {LOG_OF_SOFTMAX}  # noqa: TL202\n"
        "    return a, b, c, d, e, f\n",
        encoding="utf-8",
    )
    before = run_cli("--no-cache", "--output-format", "concise", ".", cwd=tmp_path)
    assert before.returncode == 1 and before.stdout.count(" TL202 ") == 7  # 5 in losses.py, 2 in the notebook

    added = run_cli("--no-cache", "--add-noqa", ".", cwd=tmp_path)
    assert (added.returncode, added.stdout) == (0, "")
    # video.py 1, the notebook 3 (three lines), losses.py 3 (a, b and c)
    assert added.stderr == "Added 7 noqa directives.\n"
    losses = (tmp_path / "losses.py").read_text(encoding="utf-8").splitlines()
    assert losses[3] == f"    a = {LOG_OF_SOFTMAX}  # log-probabilities  # noqa: TL202"
    assert losses[4] == f"    b = {LOG_OF_SOFTMAX}  # noqa: E501, TL202"
    assert losses[5] == f"    c = {LOG_OF_SOFTMAX}  # noqa: E501, TL202 long line, kept as written"
    assert losses[6] == f"    d = {LOG_OF_SOFTMAX} + \\"  # a comment would end the continuation
    assert losses[8] == f'    e = {LOG_OF_SOFTMAX}, """'  # a comment would go into the string
    assert losses[10] == f"    f = {LOG_OF_SOFTMAX}  # noqa: TL202"
    assert '        with torch.autocast("cuda"):  # noqa: TL108' in (tmp_path / "video.py").read_text(encoding="utf-8")
    notebook = json.loads((tmp_path / "classifier.ipynb").read_text(encoding="utf-8"))
    sources = ["".join(cell["source"]) for cell in notebook["cells"]]
    assert sum(source.count("# noqa: TL") for source in sources) == 3

    after = run_cli("--no-cache", "--output-format", "concise", ".", cwd=tmp_path)
    remaining = [line.split(":")[0:2] for line in after.stdout.splitlines()[:-1]]
    assert remaining == [["losses.py", "7"], ["losses.py", "9"]]  # only the two lines left alone
    again = run_cli("--no-cache", "--add-noqa", ".", cwd=tmp_path)
    assert again.stderr == "Added 0 noqa directives.\n"


def test_add_noqa_never_silences_problems_with_the_input(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import torch\nx = (\n", encoding="utf-8")
    result = run_cli("--no-cache", "--add-noqa", ".", cwd=tmp_path)
    assert result.stderr == "Added 0 noqa directives.\n"
    assert (tmp_path / "broken.py").read_text(encoding="utf-8") == "import torch\nx = (\n"


def test_add_noqa_is_a_mode_of_its_own(tmp_path: Path) -> None:
    result = run_cli("--add-noqa", "--fix", ".", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "trainlint: error: argument --add-noqa: cannot be combined with --fix or --diff\n"
