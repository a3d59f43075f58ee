"""sellarec: SeLLa-Rec (arXiv 2504.10107) trained faithfully, searched with Ray Tune + Optuna, tracked in MLflow."""

from sellarec.config import SellaConfig, load_config

__version__ = "0.1.0"
__all__ = ["__version__", "SellaConfig", "load_config"]
