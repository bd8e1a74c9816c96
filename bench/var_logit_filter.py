"""VAR's top-k then top-p logit filter over one sampling pass: nucleus cut over the k candidates
versus over the whole vocabulary.

  python bench/var_logit_filter.py                      # VAR-d16: batch 8, top-k 900, top-p 0.96
  python bench/var_logit_filter.py --patch_nums 1,2,3,4,6,9,13,18,24,32 --batch_size 4

For each scale the guided logits of a batch, (batch, pn * pn, V), go through
`top_k_top_p_filter` (which sorts only the top-k candidates for the nucleus cut) and through the
composition of the two single filters it replaced (top-k mask, then a stable sort of the whole
vocabulary for top-p). Prints the median milliseconds per scale and in total, and checks that both
keep the same entries. Logits are random normal with a spread like a trained model's; timing does
not depend on the values.
"""

import os
import statistics
import sys
import time

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from titok_var.generation import logit_filters  # noqa: E402

_PATCH_NUMS = flags.DEFINE_list("patch_nums", ["1", "2", "3", "4", "5", "6", "8", "10", "13", "16"], "Scale schedule.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Images per batch (logits after guidance: one row per image).")
_VOCAB = flags.DEFINE_integer("vocab_size", 4096, "Codebook size.")
_TOP_K = flags.DEFINE_integer("top_k", 900, "top-k.")
_TOP_P = flags.DEFINE_float("top_p", 0.96, "top-p.")
_RUNS = flags.DEFINE_integer("runs", 5, "Timed calls per scale (the median is reported).")


def vocabulary_sort_filter(logits, top_k: int, top_p: float):
    """The previous filter: top-k mask, then top-p with a stable sort of all V entries."""
    logits = jnp.where(logit_filters._top_k_mask(logits, top_k), -jnp.inf, logits)
    return jnp.where(logit_filters._top_p_mask(logits, top_p), -jnp.inf, logits)


def median_ms(fn, logits, runs: int) -> float:
    fn(logits).block_until_ready()  # compile
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(logits).block_until_ready()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv):
    del argv
    top_k, top_p = _TOP_K.value, _TOP_P.value
    candidates = jax.jit(lambda x: logit_filters.top_k_top_p_filter(x, top_k, top_p))
    vocabulary = jax.jit(lambda x: vocabulary_sort_filter(x, top_k, top_p))
    print(f"backend={jax.default_backend()} batch={_BATCH.value} V={_VOCAB.value} top_k={top_k} top_p={top_p}")
    print(f"{'pn':>4} {'tokens':>7} {'vocabulary_sort_ms':>19} {'candidate_sort_ms':>18} {'speedup':>8}")
    totals = [0.0, 0.0]
    key = jax.random.PRNGKey(0)
    for pn in (int(p) for p in _PATCH_NUMS.value):
        key, sub = jax.random.split(key)
        logits = 3.0 * jax.random.normal(sub, (_BATCH.value, pn * pn, _VOCAB.value), jnp.float32)
        np.testing.assert_array_equal(np.isfinite(candidates(logits)), np.isfinite(vocabulary(logits)))
        before, after = median_ms(vocabulary, logits, _RUNS.value), median_ms(candidates, logits, _RUNS.value)
        totals[0] += before
        totals[1] += after
        print(f"{pn:>4} {pn * pn:>7} {before:>19.2f} {after:>18.2f} {before / after:>8.2f}")
    print(f"{'all':>4} {'':>7} {totals[0]:>19.2f} {totals[1]:>18.2f} {totals[0] / totals[1]:>8.2f}")


if __name__ == "__main__":
    app.run(main)
