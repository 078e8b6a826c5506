"""Add ``LAYERIF`` to PEFT's closed ``PeftType`` enum and register the tuner with PEFT.

PEFT 0.21's ``register_peft_method`` only accepts names that are members of ``PeftType``, a ``str`` enum with no
extension API, and a plain string in place of a member breaks ``.value`` calls inside peft and transformers.
So a real member is created here (a ``str`` instance of ``PeftType`` with ``_name_`` / ``_value_``) and inserted
into the enum's member tables, exactly as the enum machinery would have; then the public registration runs.
Idempotent. If PEFT's internals change, a clear error says which version this was written for.
"""

from __future__ import annotations

PEFT_TYPE_NAME = "LAYERIF"
PREFIX = "layerif_"


def ensure_peft_type():
    """Return ``PeftType.LAYERIF``, creating the enum member on first call."""
    from peft.utils.peft_types import PeftType

    existing = PeftType.__members__.get(PEFT_TYPE_NAME)
    if existing is not None:
        return existing
    try:
        member = str.__new__(PeftType, PEFT_TYPE_NAME)
        member._name_ = PEFT_TYPE_NAME
        member._value_ = PEFT_TYPE_NAME
        member.__objclass__ = PeftType
        member.__init__(PEFT_TYPE_NAME)
        # attribute first: EnumType.__setattr__ refuses to reassign names already in _member_map_
        type.__setattr__(PeftType, PEFT_TYPE_NAME, member)
        PeftType._member_map_[PEFT_TYPE_NAME] = member
        PeftType._value2member_map_[PEFT_TYPE_NAME] = member
        PeftType._member_names_.append(PEFT_TYPE_NAME)
    except (AttributeError, TypeError) as err:  # pragma: no cover - depends on peft / Python internals
        raise RuntimeError(
            "hf-layerif could not add LAYERIF to peft.utils.peft_types.PeftType (written for peft 0.21 on Python "
            f"3.10-3.13): {err}. Install a supported peft version (pip install 'peft>=0.21,<0.22')."
        ) from err
    if PeftType(PEFT_TYPE_NAME) is not member or PEFT_TYPE_NAME not in [m.value for m in PeftType]:
        raise RuntimeError("PeftType.LAYERIF was not registered correctly; peft's enum internals changed.")
    return member


def register() -> None:
    """Register ``LayerIFConfig`` / ``LayerIFModel`` with PEFT (idempotent)."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.utils import register_peft_method

    peft_type = ensure_peft_type()
    if peft_type in PEFT_TYPE_TO_CONFIG_MAPPING:
        return
    from .config import LayerIFConfig
    from .model import LayerIFModel

    register_peft_method(name=PEFT_TYPE_NAME.lower(), config_cls=LayerIFConfig, model_cls=LayerIFModel, prefix=PREFIX)
