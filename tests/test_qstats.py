"""Quantization-error statistics against hand-computed values, and collection during training."""
import contextlib
import math

import numpy as np
import pytest
import torch

from analysis.qstats.stats import QStatsCollector, read_qstats, tensor_stats
from eoq.cli import main
from eoq.quant.spec import TensorQuant


@pytest.mark.parametrize("k", [4, 6, 8, 10])
def test_uniform_input_sqnr_is_602_k_db(k):
    """x ~ U(-1, 1): R = 1, step D = 2^(1-k): rounding noise D^2/12 gives 20 k log10 2 = 6.02 k dB; the
    clip at 1 - D sends [1 - D/2, 1] (probability D/2) to the top code with mean square error 7 D^2/12,
    so noise = D^2/12 (1 + 3D) and SQNR = 6.02 k - 10 log10(1 + 3D)."""
    x = torch.rand(400_000, generator=torch.Generator().manual_seed(k), dtype=torch.float64) * 2 - 1
    x[0] = 1.0
    q = TensorQuant(bits=k)
    from eoq.quant.quantizers import sq
    row, hist = tensor_stats("A", q, x, sq(x, k))
    step = 2.0 ** (1 - k)
    assert row["sqnr_db"] == pytest.approx(20 * k * math.log10(2) - 10 * math.log10(1 + 3 * step), abs=0.05)
    assert row["exponent"] == 1 - k and abs(row["bias"]) < 1e-3
    assert hist["values"].sum() == x.numel() and hist["codes"].sum() == x.numel()


def test_saturation_and_zero_fractions_are_counted_exactly():
    """900 values in [-0.9, 0.9] (none saturate: clip at 127/128), 100 at +-1.4 (all saturate, R = 1);
    and 50 tiny values below half an LSB (2^-8) that round to zero."""
    g = torch.Generator().manual_seed(0)
    inner = torch.rand(900, generator=g) * 1.8 - 0.9
    outer = torch.tensor([1.4, -1.4] * 50)
    tiny = torch.full((50,), 2.0 ** -10)
    x = torch.cat([inner, outer, tiny])
    from eoq.quant.quantizers import sq
    row, _ = tensor_stats("E", TensorQuant(bits=8), x, sq(x, 8))
    assert row["saturated"] == pytest.approx(100 / 1050)
    inner_zero = int((inner.abs() < 2 ** -8).sum())
    assert row["zeroed"] == pytest.approx((50 + inner_zero) / 1050)


def test_collector_samples_every_n_steps_and_records_updates():
    c = QStatsCollector(every=3)
    owner = torch.nn.Module()
    owner.eoq_name = "layer"
    q = TensorQuant(bits=8, rounding="stochastic")
    for step in range(7):
        c.step_begin(step)
        delta = torch.tensor([0.0, 0.2, 0.0, 3.0])
        u = torch.tensor([0.0, 0.0, 0.0, 3.0])
        c.after("U", q, delta, u, owner, weight_codes=torch.tensor([10.0, -20.0, 0.0, 127.0]), weight=(-9.0, 8))
    assert sorted({r["step"] for r in c.rows}) == [0, 3, 6]
    u_rows = [r for r in c.rows if r["kind"] == "U"]
    w_rows = [r for r in c.rows if r["kind"] == "W"]
    assert u_rows[0]["zero_updates"] == 0.75
    assert u_rows[0]["update_weight_ratio"] == pytest.approx(3 / math.sqrt(100 + 400 + 127 ** 2))
    assert w_rows[0]["saturated"] == 0.25 and w_rows[0]["zeroed"] == 0.25 and w_rows[0]["exponent"] == -9


def test_training_with_collection(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", "embedded", "--train-limit", "128", "--test-limit", "32", "--batch-size", "32",
                 "--epochs", "1", "--no-progress", "--qstats-every", "2", "--out", str(out)]) == 0
    rows = read_qstats(out / "qstats")
    kinds = {r["kind"] for r in rows}
    assert {"A", "E", "G", "U", "W", "S", "M"} <= kinds
    assert sorted({int(r["step"]) for r in rows}) == [0, 2]
    a = [r for r in rows if r["kind"] == "A"]
    assert all(10 < r["sqnr_db"] < 60 for r in a)
    hist = np.load(out / "qstats" / "qstats_hist.npz")
    assert any(k.endswith("/E/values") for k in hist.files)


def test_an_idle_collector_keeps_the_fused_kernels_on():
    """Between its samples the collector is not listening, so the fused kernels (which hand out no
    intermediate tensors) stay on; on a sampled step it is, and it records rows."""
    from eoq.nn.layers import QConv2d, _fusable
    from eoq.quant.observe import listening, observing
    from eoq.training.loop import train_step
    from eoq.training.setup import setup

    s = setup("resnet20", "fixup", "eoq", seed=0)
    conv = next(m for m in s.model.modules() if isinstance(m, QConv2d) and m.quant.any)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    c = QStatsCollector(every=4, histograms=False)
    with observing(c):
        c.step_begin(1)
        assert not listening() and _fusable(conv, "A")
        train_step(s.model, s.optimizer, x, y)
        assert c.rows == []
        c.step_begin(4)
        assert listening() and not _fusable(conv, "A")
        train_step(s.model, s.optimizer, x, y)
        assert {r["kind"] for r in c.rows} >= {"A", "E", "G", "U"}


@pytest.mark.parametrize("kind,bits,rounding", [("A", 8, "nearest"), ("E", 8, "stochastic"), ("G", 4, "nearest")])
def test_kernel_statistics_equal_the_torch_reference(kind, bits, rounding):
    """The two-pass kernel against the torch passes: every count and histogram bin equal, sums to
    float32 rounding. Values include exact bin edges, zeros and saturating outliers."""
    from eoq import kernels
    from eoq.quant.quantizers import sq
    if kernels.load() is None:
        pytest.skip("compiled kernels unavailable")
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(300_001, generator=g)
    x[:1000] = 0.0
    x[1000:1064] = torch.linspace(-4, 4, 64)          # bin edges of a [-4, 4] range
    x[2000], x[2001] = 4.0, -4.0
    q = TensorQuant(bits=bits, rounding=rounding)
    y = sq(x, bits, rounding, torch.Generator().manual_seed(1))
    row_k, hist_k = tensor_stats(kind, q, x, y)
    with kernels.disabled():
        row_t, hist_t = tensor_stats(kind, q, x, y)
    for key in ("numel", "saturated", "zeroed", "exponent", "bits"):
        assert row_k[key] == row_t[key], key
    for key in ("sqnr_db", "rel_error", "bias"):
        assert row_k[key] == pytest.approx(row_t[key], rel=1e-4, abs=1e-6), key
    assert np.array_equal(hist_k["codes"], hist_t["codes"])
    assert np.array_equal(hist_k["values"], hist_t["values"])
    assert hist_k["values"].sum() == x.numel() and hist_k["codes"].sum() == x.numel()


def test_code_histograms_are_coarsened_past_512_bins():
    from analysis.qstats.stats import coarse_codes
    counts, step = coarse_codes(np.arange(255))            # 8-bit codes: kept as they are
    assert step == 1 and np.array_equal(counts, np.arange(255))
    counts, step = coarse_codes(np.ones(65535, dtype=np.int64))   # 16-bit momentum: groups of 128
    assert step == 128 and len(counts) == 512 and counts.sum() == 65535
    assert counts[0] == 128 and counts[-1] == 65535 - 511 * 128


def test_a_sampled_training_step_keeps_little_memory():
    """A sampled ResNet-20 EOQ step keeps its histograms in fresh, compact arrays: under 1 MB,
    none a view of a torch tensor's memory (16-bit momentum codes once took 17 MB per step, and
    views of torch tensors kept 200 MB per step alive, which filled 23 GB in three epochs)."""
    from eoq.quant.observe import observing
    from eoq.training.loop import train_step
    from eoq.training.setup import setup
    s = setup("resnet20", "fixup", "eoq", seed=0, rounding_seed=0, lr=0.05)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    c = QStatsCollector(every=1)
    with observing(c):
        c.step_begin(0)
        train_step(s.model, s.optimizer, x, y)
    assert {r["kind"] for r in c.rows} >= {"A", "E", "G", "U", "W", "M"}
    assert sum(v.nbytes for v in c.hists.values()) < 1 << 20
    assert not any(isinstance(v.base, torch.Tensor) for v in c.hists.values())


@pytest.mark.parametrize("engine", ["sim", "int"])
def test_collecting_statistics_changes_no_result(engine):
    """A sampled step runs the unfused path (every intermediate tensor handed to the collector);
    it must draw the same random bits and round the same way as the fused kernels, so a run with
    the collector ends with the same codes, exponents, momentum and last updates as one without
    (this is what lets the statistics of a long run be taken from a repeat of it)."""
    from eoq.quant.observe import observing
    from eoq.training.loop import train_step
    from eoq.training.setup import setup

    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(4, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last),
                torch.randint(0, 10, (4,), generator=g)) for _ in range(4)]

    def run(collect: bool):
        s = setup("resnet20", "fixup", "eoq", seed=3, lr=0.05, engine=engine, channels_last=engine == "int")
        c = QStatsCollector(every=2, histograms=False)
        with observing(c) if collect else contextlib.nullcontext():
            for step, (x, y) in enumerate(batches):
                if collect:
                    c.step_begin(step)
                train_step(s.model, s.optimizer, x, y)
        state = {k: v.clone() for k, v in s.model.state_dict().items()}
        for i, st in enumerate(s.optimizer.state.values()):
            state.update({f"opt{i}.{k}": v.clone() for k, v in st.items() if torch.is_tensor(v)})
        return state, c.rows

    plain, _ = run(False)
    seen, rows = run(True)
    assert sorted({r["step"] for r in rows}) == [0, 2]
    assert plain.keys() == seen.keys()
    differ = [k for k in plain if not torch.equal(plain[k], seen[k])]
    assert differ == [], differ


def test_a_resumed_run_keeps_the_statistics_sampled_before_it_stopped(tmp_path):
    """Interrupted (SIGINT) in the middle of epoch 2 of 2 and resumed: the statistics hold every
    sample of both parts, the same rows and histograms as a run that went through at once."""
    import os
    import signal

    from eoq.training.config import TrainConfig
    from eoq.training.loop import Interrupted, train

    class Stop:                            # interrupts the run as step 6 begins (epoch 2, step 3 of 4)
        active = False

        def step_begin(self, step):
            if step == 6:
                os.kill(os.getpid(), signal.SIGINT)

        def after(self, *args, **kwargs):
            pass

    def cfg(out, resume=False):
        return TrainConfig(data="embedded", train_limit=128, test_limit=32, batch_size=32, epochs=2,
                           progress=False, qstats_every=2, out=str(out), resume=resume)

    whole, split = tmp_path / "whole", tmp_path / "split"
    train(cfg(whole), observers=(QStatsCollector(2),))
    with pytest.raises(Interrupted):
        train(cfg(split), observers=(QStatsCollector(2), Stop()))
    assert sorted({r["step"] for r in read_qstats(split / "qstats")}) == [0, 2, 4, 6]   # saved with the checkpoint
    train(cfg(split, resume=True), observers=(QStatsCollector(2),))
    a, b = read_qstats(whole / "qstats"), read_qstats(split / "qstats")
    assert sorted({r["step"] for r in a}) == [0, 2, 4, 6]
    assert [(r["step"], r["layer"], r["kind"]) for r in a] == [(r["step"], r["layer"], r["kind"]) for r in b]
    numeric = [k for k in a[0] if k not in ("layer", "kind", "quantizer")]
    for ra, rb in zip(a, b):               # the kernel's double sums may differ in their last bits
        assert all(ra[k] == pytest.approx(rb[k], rel=1e-9, nan_ok=True) for k in numeric)
    ha, hb = np.load(whole / "qstats" / "qstats_hist.npz"), np.load(split / "qstats" / "qstats_hist.npz")
    assert sorted(ha.files) == sorted(hb.files) and all(np.allclose(ha[k], hb[k]) for k in ha.files)
