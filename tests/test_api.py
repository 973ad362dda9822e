"""The notebook user's API: each trap found by a new user fails here on the code that had it, every
public name has a docstring, and every example in those docstrings runs (doctest)."""
import doctest
import importlib
import inspect
import warnings

import pytest
import torch

import analysis
import eoq
from eoq.nn.prepare import grid_params


def test_sample_mixes_the_classes_in_any_first_batch():
    images, labels = eoq.sample("embedded", split="train", n=64, seed=3)
    assert labels[:10].tolist() == list(range(10))
    assert len(set(labels[:32].tolist())) == 10 and max(labels[:32].bincount()) <= 4
    again, _ = eoq.sample("embedded", split="train", n=64, seed=3)
    assert torch.equal(images, again)                           # the same seed, the same images


def test_qstats_every_without_its_observer_is_refused_and_with_it_writes_statistics(tmp_path):
    cfg = dict(data="embedded", epochs=1, train_limit=256, val=0, test_limit=64, progress=False, qstats_every=2)
    with pytest.raises(eoq.ConfigError, match="QStatsCollector"):
        eoq.train(eoq.TrainConfig(**cfg, out=str(tmp_path / "a")))
    assert not (tmp_path / "a").exists()
    eoq.train(eoq.TrainConfig(**cfg, out=str(tmp_path / "b")), observers=(analysis.QStatsCollector(every=2),))
    assert len(analysis.read_qstats(tmp_path / "b" / "qstats")) > 0


def test_a_spec_takes_the_json_forms_in_python():
    m8 = eoq.load_spec({"base": "eoq", "name": "eoq-m8", "M": 8})
    assert m8.M.bits == 8 and m8.M.rounding == "stochastic" and m8.wd_bits == eoq.get_preset("eoq").wd_bits
    assert eoq.get_preset("eoq").with_changes(name="eoq-m8", M=8) == m8.with_changes(description=m8.description)
    assert eoq.get_preset("eoq").with_changes(weight_policy={"shrink_bits": 3}).weight_policy.shrink_bits == 3
    with pytest.raises(eoq.SpecError, match="did you mean 'M'"):
        eoq.get_preset("eoq").with_changes(m=8)
    run = eoq.train(eoq.TrainConfig(data="embedded", epochs=1, train_limit=128, val=0, test_limit=32,
                                    progress=False, preset={"base": "eoq", "M": 8}))
    assert run.spec.M.bits == 8


def test_codes_are_integers():
    model = eoq.prepare(eoq.build_model("resnet20", "fixup"), "eoq", torch.Generator().manual_seed(0))
    for g in grid_params(model):
        c = g.codes()
        assert c.dtype == torch.int8 and not c.is_floating_point()
        assert torch.equal(c.float() * torch.exp2(g.exponent), g.param.detach())


def test_engine_errors_name_the_python_argument():
    spec = eoq.get_preset("eoq").with_changes(A=16)
    with pytest.raises(eoq.SpecError, match="engine='int' \\(--engine int\\).*engine='sim'"):
        eoq.prepare(eoq.build_model("resnet20", "fixup"), spec, engine="int")


def test_a_printed_cost_result_shows_its_ratios():
    from analysis.cost.report import PartCost
    text = repr(PartCost(100.0, 2.0, 50.0, 5.0, 30.0, 10.0, 4.0, 2.0))
    assert "energy ratio 50.0x compute only" in text and "10.8x with memory traffic" in text
    assert "speed ratio 10.0x serial" in text


def test_train_step_returns_detached_tensors():
    s = eoq.setup("resnet20", "fixup", "eoq", seed=0, lr=0.1)
    x, y = eoq.sample("embedded", n=8)
    loss, logits = eoq.train_step(s.model, s.optimizer, x, y)
    assert not loss.requires_grad and not logits.requires_grad
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        float(loss)


def test_headless_kernel_import_warns_nothing_and_bars_stay_quiet():
    """In a Jupyter kernel without ipywidgets (as nbclient runs one), importing eoq and showing a bar
    raises no TqdmWarning, and a 200-step bar writes a handful of updates, not 200."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import warnings\nwarnings.simplefilter('error')\nimport eoq, analysis\n"
        "from eoq.training.progress import tqdm\nfor _ in tqdm(range(200)): pass")])
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    outputs = nb.cells[0].outputs
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "TqdmWarning" not in text and text.count("\r") + text.count("\n") < 10


def _public(mod):
    for name in mod.__all__:
        obj = getattr(mod, name)
        if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj):
            yield f"{mod.__name__}.{name}", obj


@pytest.mark.parametrize("name,obj", [*_public(eoq), *_public(analysis)], ids=lambda v: v if isinstance(v, str) else "")
def test_every_public_name_has_a_docstring(name, obj):
    doc = obj.__doc__ or ""
    assert doc.strip() and not doc.startswith(f"{obj.__name__}("), f"{name} has no docstring of its own"


def test_public_data_names_are_described_in_the_package_doc():
    for name in [n for n in eoq.__all__ if not callable(getattr(eoq, n)) and not inspect.ismodule(getattr(eoq, n))]:
        assert name in eoq.__doc__, name


def _modules_of_public_names():
    mods = set()
    for mod in (eoq, analysis):
        for _, obj in _public(mod):
            mods.add(obj.__name__ if inspect.ismodule(obj) else obj.__module__)
    return sorted(mods)


@pytest.mark.parametrize("module", _modules_of_public_names())
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def _tour_blocks():
    import re
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## API tour", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.mark.parametrize("number", range(5))
def test_the_readme_api_tour_runs(number, capsys):
    blocks = _tour_blocks()
    assert len(blocks) == 5
    exec(compile(blocks[number], f"README API tour {number + 1}", "exec"), {})
    assert capsys.readouterr().out.strip()
