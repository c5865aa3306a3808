"""Random but learnable images (a fixed template per class plus noise), for smoke runs."""

import numpy as np

NUM_EXAMPLES = {"train": 512, "test": 128}


def read(input_shape, num_classes, split, seed=0):
    """Generates a split: each image is half its class's fixed template, half uniform noise.

    Args:
        input_shape: tuple of 3 ints. `(height, width, channels)`.
        num_classes: int. Number of classes (and templates).
        split: str. `"train"` (512 images) or `"test"` (128).
        seed: int. Seed of the templates (shared by the splits) and the draws. Defaults to `0`.

    Returns:
        A tuple `(images, labels)`: uint8 numpy `(N, height, width, channels)` and int32
        numpy `(N,)`.
    """
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 255, (num_classes, *input_shape))
    rng = np.random.default_rng(seed + (1 if split == "train" else 2))
    labels = rng.integers(0, num_classes, NUM_EXAMPLES[split]).astype(np.int32)
    noise = rng.uniform(0, 255, (len(labels), *input_shape))
    images = (0.5 * templates[labels] + 0.5 * noise).astype(np.uint8)
    return images, labels
