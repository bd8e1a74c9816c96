"""The evaluation pieces every tokenizer task shares: rFID features of its reconstructions, their
summary, and the preview rows (inputs above reconstructions). A task mixes this in and provides
`config` and `reconstruct(params, images) -> (pixels, aux)`."""

import jax.numpy as jnp
import numpy as np

from titok_var.evaluation import reconstruction_fid


class ReconstructionEval:
    def eval_features(self):
        """fn(params, batch) -> Inception features for rFID, or None without `eval.inception_weights`."""
        return reconstruction_fid.make_reconstruction_features(
            self.config.eval.get("inception_weights"),
            lambda params, images: jnp.clip(self.reconstruct(params, images)[0], 0.0, 1.0),
            self.config.eval.get("inception_convention", "adm"))

    def summarize_features(self, feature_stats):
        return reconstruction_fid.summarize_reconstruction_features(feature_stats)

    def preview_rows(self, preview):
        return [np.asarray(preview["original"]), np.asarray(preview["reconstruction"])]
