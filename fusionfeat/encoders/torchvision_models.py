"""The torchvision encoders: one ``register`` entry each (see ``docs/architecture.md``, "add a backbone")."""

from __future__ import annotations

from torch import nn

from fusionfeat.encoders.registry import BackboneSpec, register
from fusionfeat.encoders.trunks import VGG16Features, ViTTrunk, children_trunk, named_stages, split_after, vit_stages

register(BackboneSpec("resnet18",
                      trunk=children_trunk("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"),
                      stages=named_stages(("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))))
register(BackboneSpec("vgg16", stages=split_after(nn.MaxPool2d), build=VGG16Features))
register(BackboneSpec("densenet121", trunk=children_trunk("features", tail=lambda: nn.ReLU(inplace=True))))
register(BackboneSpec("efficientnet_b0"))
register(BackboneSpec("convnext_tiny"))
register(BackboneSpec("vit_b_16", trunk=ViTTrunk, stages=vit_stages,
                      pooling="class token after the encoder's final LayerNorm"))
register(BackboneSpec("mobilenet_v3_large", weights_name="IMAGENET1K_V2"))
