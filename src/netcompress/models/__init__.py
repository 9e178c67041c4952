"""Model zoo: the course's StudentNet family, plain and group CNNs, and teachers."""

from .registry import create_model, list_models, model_kwargs, register_model

__all__ = ["create_model", "list_models", "model_kwargs", "register_model"]
