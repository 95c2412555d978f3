"""Fusion modules of the If3D two-stream model: photo map + render map → one feature vector.

Every module takes the two DDA-attended MixedFeatureNet maps of one face and returns one vector::

    forward(photo_map [B, C, 7, 7], render_map [B, C, 7, 7]) -> [B, out_features]

(``C = 512`` for MixedFeatureNet at 112×112 input; ``photo_map`` is the photo backbone map multiplied
by the element-wise maximum of the DDA head maps, likewise ``render_map``). ``out_features`` is an
attribute of every module, fixed at construction.

Four strategies follow If3D (Wang et al., "If3D: Enhancing Facial Expression Inference with 3D Face
Representations via Intermediate Fusion"; original implementation ``networks/DDAM_smirkpic_fusion.py``
of github.com/WangXiaoShawn/If3d, read as a source of facts, not copied). In all four, one depthwise
convolution + BatchNorm (If3D's ``Linear`` attribute, a ``Linear_block`` with ``groups=512``, no bias, no
activation) is applied to *each* stream with the *same* weights:

=========  ===============================================================  ============
strategy   fusion                                                           out_features
=========  ===============================================================  ============
linear     depthwise 7×7 → [B,512,1,1] per stream, concatenated (photo first)  1024
attention  depthwise 7×7, then If3D's query/key/value attention on 1×1 maps    512
gate       depthwise 3×3 (pad 1); g = sigmoid(1×1 conv of concat);             25088
           g·photo + (1−g)·render, flattened
spp        depthwise 3×3 (pad 1); adaptive max-pool at 1, 2, 4 per stream,    21504
           concatenated (photo levels first, then render levels)
=========  ===============================================================  ============

:class:`If3DAttentionFusion` reproduces If3D's attention fusion exactly, including its defect: the
maps it attends over are 1×1, so the softmax runs over a single element, is identically 1, and its
query and key convolutions never receive a gradient. :class:`CrossAttentionFusion` is the improved
replacement (the default of ``if3d_attention``): multi-head cross-attention over the 7×7 = 49 spatial
tokens, in which the photo attends to the render.

Each strategy is one file of this package: its module class, registered with
:func:`networks.registry.register_fusion` together with its :class:`~networks.registry.FusionSpec`
(backbone sharing, dropout, If3D source class and checkpoint keys, ``FinalCheckPoints`` name).
:func:`networks.registry.create_fusion` builds a module by strategy name; registering a strategy
also registers the two-stream model ``if3d_<name>``. A new strategy is a new file here (or anywhere
that is imported before the model is built), decorated the same way.
"""

from networks.fusion.attention import CrossAttentionFusion, If3DAttentionFusion, sincos_position_2d
from networks.fusion.common import DepthwiseConvBN, check_maps
from networks.fusion.gate import GateFusion
from networks.fusion.linear import LinearFusion
from networks.fusion.spp import SPPFusion
from networks.registry import FusionSpec, create_fusion, fusion_spec, list_fusions, register_fusion

__all__ = [
    "CrossAttentionFusion",
    "DepthwiseConvBN",
    "FusionSpec",
    "GateFusion",
    "If3DAttentionFusion",
    "LinearFusion",
    "SPPFusion",
    "check_maps",
    "create_fusion",
    "fusion_spec",
    "list_fusions",
    "register_fusion",
    "sincos_position_2d",
]
