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
    assert provenance.code_version()["changed"] == ["eoq/a.py"]
    (repo / "untracked.txt").write_text("runs, notes\n")                   # untracked files do not count
    git(repo, "checkout", "-q", "--", "eoq/a.py")
    assert provenance.code_version()["dirty"] is False and "changed" not in provenance.code_version()


def test_the_changed_paths_say_whether_the_code_itself_was_edited(tmp_path, monkeypatch):
    """A run started while a README was being edited is told apart from one started with edited
    code: code_changed is True only for paths under eoq/, csrc/ or pyproject.toml (staged or not)."""
    repo = tmp_path / "repo"
    (repo / "eoq").mkdir(parents=True)
    for f in ("eoq/a.py", "README.md", "pyproject.toml"):
        (repo / f).write_text("1\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "one")
    monkeypatch.setattr(provenance, "_ROOT", repo.resolve())
    assert provenance.code_changed(provenance.code_version()) is False                  # clean
    (repo / "README.md").write_text("2\n")
    now = provenance.code_version()
    assert now["changed"] == ["README.md"] and provenance.code_changed(now) is False
    (repo / "pyproject.toml").write_text("2\n")
    git(repo, "add", "pyproject.toml")                                                   # staged counts too
    now = provenance.code_version()
    assert now["changed"] == ["README.md", "pyproject.toml"] and provenance.code_changed(now) is True
    assert provenance.code_changed({"commit": "a" * 40, "dirty": True}) is None          # an older record
    monkeypatch.setattr(provenance, "MAX_CHANGED", 1)
    cut = provenance.code_version()
    assert cut["changed"] == ["README.md"] and cut["changed_more"] == 1 and provenance.code_changed(cut) is True


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
    edited = provenance.merged(first, {"commit": "a" * 40, "dirty": True, "changed": ["eoq/x.py"]})
    assert edited["resumed_at"] == [{"commit": "a" * 40, "dirty": True, "changed": ["eoq/x.py"]}]


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
