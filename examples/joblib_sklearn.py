"""scikit-learn on the cluster: joblib's ``n_jobs=-1`` runs on the workers under the client's backend.

Run: python examples/joblib_sklearn.py [SCHEDULER_ADDRESS]
"""

import sys

import joblib
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC

from minidist import Client


def main(client):
    X, y = make_classification(n_samples=150, n_features=10, random_state=0)
    with joblib.parallel_config(backend="minidist"):
        search = GridSearchCV(SVC(), {"C": [0.1, 1], "gamma": [0.01, 0.1]}, cv=3, n_jobs=-1)
        search.fit(X, y)
        forest = RandomForestClassifier(n_estimators=10, n_jobs=-1, random_state=0).fit(X, y)
    print("best parameters:", search.best_params_)
    print("best cross-validated accuracy:", round(search.best_score_, 3))
    print("forest training accuracy:", round(forest.score(X, y), 3))


if __name__ == "__main__":
    address = (
        sys.argv[1] if len(sys.argv) > 1 else None
    )  # a running scheduler, or start a local one
    with Client(address) if address else Client(n_workers=1, threads_per_worker=2) as client:
        main(client)
