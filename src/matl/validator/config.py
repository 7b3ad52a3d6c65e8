"""The validator's configuration (typed, rejects unknown keys)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from matl.errors import ConfigError

__all__ = ["ValidatorConfig", "load_validator_config"]


class ValidatorConfig(BaseModel):
    """What a :class:`~matl.validator.MATLValidator` scores and how it runs rounds.

    Parameters
    ----------
    mode:
        0 = peer comparison (no data needed), 1 = PoGQ oracle on the validator's validation data.
    dataset, dataset_options, data_dir:
        The task. It fixes the model's input shape and supplies the validation set (Mode 1) and the
        test set the validator reports accuracy on. ``None`` runs model-free on raw vectors of
        length ``dim`` (Mode 0 only).
    model, hidden:
        The global model (``logreg``, ``mlp``, ``cnn``; ``hidden`` for the MLP).
    dim:
        Vector length when ``dataset`` is ``None`` (ignored otherwise: the model fixes it).
    seed:
        Seeds the global model's initialisation and the choice of validation rows.
    validation_samples, test_samples:
        Validation rows drawn from the training split; test rows for the reported accuracy.
    round_size:
        A round closes (and every submission in it gets its verdict) as soon as this many
        submissions arrived; ``close_round`` closes it earlier.
    min_round_size:
        ``close_round`` refuses to score fewer submissions than this.
    server_lr:
        The global step: :math:`\\theta \\leftarrow \\theta + \\eta_s\\, \\text{aggregate}`.
    registration, allowlist:
        ``"open"`` registers any key; ``"allowlist"`` only the listed ``did:key`` node ids.
    max_payload_bytes, max_metadata_bytes:
        Size limits for a submission's safetensors payload and its metadata JSON.
    trust:
        Options of the MATL rule (:class:`matl.trust.rule.MATLRule`), e.g.
        ``{"signal_params": {"pogq": {"harm_tolerance": 2.0}}, "cartel_weight": 0.0}``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal[0, 1] = 0
    dataset: str | None = None
    dataset_options: dict[str, Any] = Field(default_factory=dict)
    data_dir: str | None = None
    model: str = "mlp"
    hidden: int = Field(64, ge=1)
    dim: int | None = Field(None, ge=1)
    seed: int = 0
    validation_samples: int = Field(500, ge=1)
    test_samples: int = Field(2000, ge=1)
    round_size: int = Field(10, ge=1)
    min_round_size: int = Field(1, ge=1)
    server_lr: float = Field(1.0, gt=0)
    registration: Literal["open", "allowlist"] = "open"
    allowlist: tuple[str, ...] = ()
    max_payload_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    max_metadata_bytes: int = Field(4096, ge=0)
    trust: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> ValidatorConfig:
        if self.dataset is None and self.dim is None:
            raise ValueError("give a dataset (the model fixes the vector length) or dim")
        if self.dataset is None and self.mode == 1:
            raise ValueError("mode 1 (PoGQ) needs a dataset for its validation data")
        if self.min_round_size > self.round_size:
            raise ValueError(
                f"min_round_size ({self.min_round_size}) > round_size ({self.round_size})"
            )
        if "mode" in self.trust:
            raise ValueError("set the mode with `mode`, not inside `trust`")
        return self


def load_validator_config(raw: dict[str, Any]) -> ValidatorConfig:
    """Validate a config mapping (TOML, ``--set``); :class:`ConfigError` names bad and valid keys."""
    unknown = sorted(set(raw) - set(ValidatorConfig.model_fields))
    if unknown:
        raise ConfigError(
            f"unknown validator key(s) {', '.join(unknown)}; valid: "
            f"{', '.join(sorted(ValidatorConfig.model_fields))}"
        )
    try:
        return ValidatorConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid validator config: {problems}") from None
