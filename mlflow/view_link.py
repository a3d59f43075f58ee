"""Print the MLflow UI's links to the latest sweep and the latest ablation of a store (mlflow/ui.sh runs it).

    .venv/bin/python mlflow/view_link.py sqlite:////abs/path/mlflow.db http://127.0.0.1:5000

Each link opens the experiment's runs view on model training, filtered to that sweep's (or ablation's) runs, best
`valid/auc` first, with the varied params and key metrics as columns: a saved view this writes into the store
(sellarec.experiment.tracking.latest_view_url; mlflow/README.md says why a URL alone cannot carry the columns).
"""

import argparse
import logging
from pathlib import Path

from sellarec.experiment.tracking import client_for, latest_view_url

_KINDS = (("latest sweep", "search-"), ("latest ablation", "ablations"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", help="the tracking store the UI serves (sqlite:///...)")
    parser.add_argument("base_url", help="the UI's address, e.g. http://127.0.0.1:5000")
    args = parser.parse_args()
    if args.store.startswith("sqlite:///") and not Path(args.store[len("sqlite:///"):]).exists():
        print(f"no store yet at {args.store}: run a sweep first (python tune/search.py --smoke-test)")
        return
    logging.getLogger("alembic").setLevel(logging.WARNING)
    client = client_for(args.store)
    for label, prefix in _KINDS:
        link = latest_view_url(client, args.base_url, prefix)
        if link is not None:
            print(f"{label}: {link}")


if __name__ == "__main__":
    main()
