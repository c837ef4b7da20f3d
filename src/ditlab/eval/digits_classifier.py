"""The demo's quality measure: does a classifier trained on real digits see the class a sample was asked for?"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor

from ..data.digits import digits_to_tensor, load_digits_arrays


@dataclass
class DigitsClassifier:
    """Multinomial logistic regression on the flattened pixels of real digits at the demo's resolution."""

    model: object
    image_size: int
    held_out_accuracy: float  # accuracy on real digits it did not train on (how much to trust it)

    def predict(self, images: Tensor) -> np.ndarray:
        """(N, 1, S, S) images in [-1, 1] -> (N,) predicted classes."""
        if images.shape[1:] != (1, self.image_size, self.image_size):
            raise ValueError(f"images of shape {tuple(images.shape)} do not match (N, 1, {self.image_size}, "
                             f"{self.image_size})")
        return self.model.predict(images.detach().float().clamp(-1, 1).reshape(len(images), -1).cpu().numpy())

    def accuracy(self, images: Tensor, labels: Tensor) -> float:
        """Fraction of images classified as their conditioning label (chance: 0.10)."""
        return float(np.mean(self.predict(images) == labels.cpu().numpy()))


def fit_digits_classifier(image_size: int, seed: int = 0) -> DigitsClassifier:
    """Train on 80% of the digits (upsampled like the training data), measure on the other 20%."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    images, labels = load_digits_arrays()
    x = digits_to_tensor(images, image_size).reshape(len(images), -1).numpy()
    x_train, x_test, y_train, y_test = train_test_split(x, labels, test_size=0.2, random_state=seed,
                                                        stratify=labels)
    clf = LogisticRegression(max_iter=2000)
    clf.fit(x_train, y_train)
    return DigitsClassifier(clf, image_size, float(clf.score(x_test, y_test)))
