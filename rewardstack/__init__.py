"""rewardstack: reward models for LLM alignment.

Offline from the first import: models and datasets come from local caches only, unless
REWARDSTACK_ALLOW_DOWNLOAD=1 is set before the import."""

import os
import sys
import warnings

__version__ = "0.1.0"

if os.environ.get("REWARDSTACK_ALLOW_DOWNLOAD") != "1":
    os.environ["HF_HUB_OFFLINE"] = "1"
    if "huggingface_hub.constants" in sys.modules:  # imported before rewardstack: it has read the variable already
        sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True

# peft calls a transformers property deprecated in 5.x on every adapter save; nothing for users to do.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

from .backbones import warm_up_vector_math  # noqa: E402
from .bayes import Laplace, Posterior, fit_laplace  # noqa: E402
from .bon import BonConfig, Objective, best_of_n  # noqa: E402
from .config import ComputeConfig, EvalConfig, LaplaceConfig, ModelConfig, ScoreConfig, TrainConfig, load_config  # noqa: E402
from .data.load import Columns, Mixture, PreferencePair, load_preferences  # noqa: E402
from .data.pools import Pool, PromptRow, load_pools, load_prompts  # noqa: E402
from .demo import DemoConfig, run_demo  # noqa: E402
from .errors import UserError  # noqa: E402
from .evaluation import evaluate  # noqa: E402
from .export import export_model  # noqa: E402
from .model import RewardModel  # noqa: E402
from .laser.optimize import OptimizeConfig, optimize  # noqa: E402
from .sampling import SamplingConfig  # noqa: E402
from .server import ServeConfig, create_app, serve  # noqa: E402
from .sources import Ensemble, Hierarchical, RewardScores, Rule, load_source  # noqa: E402
from .sources.hf import HFRewardModel  # noqa: E402
from .sources.select import SelectAspectsConfig, aspect_pairs, select_aspects  # noqa: E402
from .training import train  # noqa: E402

warm_up_vector_math()

__all__ = [
    "BonConfig", "Columns", "ComputeConfig", "DemoConfig", "Ensemble", "EvalConfig", "HFRewardModel", "Hierarchical", "Laplace", "LaplaceConfig",
    "Mixture", "ModelConfig", "Objective", "OptimizeConfig", "Pool", "Posterior", "PreferencePair", "PromptRow", "RewardModel",
    "RewardScores", "Rule", "SamplingConfig", "ScoreConfig", "SelectAspectsConfig", "ServeConfig", "TrainConfig", "UserError",
    "aspect_pairs", "best_of_n", "create_app", "evaluate", "export_model", "fit_laplace", "load_config", "load_pools", "load_preferences",
    "load_prompts", "load_source", "optimize", "run_demo", "select_aspects", "serve", "train",
]
