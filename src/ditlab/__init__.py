"""ditlab: train, sample and evaluate latent diffusion backbones (DiT, MDT, DDT, DiffuSSM)."""

from .models.registry import create_model, list_models, model_config

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "model_config", "__version__"]
