"""Published facial-expression networks, one file each, with their training criteria and recipes.

Importing a module registers its model (``networks.create_model``), criterion and recipe preset, and the
checkpoint layouts of its authors (``networks.weights.register_weight_source``).
"""

from networks.zoo import lnsu_net, poster, poster_v2  # noqa: F401
