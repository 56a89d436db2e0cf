"""The numbers others reported (the paper, its code release, third-party runs), from one file.

``cocs/paper_numbers.yaml`` holds each number with its source; chapters show them beside their
own measurements, labelled as reported. Nothing here is measured by this project.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

NUMBERS_FILE = Path(__file__).with_name("paper_numbers.yaml")


@cache
def numbers() -> dict:
    """The whole file as a dict (sections: imagenet, retrained_top1, released_params, recipe,
    ablations, ablation_claims, small_datasets, other_tasks)."""
    import yaml

    return yaml.safe_load(NUMBERS_FILE.read_text())


def table(section: str):
    """One list-valued section as a pandas DataFrame (each row names its source)."""
    import pandas as pd

    data = numbers()
    if section not in data or not isinstance(data[section], list):
        tables = [k for k, v in data.items() if isinstance(v, list)]
        raise KeyError(f"no table {section!r} in {NUMBERS_FILE.name}; the tables are {tables}")
    return pd.DataFrame(data[section])
