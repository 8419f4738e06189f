"""Client settings (section ``refact``), with their LSP names and validation.

Attribute names are the LSP (camelCase) names, so a setting reads the same in the client's
configuration, in ``initializationOptions`` and here. ``null`` for a key means the server's default:
the command line's value, else the built-in one (``CompletionService.configure`` passes them as
``defaults``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MODEL = "smallcloudai/Refact-1_6B-fim"  # the same as engine.loading.DEFAULT_MODEL (no torch here)
DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16", "int8")
CHOICES = ("auto", "always", "never")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


class SettingsError(ValueError):
    """A setting with a bad value; the message names the key and the value."""

    def __init__(self, key: str, value: Any, expected: str):
        super().__init__(f"setting {key!r} = {value!r} is invalid: expected {expected}")
        self.key = key
        self.value = value


@dataclass(frozen=True)
class Settings:
    model: str = DEFAULT_MODEL
    """Hub id or local folder of the checkpoint."""
    device: str = "auto"
    dtype: str = "auto"
    maxNewTokens: int = 50
    temperature: float = 0.2
    """0 means greedy."""
    topP: float = 1.0
    debounceMs: int = 25
    multiline: str = "auto"
    contextTokens: int = 4096
    kvReuse: bool = True
    completionCache: bool = True
    speculative: bool = True
    """After a suggestion, compute the next one as if it were accepted (needs ``kvReuse`` and
    ``completionCache``)."""
    languages: dict[str, bool] = field(default_factory=lambda: {"*": True})
    midLine: str = "auto"
    allowPickle: bool = False

    @classmethod
    def from_lsp(cls, data: Mapping[str, Any] | None) -> Settings:
        """Defaults updated with ``data`` (LSP names; unknown keys are ignored, see ``unknown_keys``)."""
        return cls().merged(data)

    def merged(
        self,
        data: Mapping[str, Any] | None,
        defaults: Settings | None = None,
        errors: list[SettingsError] | None = None,
        keep: Settings | None = None,
    ) -> Settings:
        """A copy with the keys in ``data`` changed (``{"refact": {...}}`` unwrapped), a null one to its
        value in ``defaults`` (the built-in defaults unless given). A bad value raises ``SettingsError``;
        with an ``errors`` list it is appended there instead and its key gets its value in ``keep``
        (default: this copy's; for ``contextTokens`` not above ``maxNewTokens``, both keys), so that one
        typo does not throw away the other settings (the model among them). Data that is no object always
        raises."""
        data = _unwrap(data)
        defaults = defaults or Settings()
        keep = keep or self
        changes = {}
        for key, value in data.items():
            if key in Settings.__dataclass_fields__:
                try:
                    changes[key] = _copy(getattr(defaults, key)) if value is None else _check(key, value)
                except SettingsError as exc:
                    if errors is None:
                        raise
                    errors.append(exc)
                    changes[key] = _copy(getattr(keep, key))
        new = dataclasses.replace(self, **changes)
        if new.contextTokens <= new.maxNewTokens:
            exc = SettingsError(
                "contextTokens", new.contextTokens, f"more than maxNewTokens ({new.maxNewTokens})"
            )
            if errors is None:
                raise exc
            errors.append(exc)
            new = dataclasses.replace(new, contextTokens=keep.contextTokens, maxNewTokens=keep.maxNewTokens)
        return new

    def to_lsp(self) -> dict[str, Any]:
        """All settings with their LSP names (a JSON-ready dict)."""
        return {f.name: _copy(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def is_enabled(self, language_id: str) -> bool:
        """Per-language enable: the language's own entry, else ``"*"``, else enabled."""
        if language_id in self.languages:
            return self.languages[language_id]
        return self.languages.get("*", True)

    @property
    def prompt_budget(self) -> int:
        """Prompt tokens: context tokens minus max new tokens."""
        return self.contextTokens - self.maxNewTokens


def unknown_keys(data: Mapping[str, Any] | None) -> list[str]:
    """Keys in ``data`` that are not settings (worth a log line: a typo in the client's config)."""
    defaults = _defaults()
    return sorted(key for key in _unwrap(data) if key not in defaults)


def _defaults() -> dict[str, Any]:
    return Settings().to_lsp()


def _copy(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else value


def _unwrap(data: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise SettingsError("refact", data, "an object of settings")
    if set(data) == {"refact"} and isinstance(data["refact"], Mapping):
        return data["refact"]
    return data


def _int(key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SettingsError(key, value, f"an integer from {low} to {high}")
    return value


def _float(key: str, value: Any, low: float, high: float, low_open: bool = False) -> float:
    try:  # (an int too large for a float overflows)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:
        ok = False
    if not ok or not (low < value if low_open else low <= value) or value > high:
        bound = f"more than {low}" if low_open else f"from {low}"
        raise SettingsError(key, value, f"a number {bound} to {high}")
    return float(value)


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SettingsError(key, value, "true or false")
    return value


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.strip().lower() not in choices:
        raise SettingsError(key, value, " | ".join(choices))
    return value.strip().lower()


def _check(key: str, value: Any) -> Any:
    """The validated (normalised) value for ``key``."""
    if key == "model":
        if not isinstance(value, str) or not value.strip():
            raise SettingsError(key, value, "a hub id or a local folder")
        return value.strip()
    if key == "device":
        if not isinstance(value, str) or not _DEVICE.fullmatch(value.strip().lower()):
            raise SettingsError(key, value, "auto, cpu, cuda, cuda:N or mps")
        return value.strip().lower()
    if key == "dtype":
        return _choice(key, value, DTYPES)
    if key == "maxNewTokens":
        return _int(key, value, 1, 4096)
    if key == "contextTokens":
        return _int(key, value, 16, 1 << 20)
    if key == "debounceMs":
        return _int(key, value, 0, 10_000)
    if key == "temperature":
        return _float(key, value, 0.0, 10.0)
    if key == "topP":
        return _float(key, value, 0.0, 1.0, low_open=True)
    if key in ("multiline", "midLine"):
        return _choice(key, value, CHOICES)
    if key in ("kvReuse", "completionCache", "speculative", "allowPickle"):
        return _bool(key, value)
    if key == "languages":
        if not isinstance(value, Mapping):
            raise SettingsError(key, value, 'an object such as {"*": true, "markdown": false}')
        for lang, enabled in value.items():
            if not isinstance(lang, str) or not isinstance(enabled, bool):
                raise SettingsError(f"languages.{lang}", enabled, "true or false")
        return dict(value)
    raise AssertionError(f"no check for {key}")
