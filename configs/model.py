"""Model presets: every variant ml-4m registers, selected by its name, plus test sizes.

    --config=configs/model.py:fm_base_12e_12d_swiglu_nobias --config.model.dim=1024

`mesh` sizes the device mesh (data, fsdp, tensor; -1 = the remaining devices) and
`sharding_rules` maps the model's logical axis names to mesh axes (fourm_jax/train/sharding.py).
"""

from fourm_jax.model.config import variant_config
from fourm_jax.train.sharding import DEFAULT_RULES


def get_config(variant: str = "fm_base_12e_12d_swiglu_nobias"):
    import ml_collections

    config = ml_collections.ConfigDict()
    config.variant = variant
    config.model = variant_config(variant).to_config()
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    config.sharding_rules = [(name, axes) for name, axes in DEFAULT_RULES]
    return config
