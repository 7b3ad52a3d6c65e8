"""The IO-free validator core (:class:`MATLValidator`) and its configuration."""

from matl.validator.config import ValidatorConfig
from matl.validator.core import MATLValidator

__all__ = ["MATLValidator", "ValidatorConfig"]
