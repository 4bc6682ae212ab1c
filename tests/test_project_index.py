"""The project-level index: questions that span files, resolved the way Python imports."""

from __future__ import annotations

from pathlib import Path

from trainlint.project import ProjectIndex, module_name_for

CONV3D_MODEL = """import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 8, 3)
"""
LINEAR_MODEL = CONV3D_MODEL.replace("nn.Conv3d(3, 8, 3)", "nn.Linear(3, 8)")


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_module_name_and_import_root_follow_packages(tmp_path: Path) -> None:
    write(tmp_path, {"src/pkg/__init__.py": "", "src/pkg/sub/__init__.py": "", "src/pkg/sub/train.py": ""})
    assert module_name_for(tmp_path / "src/pkg/sub/train.py") == ("pkg.sub.train", (tmp_path / "src").resolve())
    assert module_name_for(tmp_path / "src/pkg/sub/__init__.py") == ("pkg.sub", (tmp_path / "src").resolve())
    assert module_name_for(tmp_path / "script.py") == ("script", tmp_path.resolve())


def test_layers_of_a_class_in_another_module(tmp_path: Path) -> None:
    write(tmp_path, {"models.py": CONV3D_MODEL, "train.py": "from models import Net\n"})
    index = ProjectIndex([tmp_path])
    assert "torch.nn.Conv3d" in index.layers_of("models.Net", tmp_path / "train.py")
    assert index.layers_of("models.Missing", tmp_path / "train.py") == frozenset()
    assert index.layers_of("numpy.array", tmp_path / "train.py") == frozenset()


def test_script_directory_comes_first_like_sys_path0(tmp_path: Path) -> None:
    """Two scripts in different directories each import their own `models`."""
    write(tmp_path, {"video/models.py": CONV3D_MODEL, "text/models.py": LINEAR_MODEL, "models.py": LINEAR_MODEL})
    index = ProjectIndex([tmp_path])
    assert "torch.nn.Conv3d" in index.layers_of("models.Net", tmp_path / "video/train.py")
    assert "torch.nn.Conv3d" not in index.layers_of("models.Net", tmp_path / "text/train.py")
    assert "torch.nn.Linear" in index.layers_of("models.Net", tmp_path / "text/train.py")
    # and the root's own models.py for a script at the root
    assert "torch.nn.Linear" in index.layers_of("models.Net", tmp_path / "train.py")


def test_package_reexports_nested_submodules_and_bases(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "nets/__init__.py": "from .video import build_model\nfrom .video import VideoNet as Net\n",
            "nets/blocks.py": CONV3D_MODEL.replace("class Net", "class Block"),
            "nets/base.py": "import torch\nclass Base(torch.nn.Module):\n    def __init__(self):\n"
            "        self.head = torch.nn.Linear(8, 2)\n",
            "nets/video.py": "from . import blocks\nfrom .base import Base\n\n\n"
            "class VideoNet(Base):\n    def __init__(self):\n        self.stem = blocks.Block()\n\n\n"
            "def build_model(cfg):\n    model = VideoNet()\n    return model\n",
        },
    )
    index = ProjectIndex([tmp_path])
    importer = tmp_path / "train.py"
    for name in ("nets.Net", "nets.video.VideoNet"):
        layers = index.layers_of(name, importer)
        assert {"torch.nn.Conv3d", "torch.nn.Linear"} <= layers, name


def test_import_cycles_and_broken_modules_terminate(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "a.py": "from b import B\nclass A(B):\n    pass\n",
            "b.py": "from a import A\nclass B(A):\n    pass\n",
            "broken.py": "class Net(:\n",
        },
    )
    index = ProjectIndex([tmp_path])
    assert index.layers_of("a.A", tmp_path / "t.py") == frozenset()
    assert index.layers_of("broken.Net", tmp_path / "t.py") == frozenset()


def test_every_answer_records_the_modules_it_read(tmp_path: Path) -> None:
    """The cache checks these digests: a second question about the same module must record it
    again, or editing the model would not invalidate the second importer's cached result."""
    write(tmp_path, {"models.py": CONV3D_MODEL})
    index = ProjectIndex([tmp_path])
    for importer in ("one.py", "two.py"):
        index.consulted = {}
        index.layers_of("models.Net", tmp_path / importer)
        assert list(index.consulted) == [str((tmp_path / "models.py").resolve())]


def test_a_symlink_loop_among_the_roots_is_harmless(tmp_path: Path) -> None:
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    write(tmp_path, {"models.py": CONV3D_MODEL})
    index = ProjectIndex([tmp_path / "loop", tmp_path])
    assert "torch.nn.Conv3d" in index.layers_of("models.Net", None)


def test_functions_reaching_reads_calls_in_code_not_in_comments_docstrings_or_longer_names(tmp_path: Path) -> None:
    """The index that lets the mode and loop analyses skip calls is a filter: a word in a
    comment, a doctest or a longer name (``save_for_backward``) must not make every caller of
    ``forward`` look like it trains; a real call, and its callers by name, must."""
    write(tmp_path, {
        "layers.py": (
            "class Swish:\n"
            "    def forward(ctx, x):\n"
            "        ctx.save_for_backward(x)  # then loss.backward()\n"
            '        """>>> out.sum().backward()"""\n'
            "        return x\n"
            "\n"
            "class Block:\n"
            "    def __init__(self, net):\n"
            "        net.eval()\n"
        ),
        "train.py": (
            "def fit(model, loss):\n"
            "    loss.backward()\n"
            "\n"
            "def run_epochs(model, loss):\n"
            "    fit(model, loss)\n"
            "\n"
            "def build(net):\n"
            "    super().__init__(net)\n"
            "    return forward(net)\n"
        ),
    })
    index = ProjectIndex([tmp_path])
    training = index.functions_reaching((b"backward(",))
    assert {"fit", "run_epochs"} <= training
    assert "forward" not in training and "build" not in training
    # `super().__init__(` is Python running a constructor, not a call that reaches `net.eval()`
    assert "build" not in index.functions_reaching((b".eval(",))


def test_package_reexports_through_star_imports(tmp_path: Path) -> None:
    """``from .classifiers import *`` in a package's ``__init__``, two levels deep (texar's
    layout): the class is found where it is defined; private names and cycles are not followed."""
    write(
        tmp_path,
        {
            "lib/__init__.py": "from lib.modules import *\nfrom lib.other import *\n",
            "lib/modules/__init__.py": "from lib.modules.classifiers import *\n",
            "lib/modules/classifiers/__init__.py": "from .bert_classifier import *\n",
            "lib/modules/classifiers/bert_classifier.py": CONV3D_MODEL.replace("class Net", "class BERTClassifier")
            + "\nclass _Private(nn.Module):\n    pass\n",
            "lib/other.py": "from lib import *\n",
        },
    )
    index = ProjectIndex([tmp_path])
    train = tmp_path / "train.py"
    found = index.definition("lib.modules.BERTClassifier", train)
    assert found is not None and (found[0].name, found[1]) == ("lib.modules.classifiers.bert_classifier", "BERTClassifier")
    assert "torch.nn.Conv3d" in index.layers_of("lib.BERTClassifier", train)
    assert index.definition("lib.modules._Private", train) is None
    assert index.definition("lib.Missing", train) is None  # lib -> other -> lib: each module once


def test_the_summary_walk_visits_what_ast_walk_visits_in_its_order() -> None:
    """Summaries read imports in walk order (a later import of a name wins): the faster walk
    must keep ``ast.walk``'s breadth-first order exactly."""
    import ast

    from trainlint.module_summary import _walk

    tree = ast.parse(CONV3D_MODEL + "\ndef f(x):\n    import numpy as np\n    return [np.log(v) for v in x if v]\n")
    assert [id(n) for n in _walk(tree)] == [id(n) for n in ast.walk(tree)]


def test_a_linted_text_and_the_same_files_bytes_are_parsed_by_python_once(monkeypatch) -> None:
    """The depth check reads a linted file's text and its summary, asked for by another file
    soon after, reads its bytes: Python parses the content once (a third of the parses on a model
    zoo were repeats). A parse of other content in between does not lose it."""
    import ast

    from trainlint import source

    parses: list[object] = []
    parse = ast.parse
    monkeypatch.setattr(ast, "parse", lambda *args, **kwargs: parses.append(args[0]) or parse(*args, **kwargs))
    monkeypatch.setattr(source, "_recent_trees", type(source._recent_trees)())
    text = "import torch\nmodel = torch.nn.Linear(2, 2)\n"
    first = source.python_ast(text, "train.py")
    source.python_ast("x = 1\n", "other.py")
    assert source.python_ast(text.encode("utf-8"), "train.py") is first
    assert parses == [text, "x = 1\n"]
