"""Fooling images: small pixel changes that move a face's level (the poster's last figure).

- ``edge_smw.attacks.result``: ``AttackResult`` (torch-free).
- ``edge_smw.attacks.pgd`` (torch): ``pgd_attack``, targeted or untargeted projected gradient
  steps in pixel space (0-255) inside an L-infinity budget, batched, stopping per image as
  soon as its uint8 image reaches the goal.
- ``edge_smw.attacks.blackbox`` (numpy only): ``square_attack`` on a ``probs_fn`` (outputs
  only, no gradients), so int8/fp16 exports can be attacked through ``edge_smw.Runtime``.
- ``edge_smw.attacks.fool`` (torch): ``edge-smw fool`` as a library call (files, figures).
"""
