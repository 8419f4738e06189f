"""Settings: defaults, LSP names, validation with the key named, per-language enable."""

import pytest

from refact_lsp.service.settings import DEFAULT_MODEL, Settings, SettingsError, unknown_keys


def test_defaults():
    s = Settings.from_lsp({})
    assert (s.model, s.device, s.dtype) == (DEFAULT_MODEL, "auto", "auto")
    assert (s.maxNewTokens, s.temperature, s.topP, s.debounceMs) == (50, 0.2, 1.0, 25)
    assert (s.multiline, s.midLine, s.contextTokens) == ("auto", "auto", 4096)
    assert (s.kvReuse, s.completionCache, s.allowPickle) == (True, True, False)
    assert s.languages == {"*": True}
    assert s.prompt_budget == 4046
    assert Settings.from_lsp(None) == s


def test_from_lsp_and_merged():
    s = Settings.from_lsp({"maxNewTokens": 16, "temperature": 0, "multiline": "Never", "device": "CUDA:1"})
    assert (s.maxNewTokens, s.temperature, s.multiline, s.device) == (16, 0.0, "never", "cuda:1")
    t = s.merged({"kvReuse": False, "maxNewTokens": None})  # null: the default
    assert (t.kvReuse, t.maxNewTokens, t.multiline) == (False, 50, "never")
    cli = Settings.from_lsp({"maxNewTokens": 20})
    assert s.merged({"maxNewTokens": None}, cli).maxNewTokens == 20  # the given defaults
    assert s.kvReuse is True  # merged returns a copy
    assert Settings.from_lsp({"refact": {"debounceMs": 5}}).debounceMs == 5
    assert Settings.from_lsp({"maxNewTokens": 32.0}).maxNewTokens == 32


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"maxNewTokens": 0}, "maxNewTokens"),
        ({"maxNewTokens": "50"}, "maxNewTokens"),
        ({"maxNewTokens": True}, "maxNewTokens"),
        ({"temperature": -1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": 10**400}, "temperature"),  # too large for a float: named, not an OverflowError
        ({"topP": -(10**400)}, "topP"),
        ({"topP": 0}, "topP"),
        ({"topP": 1.5}, "topP"),
        ({"debounceMs": -5}, "debounceMs"),
        ({"multiline": "sometimes"}, "multiline"),
        ({"midLine": 1}, "midLine"),
        ({"kvReuse": "yes"}, "kvReuse"),
        ({"completionCache": 1}, "completionCache"),
        ({"device": "tpu"}, "device"),
        ({"dtype": "float8"}, "dtype"),
        ({"model": ""}, "model"),
        ({"languages": ["python"]}, "languages"),
        ({"languages": {"python": "on"}}, "languages.python"),
        ({"contextTokens": 40, "maxNewTokens": 50}, "contextTokens"),
    ],
)
def test_bad_values_name_the_key(data, key):
    with pytest.raises(SettingsError) as info:
        Settings.from_lsp(data)
    assert info.value.key == key
    assert repr(key) in str(info.value)
    assert repr(next(iter(data.values()))) in str(info.value) or key == "languages.python"


def test_bad_merge_leaves_the_settings_unchanged():
    s = Settings.from_lsp({"maxNewTokens": 20})
    with pytest.raises(SettingsError):
        s.merged({"maxNewTokens": 30, "topP": 2})
    assert s.maxNewTokens == 20


def test_a_bad_value_collected_keeps_its_key_and_the_others_apply():
    s = Settings.from_lsp({"maxNewTokens": 20})
    errors: list[SettingsError] = []
    t = s.merged({"maxNewTokens": 30, "topP": 2, "temperature": 0.5, "contextTokens": 25}, errors=errors)
    assert [e.key for e in errors] == ["topP", "contextTokens"]
    assert (t.maxNewTokens, t.contextTokens, t.topP, t.temperature) == (20, 4096, 1.0, 0.5)


def test_not_an_object():
    with pytest.raises(SettingsError, match="object"):
        Settings.from_lsp(["x"])


def test_per_language_enable():
    s = Settings.from_lsp({"languages": {"*": True, "markdown": False}})
    assert s.is_enabled("python") and not s.is_enabled("markdown")
    only = Settings.from_lsp({"languages": {"*": False, "rust": True}})
    assert only.is_enabled("rust") and not only.is_enabled("python")
    assert Settings.from_lsp({"languages": {}}).is_enabled("go")


def test_unknown_keys_and_to_lsp():
    assert unknown_keys({"maxNewTokens": 1, "maxNewTokenz": 2}) == ["maxNewTokenz"]
    lsp = Settings().to_lsp()
    assert lsp["maxNewTokens"] == 50 and lsp["languages"] == {"*": True}
    assert Settings.from_lsp(lsp) == Settings()
    lsp["languages"]["*"] = False  # a copy
    assert Settings().languages == {"*": True}
