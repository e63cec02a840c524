"""fusionfeat: ResNet18 + VGG16 feature fusion for acute lymphoblastic leukemia cell images."""

__version__ = "0.1.0"
