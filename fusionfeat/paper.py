"""The reference paper's published numbers, as data, so reports can print them beside ours.

Only the numbers stated in the paper's Table 1 are recorded; a metric the paper does not give is absent,
never guessed. The paper's protocol is leaky (see ``docs/protocols.md``): compare its numbers with a
``--protocol paper`` run, and read grouped numbers as the honest estimate.
"""

from __future__ import annotations

CITATION = (
    'Khongsep et al., "Feature Fusion ResNet18 and VGG16 for ALL classification" '
    "(C-NMC 2019 data: 7,272 ALL and 3,389 HEM cell images)"
)

PROTOCOL = (
    "minority class (HEM) balanced with rotated/mirrored copies before splitting; "
    "image-level folds (cells of one subject on both sides)"
)

# head name in fusionfeat -> metric -> value, exactly as printed in the paper's Table 1.
TABLE1: dict[str, dict[str, float]] = {
    "resnet18": {"accuracy": 0.8902, "roc_auc": 0.9548},
    "vgg16": {"accuracy": 0.9053, "roc_auc": 0.9582},
    "attention": {
        "accuracy": 0.9216,
        "precision": 0.9459,
        "recall": 0.8944,
        "f1": 0.9194,
        "roc_auc": 0.9697,
    },
}

# what the paper calls each head, for table labels.
PAPER_NAMES: dict[str, str] = {
    "resnet18": "ResNet18",
    "vgg16": "VGG16",
    "attention": "feature fusion (attention)",
}

