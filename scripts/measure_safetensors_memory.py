"""Peak memory of `fg.interop.load_safetensors` on a generated file: anonymous memory (heap copies)
and resident memory (which also counts the memory-mapped file's pages), sampled every 2 ms.

Run: python scripts/measure_safetensors_memory.py [MEGABYTES] [TENSORS]   (default 400 MB in 4 tensors)
The file is written by a child process, so that its arrays do not count here.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from funcgrad import interop


def anonymous_mb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon"):
            return int(line.split()[1]) // 1024
    return 0


def write(path: str, megabytes: int, tensors: int) -> None:
    n = megabytes * 2**20 // 4 // tensors
    safetensors.numpy.save_file({f"layer_{i}.w": np.full((n,), i, np.float32) for i in range(tensors)}, path)  # fmt: skip


def main() -> None:
    megabytes = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    tensors = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    path = Path(tempfile.mkdtemp()) / "big.safetensors"
    subprocess.run([sys.executable, __file__, "--write", str(path), str(megabytes), str(tensors)], check=True)  # fmt: skip
    jnp.zeros(1).block_until_ready()  # JAX's own start-up memory is not the loader's
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], anonymous_mb())
            time.sleep(0.002)

    base_anon, base_rss = anonymous_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    jax.block_until_ready(interop.load_safetensors(path))
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    rss = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) // 1024
    size = path.stat().st_size / 2**20
    print(f"file {size:.0f} MiB in {tensors} tensors: peak anonymous +{peak[0] - base_anon} MiB, "
          f"peak resident +{rss} MiB, {seconds:.2f} s")  # fmt: skip
    path.unlink()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"]:
        write(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
