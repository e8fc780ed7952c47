"""model.backend=auto: transformer-engine only when it imports on a CUDA machine; only an
ImportError means "not installed", any other error while importing TE propagates."""
import builtins
import logging
import types

import pytest

from megatron_omni.platform import backend


@pytest.fixture
def te_import(monkeypatch):
    """Set what `import transformer_engine` (and megatron's TE extension) does: None imports a
    stand-in module, an exception instance is raised. The backend caches are cleared around."""
    real_import = builtins.__import__
    outcome = {}

    def fake_import(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "transformer_engine" or name.startswith("megatron.core.extensions"):
            if outcome["error"] is not None:
                raise outcome["error"]
            module = types.ModuleType(name)
            for attribute in fromlist or ():
                setattr(module, attribute, types.ModuleType(attribute))
            return module
        return real_import(name, globals, locals, fromlist, level)

    def set_outcome(error, cuda=True):
        outcome["error"] = error
        monkeypatch.setattr(backend, "has_cuda", lambda: cuda)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    backend.te_import_error.cache_clear()
    backend._auto_backend.cache_clear()
    yield set_outcome
    backend.te_import_error.cache_clear()
    backend._auto_backend.cache_clear()


def test_auto_picks_te_when_it_imports_on_cuda(te_import, caplog):
    te_import(None)
    with caplog.at_level(logging.INFO, logger=backend.__name__):
        assert backend.resolve_backend("auto") == "te"
    assert "model.backend=auto: using the te layers" in caplog.text


def test_auto_falls_back_to_local_when_te_is_not_installed(te_import, caplog):
    te_import(ModuleNotFoundError("No module named 'transformer_engine'"))
    with caplog.at_level(logging.INFO, logger=backend.__name__):
        assert backend.resolve_backend("auto") == "local"
    assert "using the local layers (transformer-engine is not installed" in caplog.text
    assert "No module named 'transformer_engine'" in caplog.text


def test_auto_is_local_without_cuda(te_import, caplog):
    te_import(RuntimeError("never imported"), cuda=False)
    with caplog.at_level(logging.INFO, logger=backend.__name__):
        assert backend.resolve_backend("auto") == "local"
    assert "using the local layers (no CUDA device" in caplog.text


def test_a_broken_te_install_is_not_swallowed(te_import):
    te_import(RuntimeError("TE was built for another CUDA version"))
    with pytest.raises(RuntimeError, match="another CUDA version"):
        backend.resolve_backend("auto")


def test_explicit_te_without_te_names_the_fix(te_import):
    te_import(ImportError("No module named 'transformer_engine'"))
    with pytest.raises(RuntimeError, match="model.backend=local"):
        backend.resolve_backend("te")
    assert backend.resolve_backend("local") == "local"
