"""Datasets, their shared protocol (split, history, warm/cold) and prompt wording."""

from sellarec.data.dataset import SPLITS, Dataset, data_fingerprint, dataset_stats, load_dataset

__all__ = ["SPLITS", "Dataset", "data_fingerprint", "dataset_stats", "load_dataset"]
