"""VAR model, loss and sampling blocks for the experiment configs (VQVAE and transformer)."""

import ml_collections

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)


def vqvae_model_config(**overrides):
    """The released `vae_ch160v4096z32` (256 px, downsampling 16) unless overridden."""
    config = ml_collections.ConfigDict(
        dict(
            codebook_size=4096,
            code_dim=32,
            ch=160,
            ch_mult=(1, 1, 2, 2, 4),
            num_res_blocks=2,
            patch_nums=PATCH_NUMS_256,
            beta=0.25,
            quant_resi=0.5,
            share_quant_resi=4,
            using_sa=True,
            using_mid_sa=True,
            norm_groups=32,
            unit_range_pixels=True,  # the data pipeline's [0, 1]; the network sees [-1, 1]
            channel_axis=None,
            dtype="float32",
        )
    )
    config.update(overrides)
    return config


def vqvae_loss_config(**overrides):
    """VAR Eq. 5: pixel l2 + quantizer (codebook + 0.25 commitment) [+ perceptual + GAN]."""
    config = ml_collections.ConfigDict(
        dict(reconstruction="l2", reconstruction_weight=1.0, quantizer_weight=1.0)
    )
    config.update(overrides)
    return config
