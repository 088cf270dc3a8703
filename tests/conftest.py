"""Suite-wide settings: float64 reproducibility and a hypothesis profile sized for a 2-core CI box."""

import os
import sys

import torch
from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(__file__))  # `import helpers` from any rootdir / import mode

settings.register_profile(
    "unifiedops",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "unifiedops"))

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
