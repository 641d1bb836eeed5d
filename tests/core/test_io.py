"""Atomic text output: the old file survives a failed write and no temp file is left behind."""

from __future__ import annotations

import pytest

from ssmkit.core.io import write_text_atomic


def test_write_replaces_whole_file(tmp_path):
    path = tmp_path / "result.md"
    write_text_atomic(path, "old")
    write_text_atomic(path, "new text")
    assert path.read_text() == "new text"
    assert [p.name for p in tmp_path.iterdir()] == ["result.md"]

def test_failed_write_keeps_old_file(tmp_path):
    path = tmp_path / "result.json"
    write_text_atomic(path, "old")
    with pytest.raises(TypeError):
        write_text_atomic(path, b"bytes are not text")  # the write fails inside the temp file
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
