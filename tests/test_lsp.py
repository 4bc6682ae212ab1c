"""`trainlint server` driven as an editor drives it: a subprocess speaking JSON-RPC with
Content-Length framing on stdin/stdout. Initialize, open a document, receive its diagnostics,
request a code action and apply its workspace edit."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pygls")


class LspClient:
    def __init__(self, command: Sequence[str], cwd: Path, timeout: float = 20.0) -> None:
        self.process = subprocess.Popen(
            list(command), cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.timeout = timeout
        self.messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.notifications: list[dict[str, Any]] = []
        self._next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        while True:
            headers: dict[str, str] = {}
            while True:
                line = stream.readline()
                if not line:
                    self.messages.put(None)
                    return
                if line in (b"\r\n", b"\n"):
                    break
                name, _, value = line.decode("ascii").partition(":")
                headers[name.strip().lower()] = value.strip()
            body = stream.read(int(headers["content-length"]))
            self.messages.put(json.loads(body.decode("utf-8")))

    def send(self, message: dict[str, Any]) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode("utf-8")
        assert self.process.stdin is not None
        self.process.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.process.stdin.flush()

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        self.send({"method": method, "params": params or {}})

    def request(self, method: str, params: dict[str, Any] | None = None) -> Any:
        self._next_id += 1
        request_id = self._next_id
        self.send({"id": request_id, "method": method, "params": params or {}})
        reply = self.wait_for(lambda m: m.get("id") == request_id and "method" not in m)
        assert "error" not in reply, reply["error"]
        return reply.get("result")

    def wait_for(self, predicate) -> dict[str, Any]:
        """The next message matching ``predicate``; notifications seen on the way are kept."""
        while True:
            try:
                message = self.messages.get(timeout=self.timeout)
            except queue.Empty:
                raise AssertionError(f"no answer from the server in {self.timeout}s: {self.stderr()}") from None
            if message is None:
                raise AssertionError(f"the server exited: {self.stderr()}")
            if "method" in message and "id" in message:  # a request from the server: accept it
                self.send({"id": message["id"], "result": None})
            elif "method" in message:
                self.notifications.append(message)
            if predicate(message):
                return message

    def diagnostics(self, uri: str, version: int | None = None) -> list[dict[str, Any]]:
        message = self.wait_for(
            lambda m: m.get("method") == "textDocument/publishDiagnostics"
            and m["params"]["uri"] == uri
            and (version is None or m["params"].get("version") == version)
        )
        return message["params"]["diagnostics"]

    def stderr(self) -> str:
        if self.process.poll() is None:
            return "(still running)"
        assert self.process.stderr is not None
        return self.process.stderr.read().decode("utf-8", "replace")[-2000:]

    def close(self) -> int:
        try:
            if self.process.poll() is None:
                self.request("shutdown")
                self.notify("exit")
            return self.process.wait(timeout=self.timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


def apply_text_edits(text: str, edits: Sequence[dict[str, Any]]) -> str:
    """Apply LSP TextEdits (UTF-16 positions, as negotiated by default) to a text."""
    lines = text.splitlines(keepends=True) or [""]

    def offset(position: dict[str, int]) -> int:
        line = position["line"]
        if line >= len(lines):
            return len(text)
        start = sum(len(l) for l in lines[:line])
        units, index, content = 0, 0, lines[line]
        while units < position["character"] and index < len(content):
            units += 2 if ord(content[index]) > 0xFFFF else 1
            index += 1
        return start + index

    spans = sorted(((offset(e["range"]["start"]), offset(e["range"]["end"]), e["newText"]) for e in edits), reverse=True)
    for start, end, new in spans:
        text = text[:start] + new + text[end:]
    return text


# -- the tests ----------------------------------------------------------------------------------
SOURCE = """import torch
import torch.nn.functional as F


def nll(logits, target):
    print("😋 batch"); log_p = torch.log(F.softmax(logits, dim=-1))
    return F.nll_loss(log_p, target)


def encode(video_model, clips):
    with torch.autocast("cuda", dtype=torch.float16):
        return video_model(clips)


class Clip3D(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 8, 3)


def run(clips):
    model = Clip3D()
    with torch.autocast("cuda", dtype=torch.float16):
        return model(clips)
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """One server for the module, as an editor keeps one; each test opens its own document."""
    root = tmp_path_factory.mktemp("workspace")
    client = LspClient([sys.executable, "-m", "trainlint", "server"], cwd=root)
    result = client.request(
        "initialize",
        {"processId": os.getpid(), "rootUri": root.as_uri(), "capabilities": {"textDocument": {"codeAction": {}}}},
    )
    assert result["serverInfo"]["name"] == "trainlint"
    assert result["capabilities"]["codeActionProvider"]["codeActionKinds"] == ["quickfix", "source.fixAll.trainlint"]
    client.notify("initialized", {})
    yield client
    assert client.close() == 0


def open_document(client: LspClient, path: Path, text: str, version: int = 1) -> list[dict[str, Any]]:
    path.write_text(text, encoding="utf-8")
    uri = path.as_uri()
    client.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": version, "text": text}})
    return client.diagnostics(uri, version)


def test_diagnostics_on_open_and_a_safe_quick_fix(server: LspClient, tmp_path: Path) -> None:
    path = tmp_path / "train.py"
    diagnostics = open_document(server, path, SOURCE)
    by_code = {d["code"]: d for d in diagnostics}
    assert sorted(by_code) == ["TL108", "TL202"]
    log_softmax = by_code["TL202"]
    # trainlint prints 6:31 (code points); in UTF-16 code units the emoji before it counts twice.
    assert log_softmax["range"] == {"start": {"line": 5, "character": 31}, "end": {"line": 5, "character": 67}}
    assert (log_softmax["severity"], log_softmax["source"]) == (1, "trainlint")

    actions = server.request(
        "textDocument/codeAction",
        {"textDocument": {"uri": path.as_uri()}, "range": log_softmax["range"], "context": {"diagnostics": [log_softmax]}},
    )
    quick_fix = next(a for a in actions if a["kind"] == "quickfix")
    assert quick_fix["title"] == "trainlint TL202: Use `log_softmax`" and quick_fix["isPreferred"] is True
    fixed = apply_text_edits(SOURCE, quick_fix["edit"]["changes"][path.as_uri()])
    assert fixed == SOURCE.replace("torch.log(F.softmax(logits, dim=-1))", "F.log_softmax(logits, dim=-1)")


def test_unsafe_fixes_are_offered_as_such(server: LspClient, tmp_path: Path) -> None:
    path = tmp_path / "train.py"
    diagnostics = open_document(server, path, SOURCE)
    autocast = next(d for d in diagnostics if d["code"] == "TL108")
    assert autocast["severity"] == 2  # a warning-level rule
    actions = server.request(
        "textDocument/codeAction",
        {"textDocument": {"uri": path.as_uri()}, "range": autocast["range"], "context": {"diagnostics": [autocast]}},
    )
    [unsafe] = [a for a in actions if a["kind"] == "quickfix"]
    assert unsafe["title"].endswith("(unsafe fix: review it)") and unsafe["isPreferred"] is False
    fixed = apply_text_edits(SOURCE, unsafe["edit"]["changes"][path.as_uri()])
    assert fixed.count("dtype=torch.bfloat16") == 1 and fixed.count("dtype=torch.float16") == 1


def test_fix_all_applies_the_safe_fixes_only(server: LspClient, tmp_path: Path) -> None:
    path = tmp_path / "train.py"
    open_document(server, path, SOURCE)
    whole = {"start": {"line": 0, "character": 0}, "end": {"line": 30, "character": 0}}
    actions = server.request(
        "textDocument/codeAction",
        {"textDocument": {"uri": path.as_uri()}, "range": whole, "context": {"diagnostics": [], "only": ["source.fixAll"]}},
    )
    [fix_all] = actions
    assert fix_all["kind"] == "source.fixAll.trainlint"
    fixed = apply_text_edits(SOURCE, fix_all["edit"]["changes"][path.as_uri()])
    assert "F.log_softmax(logits, dim=-1)" in fixed and "bfloat16" not in fixed


def test_diagnostics_follow_changes_and_saves(server: LspClient, tmp_path: Path) -> None:
    path = tmp_path / "train.py"
    uri = path.as_uri()
    assert len(open_document(server, path, SOURCE)) == 2
    # An incremental edit that fixes the log-softmax line by hand.
    line = SOURCE.splitlines()[5]
    start = line.index("torch.log(") + 1  # the UTF-16 column: the emoji counts twice
    end = start + len("torch.log(F.softmax(logits, dim=-1))")
    change = {
        "range": {"start": {"line": 5, "character": start}, "end": {"line": 5, "character": end}},
        "text": "F.log_softmax(logits, dim=-1)",
    }
    server.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [change]})
    assert [d["code"] for d in server.diagnostics(uri, 2)] == ["TL108"]
    server.notify("textDocument/didSave", {"textDocument": {"uri": uri}})
    assert [d["code"] for d in server.diagnostics(uri)] == ["TL108"]
    server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    assert server.diagnostics(uri) == []


def test_server_without_pygls_says_how_to_install_it(tmp_path: Path) -> None:
    fake = tmp_path / "pygls"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('pygls is not installed')\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "trainlint", "server"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "pip install 'trainlint[lsp]'" in result.stderr
