"""scripts/bench_gpu.py --quick runs on CPU and reports every JAX and funcgrad variant, with finite figures."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_gpu.py"
JAX_VARIANTS = [
    "jax_einsum",
    "jax_dpa",
    "jax_scan",
    "jax_scan_unroll",
    "fg_serial",
    "fg_repeat",
    "fg_repeat_unroll",
]


def test_bench_gpu_quick_reports_every_variant(tmp_path):
    # PyTorch left out: its CPU bfloat16 step and torch.compile's C++ build are slow on 2 cores.
    command = [sys.executable, str(SCRIPT), "--quick", "--no-torch", "--rounds", "2"]
    # The run is mostly XLA compiling seven train steps; LLVM's cheapest settings compile them in
    # ~30% less CPU time (the figures are slower, and only their being reported is checked here).
    flags = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()}
    proc = subprocess.run(
        [*command, "--out", str(tmp_path)], capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in proc.stdout.splitlines()
        if line.startswith("| ") and not line.startswith(("| variant", "| ---"))
    }
    assert list(rows) == JAX_VARIANTS, proc.stdout
    result = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert result["baseline"] == "jax_dpa" and result["variants"]["jax_dpa"]["ratio"] == 1.0
    assert result["config"]["layers"] == 2 and result["config"]["d"] == 64  # --quick sizes
    for name in JAX_VARIANTS:
        row = result["variants"][name]
        assert "error" not in row, row
        for key in ("median_ms", "ratio", "first_call_s", "tflops", "mfu"):
            assert math.isfinite(row[key]) and row[key] > 0, (name, key, row[key])
        assert len(row["ms"]) == 2  # one figure per round
        assert rows[name][0] == f"{row['median_ms']:.2f}" and rows[name][1] == f"{row['ratio']:.2f}"
    assert result["bf16_matmul_peak_tflops"] > 0
    assert (tmp_path / "bench_gpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
