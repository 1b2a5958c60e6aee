"""The README's "From Python" section runs as written (on the real ml-100k)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(section: str) -> list[str]:
    text = README.read_text()
    start = text.index(f"## {section}")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end if end > 0 else None], re.S)


def test_readme_has_a_from_python_section():
    assert python_blocks("From Python"), "README.md lost its From Python example"


@pytest.mark.slow
def test_from_python_section_runs(ml100k_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # it writes runs/ where it runs
    for code in python_blocks("From Python"):
        exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "fallback" in out and "hr@10" in out
    assert (tmp_path / "runs" / "neumf-py" / "model.safetensors").exists()
