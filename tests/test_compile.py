"""--compile runs the same computation as eager, in whole graphs, without recompiling per batch width
(text batches are cut to their own longest example, so widths vary from step to step)."""
import pytest

from aft.config import Config
from aft.experiment import run
from tests.conftest import needs_cpp_compiler


@pytest.mark.slow
@needs_cpp_compiler
def test_compiled_text_run_matches_eager(tmp_path, monkeypatch, demo_features):
    import torch._inductor.config as inductor_config
    from torch._dynamo.utils import counters
    # Inductor draws its own random numbers by default, so dropout masks would differ from eager's.
    monkeypatch.setattr(inductor_config, "fallback_random", True)

    def demo(compile):
        return run(Config(steps=6, eval_steps=3, train_frac=0.02, use_val=True, compile=compile,
                          features_dir=str(demo_features), out_dir=str(tmp_path / "results"),
                          run_name=f"compile_{compile}")).evals

    eager = demo(False)
    counters.clear()
    compiled = demo(True)
    assert 1 <= counters["stats"]["unique_graphs"] <= 3, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert [e["step"] for e in compiled] == [3, 6]
    for a, b in zip(eager, compiled):
        for key in ("loss", "ce", "reg"):
            assert abs(a[key] - b[key]) <= 1e-5 * abs(a[key]), (key, a, b)
        assert a["acc"] == b["acc"]
