"""Run a model that `funcgrad.export.save` wrote, with jax and safetensors only: no funcgrad, no model code.

Run: python examples/run_exported.py FOLDER X.npy [LABELS.npy [LOGITS_OUT.npy]]   (export_digits.py does)
"""

import sys

import jax
import numpy as np
import safetensors.flax

folder, x = sys.argv[1], np.load(sys.argv[2])
exported = jax.export.deserialize(open(f"{folder}/forward.jaxexport", "rb").read())
params = safetensors.flax.load_file(f"{folder}/params.safetensors")
state = safetensors.flax.load_file(f"{folder}/state.safetensors")  # batch norm statistics, if any
logits = exported.call(params, state, x)

print(f"run_exported: {x.shape[0]} inputs on {jax.default_backend()}, funcgrad imported: "
      f"{any(m.startswith('funcgrad') for m in sys.modules)}")  # fmt: skip
if len(sys.argv) > 3:
    labels = np.load(sys.argv[3])
    print(
        f"test accuracy in a fresh process: {float(np.mean(np.argmax(logits, -1) == labels)):.4f}"
    )
if len(sys.argv) > 4:
    np.save(sys.argv[4], np.asarray(logits))
