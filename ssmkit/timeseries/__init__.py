"""Time-series forecasting on the shared backbone: Time-Series-Library data protocol (S-Mamba, SpaceTime, Chimera)."""

from pathlib import Path

ETTH1_PATH = Path(__file__).resolve().parent / "datasets" / "ETTh1.csv"

__all__ = ["ETTH1_PATH"]
