"""Heat maps: which pixels drove a level (the poster's evidence that the model looks at eyes).

Torch-free by design at this level, so ``cam`` on an exported model runs on the device:

- ``edge_smw.explain.cam_numpy``: the one CAM definition (head weights x feature map), the
  shared map post-processing, ``HeatMap``, and ``runtime_cam`` (exported model via ``Runtime``).
- ``edge_smw.explain.render``: the per-image PNG (crop | heat map | overlay) and index.html.
- ``edge_smw.explain.inputs``: image paths -> face crops, level names -> indices.
- ``edge_smw.explain.methods`` (torch): ``saliency``, ``gradcam``, ``cam`` on a checkpoint.
- ``edge_smw.explain.check`` (torch): do heat maps land on the eyes and mouth of the
  synthetic faces, where the rule that made the level is known?
"""

METHODS: tuple[str, ...] = ("saliency", "gradcam", "cam")
