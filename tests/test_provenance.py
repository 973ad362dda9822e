"""Which code made a run: the commit and dirty flag of the checkout, recorded in config.json."""
import json
import subprocess

import pytest

from eoq.training import provenance


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def test_commit_and_dirty_flag_of_a_checkout(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "eoq").mkdir(parents=True)
    (repo / "eoq" / "a.py").write_text("x = 1\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "one")
    monkeypatch.setattr(provenance, "_ROOT", repo.resolve())
    head = git(repo, "rev-parse", "HEAD")
    assert provenance.code_version()["commit"] == head and provenance.code_version()["dirty"] is False
    (repo / "eoq" / "a.py").write_text("x = 2\n")
    assert provenance.code_version()["dirty"] is True
    (repo / "untracked.txt").write_text("runs, notes\n")                   # untracked files do not count
    git(repo, "checkout", "-q", "--", "eoq/a.py")
    assert provenance.code_version()["dirty"] is False


def test_outside_a_checkout_or_inside_another_one_no_commit(tmp_path, monkeypatch):
    outer = tmp_path / "outer"
    inner = outer / ".venv" / "site-packages"                             # a wheel installed in a repo's venv
    inner.mkdir(parents=True)
    git(outer, "init", "-q")
    (outer / "f").write_text("1")
    git(outer, "add", "-A")
    git(outer, "commit", "-qm", "x")
    monkeypatch.setattr(provenance, "_ROOT", inner.resolve())
    assert provenance.code_version()["commit"] is None


def test_a_resumed_run_keeps_its_first_commit_and_lists_the_others():
    first = {"commit": "a" * 40, "dirty": False, "version": "0.1.0"}
    assert provenance.merged(None, first) == first
    assert provenance.merged(first, dict(first)) == first
    later = provenance.merged(first, {"commit": "b" * 40, "dirty": False, "version": "0.1.0"})
    assert later["commit"] == "a" * 40 and later["resumed_at"] == [{"commit": "b" * 40, "dirty": False}]
    again = provenance.merged(later, {"commit": "b" * 40, "dirty": False, "version": "0.1.0"})
    assert again["resumed_at"] == later["resumed_at"]


def test_a_run_records_its_code(tmp_path):
    from eoq.cli import main

    out = tmp_path / "run"
    assert main(["train", "--data", "embedded", "--train-limit", "64", "--test-limit", "16", "--batch-size", "32",
                 "--epochs", "1", "--preset", "fp32", "--no-progress", "--out", str(out)]) == 0
    code = json.loads((out / "config.json").read_text())["code"]
    assert code == provenance.code_version()
    try:
        head = subprocess.run(["git", "-C", str(provenance._ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    assert code["commit"] == head
