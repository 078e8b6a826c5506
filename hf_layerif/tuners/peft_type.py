"""Add ``LAYERIF`` to PEFT's closed ``PeftType`` enum and register the tuner with PEFT.

PEFT 0.21's ``register_peft_method`` only accepts names that are members of ``PeftType``, a ``str`` enum with no
extension API, and a plain string in place of a member breaks ``.value`` calls inside peft and transformers.
So a real member is created here (a ``str`` instance of ``PeftType`` with ``_name_`` / ``_value_``) and inserted
into the enum's member tables, exactly as the enum machinery would have. The public registration of the config
and model classes runs in ``hf_layerif.tuners`` (its ``__init__``, as PEFT registers its own tuners), so this
module imports nothing of the tuner. Idempotent. If PEFT's internals change, a clear error says which version this was written for.
"""

from __future__ import annotations

PEFT_TYPE_NAME = "LAYERIF"
PREFIX = "layerif_"


def add_str_enum_member(enum_cls, name: str):
    """Add member ``name`` (value ``name``) to the ``str``-mixin enum ``enum_cls`` exactly as the enum machinery
    would have created it; returns the member (the existing one when present)."""
    existing = enum_cls.__members__.get(name)
    if existing is not None:
        return existing
    member = str.__new__(enum_cls, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = enum_cls
    member.__init__(name)
    # the attribute first: EnumType.__setattr__ refuses to reassign names already in _member_map_
    type.__setattr__(enum_cls, name, member)
    enum_cls._member_map_[name] = member
    enum_cls._value2member_map_[name] = member
    enum_cls._member_names_.append(name)
    if enum_cls(name) is not member or name not in [m.value for m in enum_cls]:
        raise RuntimeError(f"{enum_cls.__name__}.{name} was not registered correctly; the enum internals changed.")
    return member


def ensure_peft_type():
    """Return ``PeftType.LAYERIF``, creating the enum member on first call."""
    from peft.utils.peft_types import PeftType

    try:
        return add_str_enum_member(PeftType, PEFT_TYPE_NAME)
    except (AttributeError, TypeError, RuntimeError) as err:  # pragma: no cover - depends on peft / Python internals
        raise RuntimeError(
            "hf-layerif could not add LAYERIF to peft.utils.peft_types.PeftType (written for peft 0.21 on Python "
            f"3.10-3.13): {err}. Install a supported peft version (pip install 'peft>=0.21,<0.22')."
        ) from err
