"""A local helper module: no distribution owns it, so parsl-poncho ships it by content."""

from __future__ import annotations

from sklearn.datasets import make_classification
from sklearn.model_selection import cross_val_score
from sklearn.svm import SVC


def make_data(seed: int = 0):
    """A small synthetic classification problem, the same on every worker."""
    return make_classification(n_samples=300, n_features=12, n_informative=6, random_state=seed)


def score_svc(X, y, C: float, gamma: float) -> float:
    """Mean 3-fold cross-validated accuracy of an RBF SVM."""
    return float(cross_val_score(SVC(C=C, gamma=gamma), X, y, cv=3).mean())
