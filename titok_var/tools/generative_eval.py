"""Generator evaluation as the papers report it: gFID, Inception Score and precision/recall of
class-balanced samples against an ADM reference batch (VIRTUAL_imagenet256_labeled.npz).

    metrics = evaluate_samples("runs/x/samples/step_000100000", "fid_inception.npz",
                               "VIRTUAL_imagenet256_labeled.npz", batch_size=256)

Samples are the uint8 `arr_0` (N, H, W, 3) of `samples_pNNN.npz` files (`tools/sample.py`; any
ADM-style sample .npz works too). They stream through the FID Inception-v3 in batches split over
this process's devices; the last batch is zero-padded and the padding masked out.

* gFID: float64 mean/covariance of the 2048-d pool features against the reference `mu`/`sigma`.
* Inception Score: `num_splits` equal parts, mean (and std) of exp(E KL(p(y|x) || p(y))) over
  parts, from the fc logits without bias (ADM/torch-fidelity). When the files hold `labels`,
  the parts follow the class-interleaved order 0..C-1, 0..C-1, ... (how TiTok's sampling script
  lays samples out), so every part sees every class equally; `sample.py` writes classes in
  blocks, and cutting that order into consecutive parts would give parts of C/num_splits classes
  and cap the score. Without labels the parts are consecutive in file order.
* Precision/recall: k-NN manifolds (k=3) between the sample features and the reference batch's
  features: a 2-D `arr_0` of activations (`compute_reference_statistics` writes one) or a 4-D
  `arr_0` of reference images (the ADM file's 10k images), which go through the network first.
  Without `arr_0` the metrics are computed without precision/recall and a message says why.

Multi-process: each process evaluates its own files (for a sample folder, its
`samples_p<process_index>.npz`; a single process takes every `samples_p*.npz` of the folder), and
the partial results are combined exactly before any metric is computed. FID moments (count, mean,
centred scatter, float64) are gathered from every process and merged with the pairwise update;
IS per-part sums (sum p log p, sum p, count) are summed; sample labels (for the IS parts) and
sample features (for precision/recall) are concatenated in process order. Gathering uses
`multihost_utils.process_allgather` on the arrays' raw bytes, because jax without x64 would round
float64 to float32 on the way. Every process ends with the same metrics; process 0 writes them.
A single process needs no distributed initialisation.
"""

import functools
import glob
import json
import os
import time
import zipfile
from collections.abc import Iterable, Iterator, Sequence

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from scipy import special

from titok_var.evaluation import fid, inception, precision_recall
from titok_var.training import inference

ADM_REFERENCE_URL = (
    "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/"
    "VIRTUAL_imagenet256_labeled.npz"
)
SAMPLE_FILE_GLOB = "samples_p*.npz"
METRICS_FILENAME = "generation_metrics.json"
PROGRESS_EVERY_S = 30.0
REFERENCE_CONVENTION_KEY = "inception_convention"  # in reference .npz files written here

# ----------------------------------------------------------------------------------------------
# Input files


def check_eval_files(inception_weights: str, reference_npz: str) -> None:
    """Raises FileNotFoundError naming the missing file and how to obtain it."""
    if not inception_weights or not os.path.exists(inception_weights):
        raise FileNotFoundError(
            f"FID Inception weights not found: {inception_weights!r} (config.eval.inception_weights). "
            "Download pt_inception-2015-12-05-6726825d.pth from "
            "https://github.com/mseitzer/pytorch-fid/releases/tag/fid_weights and convert it once with "
            "`python -m titok_var.tools.convert --arch inception_fid "
            "--input pt_inception-2015-12-05-6726825d.pth --output DIR` (the .pth is read without torch, on "
            "any machine) and set config.eval.inception_weights=DIR/inception_fid.npz."
        )
    if not reference_npz or not os.path.exists(reference_npz):
        raise FileNotFoundError(
            f"reference statistics not found: {reference_npz!r} (config.eval.reference_stats). "
            f"For ImageNet 256 use ADM's reference batch {ADM_REFERENCE_URL} (mu/sigma and 10k "
            "reference images for precision/recall); for other data write one with "
            "titok_var.tools.generative_eval.compute_reference_statistics."
        )


def process_sample_files(sample_dir_or_npz_files: str | Sequence[str]) -> list[str]:
    """The sample .npz files this process evaluates.

    A folder: `samples_p<process_index>.npz` in a multi-process run, every `samples_p*.npz` (in
    name order) in a single process. A file or a list of files: exactly those (in a multi-process
    run each process passes its own).
    """
    if isinstance(sample_dir_or_npz_files, (str, os.PathLike)):
        path = os.fspath(sample_dir_or_npz_files)
        if os.path.isdir(path):
            if jax.process_count() > 1:
                files = [os.path.join(path, f"samples_p{jax.process_index():03d}.npz")]
            else:
                files = sorted(glob.glob(os.path.join(path, SAMPLE_FILE_GLOB)))
                if not files:
                    raise FileNotFoundError(f"no {SAMPLE_FILE_GLOB} files in {path}")
        else:
            files = [path]
    else:
        files = [os.fspath(f) for f in sample_dir_or_npz_files]
    for path in files:
        if not os.path.exists(path):
            raise FileNotFoundError(f"sample file {path} not found")
    return files


def _sample_count(path: str) -> int:
    shape, dtype = fid.npz_array_info(path, "arr_0")
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"{path}: arr_0 must be uint8 images (N, H, W, 3), got {dtype} {shape}")
    return shape[0]


def _read_labels(path: str, count: int) -> np.ndarray | None:
    with np.load(path) as data:
        if "labels" not in data.files:
            return None
        labels = np.asarray(data["labels"]).reshape(-1)
    if labels.shape[0] != count:
        raise ValueError(f"{path}: {labels.shape[0]} labels for {count} images")
    return labels.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Combining partial results across processes


def allgather_exact(array) -> np.ndarray:
    """`array` from every process, stacked on a new leading axis (process order), bit-exact.

    Goes through the raw bytes, so float64/int64 survive jax's default 32-bit mode. Every
    process must pass the same shape and dtype.
    """
    array = np.ascontiguousarray(np.asarray(array))
    if jax.process_count() == 1:
        return array[None]
    raw = array.reshape(-1).view(np.uint8)
    gathered = np.asarray(multihost_utils.process_allgather(raw))
    return gathered.view(array.dtype).reshape((jax.process_count(), *array.shape))


def allgather_rows(array: np.ndarray) -> np.ndarray:
    """Concatenation of every process's rows in process order (row counts may differ)."""
    array = np.asarray(array)
    counts = allgather_exact(np.asarray(array.shape[0], np.int64)).reshape(-1)
    padded = np.zeros((int(counts.max()), *array.shape[1:]), array.dtype)
    padded[: array.shape[0]] = array
    gathered = allgather_exact(padded)
    return np.concatenate([gathered[p, : int(n)] for p, n in enumerate(counts)])


def statistics_moments(stats: fid.ActivationStatistics) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, mean, centred scatter sum (x - mean)(x - mean)^T) of an accumulator, float64;
    zeros for an empty one (a process may hold no samples)."""
    dim = stats.dim
    if stats.count == 0:
        return 0, np.zeros((dim,)), np.zeros((dim, dim))
    scatter = stats.covariance * (stats.count - 1) if stats.count > 1 else np.zeros((dim, dim))
    return stats.count, stats.mean, scatter


def merge_moments(counts, means, scatters) -> tuple[int, np.ndarray, np.ndarray]:
    """Merges per-part (count, mean, scatter) into (count, mean, unbiased covariance), float64.

    Pairwise-exact: scatter = sum_i [scatter_i + n_i (mean_i - mean)(mean_i - mean)^T], so the
    result equals np.mean/np.cov of all rows up to rounding, without the cancellation of raw
    sums of squares.
    """
    counts = np.asarray(counts, np.int64).reshape(-1)
    means = np.asarray(means, np.float64)
    scatters = np.asarray(scatters, np.float64)
    total = int(counts.sum())
    if total < 2:
        raise ValueError(f"need at least 2 samples for a covariance, have {total}")
    mean = (counts[:, None] * means).sum(axis=0) / total
    offsets = means - mean
    scatter = scatters.sum(axis=0) + np.einsum("p,pi,pj->ij", counts.astype(np.float64), offsets, offsets)
    return total, mean, scatter / (total - 1)


# ----------------------------------------------------------------------------------------------
# Inception Score over class-balanced parts


def inception_split_ids(num_samples: int, num_splits: int, labels: np.ndarray | None = None) -> np.ndarray:
    """Part index (0..num_splits-1) of each sample; parts are num_samples // num_splits-sized
    consecutive runs (improved-GAN/torch-fidelity edges) of the class-interleaved order when
    `labels` are given (k-th sample of every class before any (k+1)-th), else of the given order.
    """
    if not 1 <= num_splits <= num_samples:
        raise ValueError(f"num_splits must be in [1, {num_samples}] for {num_samples} samples, got {num_splits}")
    if labels is None:
        position = np.arange(num_samples)
    else:
        labels = np.asarray(labels).reshape(-1)
        if labels.shape[0] != num_samples:
            raise ValueError(f"{labels.shape[0]} labels for {num_samples} samples")
        by_class = np.argsort(labels, kind="stable")
        sorted_labels = labels[by_class]
        group_start = np.searchsorted(sorted_labels, sorted_labels, side="left")
        occurrence = np.empty(num_samples, np.int64)
        occurrence[by_class] = np.arange(num_samples) - group_start
        order = np.lexsort((labels, occurrence))  # occurrence first, then class
        position = np.empty(num_samples, np.int64)
        position[order] = np.arange(num_samples)
    edges = np.asarray([i * num_samples // num_splits for i in range(num_splits + 1)])
    return np.searchsorted(edges, position, side="right") - 1


def inception_split_sums(logits, split_ids, num_splits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Additive per-part sums of a batch: (sum_i sum_y p log p (S,), sum_i p (S, classes),
    counts (S,)), float64 from the logits' softmax."""
    logp = special.log_softmax(np.asarray(logits, np.float64), axis=-1)
    p = np.exp(logp)
    split_ids = np.asarray(split_ids).reshape(-1)
    neg_entropy = np.zeros((num_splits,))
    marginal = np.zeros((num_splits, p.shape[1]))
    np.add.at(neg_entropy, split_ids, np.sum(p * logp, axis=1))
    np.add.at(marginal, split_ids, p)
    return neg_entropy, marginal, np.bincount(split_ids, minlength=num_splits).astype(np.float64)


def inception_scores_from_sums(neg_entropy, marginal, counts) -> np.ndarray:
    """Per-part exp(mean_i KL(p_i || p_part)) = exp(sum p log p / n - sum_y m log m)."""
    counts = np.asarray(counts, np.float64)
    if np.any(counts < 1):
        raise ValueError(f"an Inception Score part is empty (part sizes {counts.astype(int).tolist()})")
    m = np.asarray(marginal, np.float64) / counts[:, None]
    m_log_m = np.where(m > 0, m * np.log(np.where(m > 0, m, 1.0)), 0.0).sum(axis=1)
    return np.exp(np.asarray(neg_entropy) / counts - m_log_m)


# ----------------------------------------------------------------------------------------------
# Inception features on this process's devices


@functools.partial(jax.jit, static_argnames="convention")
def _inception_outputs(params, images, convention: str):
    return inception.InceptionV3(input_convention=convention).apply({"params": params}, images)


def reference_convention(reference_npz: str) -> str | None:
    """The Inception input convention a reference .npz records (files written here), else None
    (ADM's reference batches, whose statistics follow the "adm" convention)."""
    with np.load(reference_npz) as data:
        if REFERENCE_CONVENTION_KEY not in data.files:
            return None
        return str(data[REFERENCE_CONVENTION_KEY])


def check_reference_convention(reference_npz: str, convention: str) -> None:
    """Refuses to compare statistics computed under two different Inception input conventions."""
    recorded = reference_convention(reference_npz)
    if recorded is not None and recorded != convention:
        raise ValueError(
            f"{reference_npz} holds statistics of Inception inputs in the {recorded!r} convention, but "
            f"the samples would be measured in the {convention!r} convention (config.eval.inception_convention); "
            "FID across conventions is meaningless")
    if recorded is None and convention != inception.ADM:
        logging.warning("%s records no Inception input convention (ADM's reference batches use %r); "
                        "measuring samples in the %r convention", reference_npz, inception.ADM, convention)


class LocalInception:
    """The FID Inception over host batches, split along the batch over this process's devices.

    `batch_size` is rounded up to a multiple of the local device count; shorter batches are
    zero-padded to it (one compilation per image shape and dtype) and the padding is dropped.
    """

    def __init__(self, inception_weights: str, batch_size: int, convention: str = inception.ADM):
        from titok_var.tools.convert_inception import load_inception_params

        self.convention = inception.check_input_convention(convention)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        devices = jax.local_devices()
        self.batch_size = -(-batch_size // len(devices)) * len(devices)
        mesh = Mesh(np.asarray(devices), ("data",))
        self._images = NamedSharding(mesh, PartitionSpec("data"))
        self._params = jax.device_put(load_inception_params(inception_weights), NamedSharding(mesh, PartitionSpec()))

    def __call__(self, images) -> tuple[np.ndarray, np.ndarray]:
        """(pool features (n, 2048), logits (n, 1008)), float32, for n <= batch_size images:
        uint8 in [0, 255] or floats in [0, 1], NHWC RGB."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected NHWC RGB image batches, got shape {images.shape}")
        count = images.shape[0]
        if count > self.batch_size:
            raise ValueError(f"batch of {count} images exceeds batch_size {self.batch_size}")
        if images.dtype != np.uint8:
            images = images.astype(np.float32)
        padded = np.zeros((self.batch_size, *images.shape[1:]), images.dtype)
        padded[:count] = images
        pool, logits = _inception_outputs(self._params, jax.device_put(padded, self._images), self.convention)
        return np.asarray(pool)[:count], np.asarray(logits)[:count]


def rebatch(batches: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Regroups image batches of any sizes into batches of exactly `batch_size` (the last may be
    shorter), so the network compiles once."""
    pending, held = [], 0
    for batch in batches:
        batch = np.asarray(batch)
        if batch.ndim != 4:
            raise ValueError(f"expected (N, H, W, C) image batches, got shape {batch.shape}")
        pending.append(batch)
        held += batch.shape[0]
        while held >= batch_size:
            joined = np.concatenate(pending)
            yield joined[:batch_size]
            pending, held = [joined[batch_size:]], held - batch_size
    if held:
        yield np.concatenate(pending)


def _take_rows(batches: Iterable[np.ndarray], start: int, stop: int) -> Iterator[np.ndarray]:
    """Rows [start, stop) of a stream of batches."""
    offset = 0
    for batch in batches:
        lo, hi = max(start - offset, 0), min(stop - offset, batch.shape[0])
        if lo < hi:
            yield batch[lo:hi]
        offset += batch.shape[0]
        if offset >= stop:
            return


class _Progress:
    """Logs images done, throughput and ETA at most every PROGRESS_EVERY_S seconds."""

    def __init__(self, what: str, total: int):
        self.what, self.total, self.done = what, total, 0
        self.start = self.last = time.monotonic()

    def update(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY_S and self.done < self.total:
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        logging.info("%s: %d/%d images (%.1f%%), %.1f img/s, ETA %dm%02ds", self.what, self.done,
                     self.total, 100.0 * self.done / max(self.total, 1), rate, eta // 60, eta % 60)


# ----------------------------------------------------------------------------------------------
# Reference batch


def _reference_activations(reference_npz: str, network: LocalInception, limit: int | None) -> np.ndarray | None:
    """Reference features for precision/recall: 2-D `arr_0` as is, 4-D `arr_0` images through
    the network (rows split over processes, then gathered), None without `arr_0`."""
    with np.load(reference_npz) as data:
        has_arr = "arr_0" in data.files
    if not has_arr:
        logging.warning("%s has no arr_0 (reference activations or images): precision/recall skipped; "
                        "write a reference with compute_reference_statistics or use ADM's %s",
                        reference_npz, os.path.basename(ADM_REFERENCE_URL))
        return None
    shape, _ = fid.npz_array_info(reference_npz, "arr_0")
    count = shape[0] if limit is None else min(limit, shape[0])
    if len(shape) == 2:
        with np.load(reference_npz) as data:
            return np.asarray(data["arr_0"][:count], np.float32)
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(
            f"{reference_npz}: arr_0 of shape {shape} is neither (N, D) activations nor (N, H, W, 3) images")
    rows = np.array_split(np.arange(count), jax.process_count())[jax.process_index()]
    start, stop = (int(rows[0]), int(rows[-1]) + 1) if len(rows) else (0, 0)
    progress = _Progress("reference images", stop - start)
    features = [np.zeros((0, inception.FID_FEATURE_DIM), np.float32)]
    stream = _take_rows(fid.iter_npz_batches(reference_npz, network.batch_size), start, stop)
    for batch in rebatch(stream, network.batch_size):
        pool, _ = network(batch)
        features.append(pool)
        progress.update(batch.shape[0])
    return allgather_rows(np.concatenate(features))


def compute_reference_statistics(
    image_batches: Iterable[np.ndarray],
    inception_weights: str,
    out_npz: str,
    *,
    batch_size: int = 256,
    convention: str = inception.ADM,
) -> dict[str, np.ndarray]:
    """Writes a reference .npz in the ADM layout from any iterator of image batches (uint8 in
    [0, 255] or floats in [0, 1], NHWC): `mu` (2048,), `sigma` (2048, 2048) float64 (unbiased),
    the pool activations `arr_0` (N, 2048) float32 for precision/recall, and the Inception input
    convention under `inception_convention`. Runs on this process's devices only; returns the
    arrays written."""
    network = LocalInception(inception_weights, batch_size, convention)
    stats = fid.ActivationStatistics(inception.FID_FEATURE_DIM)
    features = []
    for batch in rebatch(image_batches, network.batch_size):
        pool, _ = network(batch)
        stats.update(pool)
        features.append(pool)
        if len(features) % 50 == 0:
            logging.info("reference statistics: %d images", stats.count)
    if stats.count < 2:
        raise ValueError(f"need at least 2 reference images, got {stats.count}")
    arrays = {"mu": stats.mean, "sigma": stats.covariance, "arr_0": np.concatenate(features)}
    out_dir = os.path.dirname(os.path.abspath(out_npz))
    os.makedirs(out_dir, exist_ok=True)
    tmp = os.path.join(out_dir, f".{os.path.basename(out_npz)}.tmp")
    fid.save_statistics(tmp, arrays["mu"], arrays["sigma"], arr_0=arrays["arr_0"],
                        **{REFERENCE_CONVENTION_KEY: np.asarray(network.convention)})
    os.replace(tmp, out_npz)
    logging.info("wrote reference statistics of %d images to %s", stats.count, out_npz)
    return arrays


# ----------------------------------------------------------------------------------------------
# Evaluation


def _global_split_ids(local_labels: np.ndarray | None, local_count: int, num_splits: int) -> np.ndarray:
    """This process's samples' IS part indices, from every process's labels in process order."""
    has_labels = allgather_exact(np.asarray(local_labels is not None, np.int32)).reshape(-1)
    counts = allgather_exact(np.asarray(local_count, np.int64)).reshape(-1)
    offset, total = int(counts[: jax.process_index()].sum()), int(counts.sum())
    labels = None
    if has_labels.all():
        labels = allgather_rows(local_labels)
    elif has_labels.any():
        logging.warning("some sample files have no labels: Inception Score parts follow file order")
    return inception_split_ids(total, num_splits, labels)[offset: offset + local_count]


def evaluate_samples(
    sample_dir_or_npz_files: str | Sequence[str],
    inception_weights: str,
    reference_npz: str,
    *,
    batch_size: int,
    num_splits: int = 10,
    pr_k: int = 3,
    pr_reference_limit: int | None = None,
    convention: str = inception.ADM,
) -> dict[str, float]:
    """gFID, Inception Score (mean and std over `num_splits` parts) and, when the reference has
    activations or images under `arr_0`, precision/recall (k = `pr_k`, at most
    `pr_reference_limit` reference rows) of the samples; every process returns the same dict.

    `batch_size` is per process (rounded up to a multiple of the local device count); `convention`
    is the Inception input convention, which must be the reference's (ADM's batches: "adm").
    """
    check_eval_files(inception_weights, reference_npz)
    check_reference_convention(reference_npz, inception.check_input_convention(convention))
    files = process_sample_files(sample_dir_or_npz_files)
    counts = [_sample_count(path) for path in files]
    local_count = sum(counts)
    labels = [_read_labels(path, n) for path, n in zip(files, counts)]
    local_labels = np.concatenate(labels) if labels and all(lab is not None for lab in labels) else None
    if local_labels is None and local_count == 0:
        local_labels = np.zeros((0,), np.int64)  # nothing here to disagree about
    ref_mu, ref_sigma = fid.load_statistics(reference_npz)
    if ref_mu.shape != (inception.FID_FEATURE_DIM,):
        raise ValueError(f"{reference_npz}: mu has shape {ref_mu.shape}, expected ({inception.FID_FEATURE_DIM},)")
    split_ids = _global_split_ids(local_labels, local_count, num_splits)

    network = LocalInception(inception_weights, batch_size, convention)
    reference_features = _reference_activations(reference_npz, network, pr_reference_limit)
    stats = fid.ActivationStatistics(inception.FID_FEATURE_DIM)
    neg_entropy = np.zeros((num_splits,))
    marginal = np.zeros((num_splits, inception.NUM_LOGITS))
    split_counts = np.zeros((num_splits,))
    sample_features = [np.zeros((0, inception.FID_FEATURE_DIM), np.float32)]
    progress = _Progress(f"process {jax.process_index()} samples", local_count)
    done = 0
    batches = (batch for path in files for batch in fid.iter_npz_batches(path, network.batch_size))
    for batch in rebatch(batches, network.batch_size):
        pool, logits = network(batch)
        stats.update(pool)
        sums = inception_split_sums(logits, split_ids[done: done + batch.shape[0]], num_splits)
        neg_entropy, marginal, split_counts = neg_entropy + sums[0], marginal + sums[1], split_counts + sums[2]
        if reference_features is not None:
            sample_features.append(pool)
        done += batch.shape[0]
        progress.update(batch.shape[0])

    count, mean, scatter = statistics_moments(stats)
    total, mu, sigma = merge_moments(
        allgather_exact(np.asarray(count, np.int64)), allgather_exact(mean), allgather_exact(scatter))
    is_sums = [allgather_exact(x).sum(axis=0) for x in (neg_entropy, marginal, split_counts)]
    logging.info("Frechet distance of %d samples (scipy sqrtm of a 2048 x 2048 matrix: up to minutes on a "
                 "busy host)", total)
    scores = inception_scores_from_sums(*is_sums)
    metrics = {
        "gfid": fid.frechet_distance(mu, sigma, ref_mu, ref_sigma),
        "inception_score": float(np.mean(scores)),
        "inception_score_std": float(np.std(scores)),
        "num_samples": float(total),
    }
    if reference_features is not None:
        fake = allgather_rows(np.concatenate(sample_features))
        precision, recall = precision_recall.precision_recall(reference_features, fake, k=pr_k)
        metrics.update(precision=precision, recall=recall, num_reference_pr=float(reference_features.shape[0]))
    logging.info("generation metrics: %s", {k: round(v, 5) for k, v in metrics.items()})
    return metrics


# ----------------------------------------------------------------------------------------------
# Checkpoint entry point


def _latest_step(config, workdir: str) -> int:
    from titok_var.training import trainer

    checkpointer = trainer.open_checkpointer(config, workdir)
    step = checkpointer.latest_step()
    directory = checkpointer.directory
    checkpointer.close()
    if step is None:
        raise FileNotFoundError(f"no checkpoint to evaluate in {directory}")
    return step


def _same_source(sample_dir: str, expected: dict) -> bool:
    path = os.path.join(sample_dir, "source.json")
    if not os.path.exists(path):
        return False
    try:
        with open(path) as f:
            return json.load(f) == json.loads(json.dumps(expected, sort_keys=True))
    except ValueError:
        return False


def _existing_samples(sample_dir: str, config, expected_source: dict | None = None) -> list[str] | None:
    """This process's complete sample files for the config's class-balanced labels, else None
    (decided jointly: any process missing its samples makes every process sample again)."""
    from titok_var.tools import sample

    files = None
    num_classes = config.model.get("num_classes") if "model" in config else None
    if jax.process_count() > 1:
        candidates = [os.path.join(sample_dir, f"samples_p{jax.process_index():03d}.npz")]
    else:
        candidates = sorted(glob.glob(os.path.join(sample_dir, SAMPLE_FILE_GLOB)))
    labels = None
    if expected_source is not None and not _same_source(sample_dir, expected_source):
        candidates = []  # other weights or settings made them: sample again
    if candidates and all(os.path.exists(path) for path in candidates):
        try:
            labels = [_read_labels(path, _sample_count(path)) for path in candidates]
        except (ValueError, OSError, KeyError, zipfile.BadZipFile) as e:  # a truncated or foreign file: sample again
            logging.warning("ignoring existing samples in %s: %s", sample_dir, e)
    if labels is not None and num_classes is None:
        files = candidates
    elif labels is not None and all(lab is not None for lab in labels):
        expected = sample.class_balanced_labels(num_classes, config.sample.num_per_class)
        mine = np.array_split(expected, jax.process_count())[jax.process_index()]
        if np.array_equal(np.concatenate(labels), mine):
            files = candidates
    complete = allgather_exact(np.asarray(files is not None, np.int32))
    return files if complete.all() else None


def generative_eval_checkpoint(config, workdir: str, step: int | None = None, *, export_dir: str | None = None,
                               compute_dtype: str | None = None) -> dict[str, float]:
    """Samples a generator checkpoint, or `export_dir` (`config.sample.num_per_class` per class;
    skipped when this step's samples exist and match) and writes gFID/IS/PR to
    <workdir>/eval/step_XXXXXXXXX/generation_metrics.json (process 0, atomically).

    Reads config.eval.inception_weights, config.eval.reference_stats, config.eval.global_batch_size
    (split over processes) and optionally config.eval.inception_score_splits (default 10)."""
    inception_weights = config.eval.inception_weights
    reference_npz = config.eval.get("reference_stats", "")
    convention = config.eval.get("inception_convention", inception.ADM)
    check_eval_files(inception_weights, reference_npz)  # before minutes of sampling
    check_reference_convention(reference_npz, inception.check_input_convention(convention))
    if export_dir:
        step = int(inference.read_export_json(export_dir, inference.EXPORT_META_FILE).get("step", 0))
    elif step is None:
        step = _latest_step(config, workdir)
    sample_dir = os.path.join(workdir, "samples", f"step_{step:09d}")
    from titok_var.tools import sample as sample_lib

    expected = sample_lib.sample_record(config, inference.describe_source(workdir, step, export_dir), compute_dtype)
    files = _existing_samples(sample_dir, config, expected)
    if files is None:
        from titok_var.tools import sample

        sample_dir = sample.sample_checkpoint(config, workdir, None if export_dir else step,
                                              export_dir=export_dir, compute_dtype=compute_dtype)
        files = [os.path.join(sample_dir, f"samples_p{jax.process_index():03d}.npz")]
    else:
        logging.info("evaluating the existing samples in %s", sample_dir)
    batch_size = max(1, config.eval.global_batch_size // jax.process_count())
    metrics = evaluate_samples(files, inception_weights, reference_npz, batch_size=batch_size,
                               num_splits=config.eval.get("inception_score_splits", 10), convention=convention)
    if jax.process_index() == 0:
        out_dir = os.path.join(workdir, "eval", f"step_{step:09d}")
        os.makedirs(out_dir, exist_ok=True)
        tmp = os.path.join(out_dir, METRICS_FILENAME + ".tmp")
        with open(tmp, "w") as f:
            json.dump({"step": step, "reference_stats": reference_npz, "export_dir": export_dir or "",
                       "inception_convention": convention, **metrics},
                      f, indent=2, sort_keys=True)
        os.replace(tmp, os.path.join(out_dir, METRICS_FILENAME))
    return metrics
