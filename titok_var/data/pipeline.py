"""Host-side batching: deterministic, resumable from a step number, split across processes.

The training stream is an infinite sequence of positions p = 0, 1, 2, ...; position p is
example `perm_e[p % n]` of epoch e = p // n, where perm_e is drawn from
`default_rng([seed, e])`. Step s uses positions [s * G, (s + 1) * G) and process k of P
takes rows [k * L, (k + 1) * L) of them (L = G // P). Augmentation randomness comes from
`default_rng([seed, 1, p])`. So a step's data depends only on (seed, step), whatever the
number of processes, and resuming needs nothing but the step.

Images are decoded and transformed in a thread pool (PIL releases the GIL) and whole
batches are built ahead by one daemon thread per pipeline. tf.data with tf.numpy_function
was tried first and dropped: a pipeline still alive at interpreter exit (e.g. after an
uncaught exception in the training loop) deadlocked the exit, as TF's threads waited on a
Python that was finalising. The prefetch threads are daemons, and an exit hook stops and joins
the live ones: a daemon thread still inside numpy's C++ when the interpreter finalises is
unwound by pthread_exit and aborts the process ("terminate called without an active exception").
"""

import atexit
import bisect
import concurrent.futures
import dataclasses
import functools
import itertools
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import numpy as np
from absl import logging

from titok_var.data.sources import CorruptImageError, ImageSource
from titok_var.data.transforms import Resize, eval_transform, train_transform_with_flip

_STOP_POLL_SECONDS = 0.1  # how often a blocked producer checks whether its consumer has gone
_EXIT_JOIN_SECONDS = 60.0  # at exit, how long to wait for a producer to finish the batch it is building
_AUGMENTATION_STREAM = 1  # distinguishes default_rng([seed, 1, p]) from default_rng([seed, epoch])

Example = tuple[np.ndarray, int]
T = TypeVar("T")


@dataclasses.dataclass
class PipelineStats:
    """Counters updated by the pipeline's worker threads (batches are built ahead by `prefetch`)."""

    skipped_corrupt: int = 0


class _CorruptCounter:
    """Thread-safe increments of PipelineStats.skipped_corrupt, with a warning per image."""

    def __init__(self, stats: PipelineStats):
        self._stats = stats
        self._lock = threading.Lock()

    def record(self, index: int, error: Exception) -> None:
        with self._lock:
            self._stats.skipped_corrupt += 1
            count = self._stats.skipped_corrupt
        logging.warning("Skipping corrupt image at index %d (%d skipped so far): %s", index, count, error)


def local_batch_size(global_batch_size: int, process_count: int) -> int:
    """Rows per process; the global batch must split evenly."""
    if global_batch_size <= 0:
        raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
    if process_count <= 0:
        raise ValueError(f"process_count must be positive, got {process_count}")
    if global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size {global_batch_size} is not divisible by process_count {process_count}"
        )
    return global_batch_size // process_count


def host_positions(step: int, global_batch_size: int, process_index: int, process_count: int) -> np.ndarray:
    """Stream positions of this process's rows of the global batch for `step`."""
    local = local_batch_size(global_batch_size, process_count)
    start = step * global_batch_size + process_index * local
    return np.arange(start, start + local, dtype=np.int64)


@functools.lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """Example order of one epoch (cached: consecutive steps reuse it; read-only since shared)."""
    permutation = np.random.default_rng([seed, epoch]).permutation(num_examples)
    permutation.flags.writeable = False
    return permutation


def positions_to_indices(positions: np.ndarray, num_examples: int, seed: int) -> np.ndarray:
    """Maps stream positions to example indices through the per-epoch permutations."""
    epochs, offsets = np.divmod(positions, num_examples)
    indices = np.empty_like(positions)
    for epoch in np.unique(epochs):
        in_epoch = epochs == epoch
        indices[in_epoch] = epoch_permutation(seed, int(epoch), num_examples)[offsets[in_epoch]]
    return indices


def example_rng(seed: int, position: int) -> np.random.Generator:
    """Augmentation randomness of the example at a stream position."""
    return np.random.default_rng([seed, _AUGMENTATION_STREAM, position])


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
    """Global batches needed to cover `num_examples` once (the last one padded)."""
    if num_examples < 0:
        raise ValueError(f"num_examples must be non-negative, got {num_examples}")
    if global_batch_size <= 0:
        raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
    return -(-num_examples // global_batch_size)


def fill_corrupt_slots(examples: list[T | None]) -> list[T]:
    """Replaces each missing example with the next valid one of the same batch (cyclically)."""
    valid = [slot for slot, example in enumerate(examples) if example is not None]
    if not valid:
        raise ValueError("no valid example to fill from")
    filled = []
    for slot, example in enumerate(examples):
        if example is None:
            donor = valid[bisect.bisect_right(valid, slot) % len(valid)]
            example = examples[donor]
        filled.append(example)
    return filled


def _load_checked(source: ImageSource, index: int, counter: _CorruptCounter) -> Example | None:
    """source.load, or None (counted and logged) for a corrupt image."""
    try:
        return source.load(index)
    except CorruptImageError as error:
        counter.record(index, error)
        return None


def _train_example(
    source: ImageSource,
    index: int,
    position: int,
    *,
    image_size: int,
    seed: int,
    random_crop: bool,
    random_flip: bool,
    resize: Resize,
    counter: _CorruptCounter,
) -> Example | None:
    loaded = _load_checked(source, index, counter)
    if loaded is None:
        return None
    image, label = loaded
    rng = example_rng(seed, position)
    pixels, flipped = train_transform_with_flip(image, image_size, rng, random_crop=random_crop,
                                                random_flip=random_flip, resize=resize)
    return pixels, label, index, flipped


def _eval_example(source: ImageSource, index: int, *, image_size: int, resize: Resize,
                  counter: _CorruptCounter) -> Example | None:
    loaded = _load_checked(source, index, counter)
    if loaded is None:
        return None
    image, label = loaded
    return eval_transform(image, image_size, resize), label


@functools.lru_cache(maxsize=None)
def _thread_pool(num_workers: int) -> concurrent.futures.ThreadPoolExecutor:
    """Process-wide pool per size: a dropped pipeline's producer may still be finishing a batch."""
    return concurrent.futures.ThreadPoolExecutor(num_workers, thread_name_prefix=f"titok_var_data{num_workers}")


def _build_train_batch(
    step: int,
    *,
    source: ImageSource,
    image_size: int,
    global_batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
    random_crop: bool,
    random_flip: bool,
    resize: Resize,
    with_provenance: bool,
    executor: concurrent.futures.Executor,
    counter: _CorruptCounter,
) -> dict[str, np.ndarray]:
    positions = host_positions(step, global_batch_size, process_index, process_count)
    indices = positions_to_indices(positions, len(source), seed)
    make_example = functools.partial(
        _train_example,
        source,
        image_size=image_size,
        seed=seed,
        random_crop=random_crop,
        random_flip=random_flip,
        resize=resize,
        counter=counter,
    )
    examples = list(executor.map(make_example, indices.tolist(), positions.tolist()))
    try:
        examples = fill_corrupt_slots(examples)
    except ValueError:
        raise RuntimeError(
            f"Every image of the host batch for step {step} is corrupt (example indices {indices.tolist()})"
        ) from None
    batch = {
        "image": np.stack([example[0] for example in examples]),
        "label": np.asarray([example[1] for example in examples], dtype=np.int32),
    }
    if with_provenance:
        # A corrupt slot holds its donor's index and flip, so the pair always matches the pixels.
        batch["source_index"] = np.asarray([example[2] for example in examples], dtype=np.int64)
        batch["flipped"] = np.asarray([example[3] for example in examples], dtype=bool)
    return batch


def _build_eval_batch(
    batch_index: int,
    *,
    source: ImageSource,
    num_examples: int,
    image_size: int,
    global_batch_size: int,
    process_index: int,
    process_count: int,
    resize: Resize,
    executor: concurrent.futures.Executor,
    counter: _CorruptCounter,
) -> dict[str, np.ndarray]:
    positions = host_positions(batch_index, global_batch_size, process_index, process_count)
    mask = positions < num_examples
    slots = np.flatnonzero(mask)
    make_example = functools.partial(_eval_example, source, image_size=image_size, resize=resize, counter=counter)
    examples = executor.map(make_example, positions[slots].tolist())
    images = np.zeros((len(positions), image_size, image_size, 3), dtype=np.float32)
    labels = np.zeros(len(positions), dtype=np.int32)
    for slot, example in zip(slots, examples):
        if example is None:
            # A duplicate would bias the metrics, so a corrupt eval image is masked out instead.
            mask[slot] = False
            continue
        images[slot], labels[slot] = example
    return {"image": images, "label": labels, "mask": mask}


def _put_unless_stopped(out: queue.Queue, item: tuple[str, object], stop: threading.Event) -> bool:
    """Blocking put that gives up once the consumer has gone; True if the item was queued."""
    while not stop.is_set():
        try:
            out.put(item, timeout=_STOP_POLL_SECONDS)
            return True
        except queue.Full:
            continue
    return False


def _produce_batches(
    build_batch: Callable[[int], dict[str, np.ndarray]],
    steps: Iterable[int],
    out: queue.Queue,
    stop: threading.Event,
) -> None:
    """Producer thread body: queues ("batch", b) per step, then ("end", None) or ("error", e)."""
    try:
        _queue_batches(build_batch, steps, out, stop)
    finally:
        with _live_producers_lock:
            _live_producers.pop(threading.current_thread(), None)


def _queue_batches(
    build_batch: Callable[[int], dict[str, np.ndarray]],
    steps: Iterable[int],
    out: queue.Queue,
    stop: threading.Event,
) -> None:
    try:
        for step in steps:
            if stop.is_set() or not _put_unless_stopped(out, ("batch", build_batch(step)), stop):
                return
        _put_unless_stopped(out, ("end", None), stop)
    except BaseException as error:  # handed to the consumer, which re-raises it
        _put_unless_stopped(out, ("error", error), stop)


_live_producers: dict[threading.Thread, threading.Event] = {}
_live_producers_lock = threading.Lock()


@atexit.register
def _stop_live_producers() -> None:
    """Stops every prefetch thread before the interpreter finalises (see the module docstring)."""
    with _live_producers_lock:
        producers = list(_live_producers.items())
    for _, stop in producers:
        stop.set()
    for thread, _ in producers:
        thread.join(_EXIT_JOIN_SECONDS)


def _prefetched(
    build_batch: Callable[[int], dict[str, np.ndarray]], steps: Iterable[int], prefetch: int
) -> Iterator[dict[str, np.ndarray]]:
    """Yields build_batch(step) for each step, built up to `prefetch` batches ahead by a daemon thread."""
    out: queue.Queue = queue.Queue(maxsize=max(prefetch, 1))
    stop = threading.Event()
    # Daemon: a pipeline still alive at interpreter exit (e.g. after an uncaught error) must not block exit.
    producer = threading.Thread(
        target=_produce_batches, args=(build_batch, steps, out, stop), name="titok_var_data_prefetch", daemon=True
    )
    with _live_producers_lock:
        _live_producers[producer] = stop
    producer.start()
    try:
        while True:
            kind, payload = out.get()
            if kind == "end":
                return
            if kind == "error":
                raise payload
            yield payload
    finally:
        stop.set()


def _check_common(image_size: int, process_index: int, process_count: int, num_workers: int) -> None:
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is outside [0, process_count={process_count})")
    if num_workers <= 0:
        raise ValueError(f"num_workers must be positive, got {num_workers}")


def train_batches(
    source: ImageSource,
    *,
    image_size: int,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    random_crop: bool = True,
    random_flip: bool = True,
    resize: Resize = Resize(),
    num_workers: int = 8,
    prefetch: int = 2,
    stats: PipelineStats | None = None,
    with_provenance: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless host batches from `start_step` on: {"image": float32 (L, S, S, 3) in [0, 1], "label": int32 (L,)};
    `with_provenance` adds each row's "source_index" (int64) and "flipped" (bool). Each step draws fresh
    crops and flips (from the seed and the example's stream position)."""
    _check_common(image_size, process_index, process_count, num_workers)
    local_batch_size(global_batch_size, process_count)  # validates the split
    if len(source) == 0:
        raise ValueError(f"Cannot draw training batches from an empty source {source!r}")
    if start_step < 0:
        raise ValueError(f"start_step must be non-negative, got {start_step}")
    if prefetch < 0:
        raise ValueError(f"prefetch must be non-negative, got {prefetch}")
    build_batch = functools.partial(
        _build_train_batch,
        source=source,
        image_size=image_size,
        global_batch_size=global_batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        random_crop=random_crop,
        random_flip=random_flip,
        resize=resize,
        with_provenance=with_provenance,
        executor=_thread_pool(num_workers),
        counter=_CorruptCounter(stats if stats is not None else PipelineStats()),
    )
    return _prefetched(build_batch, itertools.count(start_step), prefetch)


def eval_batches(
    source: ImageSource,
    *,
    image_size: int,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    max_examples: int | None = None,
    resize: Resize = Resize(),
    num_workers: int = 8,
    stats: PipelineStats | None = None,
    prefetch: int = 2,
) -> Iterator[dict[str, np.ndarray]]:
    """One in-order pass with centre crops; padded rows have zeros and mask False.

    Every process yields num_eval_batches(n, global_batch_size) batches of
    {"image": float32 (L, S, S, 3), "label": int32 (L,), "mask": bool (L,)}.
    """
    _check_common(image_size, process_index, process_count, num_workers)
    local_batch_size(global_batch_size, process_count)  # validates the split
    if max_examples is not None and max_examples <= 0:
        raise ValueError(f"max_examples must be positive or None, got {max_examples}")
    num_examples = len(source) if max_examples is None else min(len(source), max_examples)
    build_batch = functools.partial(
        _build_eval_batch,
        source=source,
        num_examples=num_examples,
        image_size=image_size,
        global_batch_size=global_batch_size,
        process_index=process_index,
        process_count=process_count,
        resize=resize,
        executor=_thread_pool(num_workers),
        counter=_CorruptCounter(stats if stats is not None else PipelineStats()),
    )
    return _prefetched(build_batch, range(num_eval_batches(num_examples, global_batch_size)), prefetch)
