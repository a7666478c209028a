"""Framework detection without importing frameworks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shoal.errors import ArrayFormatError, ConfigError
from shoal.frameworks import FrameworkAdapter, adapter_for
from shoal.frameworks.ndarrays import NDArraysAdapter


class Net:
    pass


def test_unknown_model_type_is_named() -> None:
    with pytest.raises(ConfigError, match=r"test_adapter_for\.Net"):
        adapter_for(Net())


def test_array_dict_gets_the_numpy_adapter(tmp_path: Path) -> None:
    model = {"w": np.zeros(3), "b": np.zeros(1)}
    adapter = adapter_for(model)
    assert isinstance(adapter, NDArraysAdapter)
    assert isinstance(adapter, FrameworkAdapter)
    w = model["w"]
    adapter.set_weights(model, {"w": np.ones(3), "b": np.ones(1)})
    assert w is model["w"] and w.tolist() == [1, 1, 1]
    with pytest.raises(ArrayFormatError, match="'w': shape"):
        adapter.set_weights(model, {"w": np.ones(2), "b": np.ones(1)})
    with pytest.raises(ArrayFormatError, match="missing"):
        adapter.set_weights(model, {"w": np.ones(3)})
    adapter.save(model, tmp_path / "m.safetensors")
    from shoal.arrays import load_arrays

    assert load_arrays(tmp_path / "m.safetensors")["w"].tolist() == [1, 1, 1]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_detection_does_not_import_frameworks() -> None:
    out = _run(
        "import sys, numpy as np\n"
        "from shoal.frameworks import adapter_for, as_numpy_params\n"
        "adapter_for({'w': np.zeros(2)})\n"
        "as_numpy_params({'w': np.zeros(2)})\n"
        "try:\n"
        "    adapter_for(object())\n"
        "except Exception as exc:\n"
        "    assert 'PyTorch modules (shoal[pt])' in str(exc), exc\n"
        "print(*(m in sys.modules for m in ('tensorflow', 'keras', 'torch', 'ml_dtypes')))\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "False", "False"]


def test_keras_module_without_keras_says_what_to_install() -> None:
    out = _run(
        "import sys\n"
        "sys.modules['keras'] = None\n"
        "sys.modules['tensorflow'] = None\n"
        "from shoal.errors import ConfigError\n"
        "try:\n"
        "    import shoal.frameworks.keras\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    assert out.returncode == 0, out.stderr
    assert "install shoal[tf]" in out.stdout


def test_torch_module_without_torch_says_what_to_install() -> None:
    out = _run(
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "from shoal.errors import ConfigError\n"
        "from shoal.frameworks import adapter_for\n"
        "try:\n"
        "    adapter_for(object())\n"
        "except ConfigError:\n"
        "    pass\n"
        "try:\n"
        "    import shoal.frameworks.torch\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    assert out.returncode == 0, out.stderr
    assert "install shoal[pt]" in out.stdout
