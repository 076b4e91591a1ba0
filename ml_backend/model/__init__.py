"""The segmentation model shared by the backend and the simulator.

- ``network``: build a segmentation-models-pytorch network (pretrained when possible) with its ModelSpec,
  choose the device, turn images (any dtype, grayscale to RGBA) into input tensors.
- ``inference``: probabilities, labels, confidence and features for 2-D images and 3-D volumes.
- ``training``: the partial-label trainer (255 = unlabelled), single process or under torchrun.
- ``metrics``: a mergeable confusion matrix with IoU, Dice and pixel accuracy.
- ``checkpoint``: atomic checkpoints that rebuild the network from its spec.

Import from the submodules; this package imports nothing heavy itself.
"""
