"""``unlearn bench scaling``: bad input refused up front; a small real run yields a coherent curve."""
from __future__ import annotations

import json

from flows.cli import main


def test_sizes_beyond_the_train_split_exit_2_and_write_nothing(tmp_path, capsys, mnist_dir):
    out = tmp_path / "bench"
    assert main(["bench", "scaling", "--sizes", "1000,60000", "--data", str(mnist_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--sizes: size 60000 is outside" in err and "unlearn data import mnist" in err
    assert not out.exists()


def test_a_method_that_cannot_forget_a_class_is_refused(tmp_path, capsys, mnist_dir):
    out = tmp_path / "bench"
    assert main(["bench", "scaling", "--methods", "lra_npp,cascade_gan", "--data", str(mnist_dir),
                 "--out", str(out)]) == 2
    assert "--methods: 'cascade_gan' is not a class-unlearning method" in capsys.readouterr().err
    assert not out.exists()


def test_small_curve_on_real_digits(tmp_path, mnist_dir, torch_one_thread):
    out = tmp_path / "bench"
    assert main(["bench", "scaling", "--sizes", "1500,500", "--methods", "lra_npp", "--quick",
                 "--data", str(mnist_dir), "--out", str(out)]) == 0
    rows = json.loads((out / "scaling.json").read_text())
    by = {(r["n_train"], r["method"]): r for r in rows}
    assert set(by) == {(n, m) for n in (500, 1500) for m in ("retrain", "original", "lra_npp")}
    for n in (500, 1500):
        retrain, lra, original = by[(n, "retrain")], by[(n, "lra_npp")], by[(n, "original")]
        assert lra["speedup_vs_retrain"] == retrain["time_s"] / lra["time_s"]
        assert (lra["timed_runs"], retrain["timed_runs"]) == (7, 1)  # a sub-second method: median of 7 runs
        assert retrain["forget_train_acc"] < 0.05  # never saw the class
        assert lra["path_size"] >= 80 and retrain["path_size"] is None  # params.yaml's starting path size
        assert lra["forget_train_acc"] < original["forget_train_acc"]  # it forgot, unlike the untouched model
    md = (out / "scaling.md").read_text()
    assert "at 1500, LRA-NPP >= 1,000x faster than retraining" in md
    assert "1500/500 time ratio <= 2" in md
    assert (out / "scaling.png").stat().st_size > 0
    assert json.loads((out / "scaling.meta.json").read_text())["sizes_done"] == [500, 1500]
