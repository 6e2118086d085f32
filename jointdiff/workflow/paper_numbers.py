"""The paper's reported numbers (Deja et al. 2023), as transcribed from its tables, for the report's "paper"
columns. Accuracies and precision/recall in %, FID as printed. Keys: method → dataset → value."""

from __future__ import annotations

# Table 1: classification accuracy (%).
TABLE1 = {
    "classifier": {"fashion_mnist": 94.7, "svhn": 96.9, "cifar10": 94.0, "cifar100": 72.3},
    "probe": {"fashion_mnist": 60.6, "svhn": 79.6, "cifar10": 80.9, "cifar100": 45.9},
    "joint": {"fashion_mnist": 95.3, "svhn": 97.4, "cifar10": 96.4, "cifar100": 77.6},
}
TABLE1_OTHERS = {  # rows of other joint models, shown for context only
    "VERA": {"svhn": 96.8, "cifar10": 93.2, "cifar100": 72.2},
    "JEM++": {"svhn": 96.9, "cifar10": 94.1, "cifar100": 74.5},
    "HybViT": {"cifar10": 95.9, "cifar100": 77.4},
}

# Table 2: generation quality, (FID, precision ×100, recall ×100).
TABLE2 = {
    "ddpm": {"fashion_mnist": (7.8, 71.5, 65.3), "cifar10": (7.2, 64.8, 61.2), "cifar100": (29.7, 70.0, 47.8),
             "celeba": (5.6, 66.5, 58.7)},
    "ddpm_guidance": {"fashion_mnist": (7.9, 66.6, 59.5), "cifar10": (8.1, 63.2, 63.3),
                      "cifar100": (22.1, 69.3, 46.9), "celeba": (4.9, 66.0, 57.8)},
    "joint": {"fashion_mnist": (8.7, 71.1, 61.1), "cifar10": (7.9, 69.9, 56.4), "cifar100": (17.4, 63.2, 54.0),
              "celeba": (7.0, 67.5, 51.5)},
    "joint_conditional": {"fashion_mnist": (5.9, 63.1, 63.2), "cifar10": (6.4, 70.7, 54.3),
                          "cifar100": (16.8, 63.5, 54.1), "celeba": (4.8, 66.3, 56.5)},
}

# Table 5: semi-supervised accuracy (%), keyed by labelled percentage.
TABLE5 = {
    "classifier": {"svhn": {100: 95.1, 5: 87.8, 1: 75.15}, "cifar10": {100: 81, 5: 46.4, 1: 31.5},
                   "cifar100": {100: 60.8, 10: 22.2, 5: 16.6, 1: 6.9}},
    "probe": {"svhn": {100: 79.6, 5: 51.7, 1: 66.0}, "cifar10": {100: 80.9, 5: 75.1, 1: 65.3},
              "cifar100": {100: 43.8, 10: 33.9, 5: 28.8, 1: 15.4}},
    "joint": {"svhn": {100: 95.4, 5: 90.2, 1: 76.7}, "cifar10": {100: 89.9, 5: 78.2, 1: 64.7},
              "cifar100": {100: 63.6, 10: 38.6, 5: 21.5, 1: 11.5}},
}

# Table 6: domain adaptation, target test accuracy (%).
TABLE6 = {
    "classifier": {"svhn_mnist": 78.8, "usps_mnist": 54.7, "mnist_usps": 72.2},
    "joint_adapted": {"svhn_mnist": 85.5, "usps_mnist": 90.5, "mnist_usps": 92.7},
    "upper_bound": {"svhn_mnist": 96.1, "usps_mnist": 96.8, "mnist_usps": 99.4},
}

MALARIA_ACCURACY = 98.0  # "about 98%" (paper text)

# Fig. 4: precision rises and recall falls with α; both high for α in [100, 250].
ALPHA_SWEET_SPOT = (100, 250)
