"""Model presets: every variant ml-4m registers, selected by its name, plus test sizes.

    --config=configs/model.py:fm_base_12e_12d_swiglu_nobias --config.model.dim=1024
"""

from fourm_jax.model.config import variant_config


def get_config(variant: str = "fm_base_12e_12d_swiglu_nobias"):
    import ml_collections

    config = ml_collections.ConfigDict()
    config.variant = variant
    config.model = variant_config(variant).to_config()
    return config
