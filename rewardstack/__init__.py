"""rewardstack: reward models for LLM alignment.

Offline from the first import: models and datasets come from local caches only, unless
REWARDSTACK_ALLOW_DOWNLOAD=1 is set before the import."""

import os
import sys
import warnings

if os.environ.get("REWARDSTACK_ALLOW_DOWNLOAD") != "1":
    os.environ["HF_HUB_OFFLINE"] = "1"
    if "huggingface_hub.constants" in sys.modules:  # imported before rewardstack: it has read the variable already
        sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True

# peft calls a transformers property deprecated in 5.x on every adapter save; nothing for users to do.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

from .bayes import Posterior, fit_laplace  # noqa: E402
from .data.load import Columns, PreferencePair, load_preferences  # noqa: E402
from .errors import UserError  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from .export import export_model  # noqa: E402
from .model import ModelConfig, RewardModel  # noqa: E402
from .sources import Ensemble, Hierarchical, RewardScores, Rule, load_source  # noqa: E402
from .sources.hf import HFRewardModel  # noqa: E402

__all__ = [
    "Columns", "Ensemble", "HFRewardModel", "Hierarchical", "ModelConfig", "Posterior", "PreferencePair", "RewardModel", "RewardScores",
    "Rule", "UserError", "evaluate", "export_model", "fit_laplace", "load_preferences", "load_source",
]
__version__ = "0.1.0"
