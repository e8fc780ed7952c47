"""megatron-omni: a Megatron-Core extension for omni-modal pretraining.

Requirements are ranges that an NGC PyTorch container already satisfies, so installing this
package on a cluster never reinstalls torch. The CPU set-up (scripts/install_cpu.sh) pins torch
first.
"""
from setuptools import find_packages, setup

_DIRS = {"omni_kernels": "kernels", "omni_launch": "launch", "omni_data_prep": "data_prep"}


def _mapped() -> list[str]:
    return [name + sub for name, folder in _DIRS.items()
            for sub in [""] + ["." + p for p in find_packages(folder)]]


setup(
    name="megatron-omni",
    version="0.1.0",
    description="Omni-modal (text, image, video, audio -> text) pretraining on Megatron-Core",
    python_requires=">=3.10",
    # kernels/, launch/ and data_prep/ install under distinct import names so they never shadow
    # other packages (Hugging Face's `kernels` is widely installed).
    packages=find_packages(include=["megatron_omni", "megatron_omni.*"]) + _mapped(),
    package_dir=_DIRS,
    install_requires=[
        "torch>=2.4",
        "megatron-core>=0.16.1",
        "pyyaml>=6",
        "numpy>=1.24",
        "sentencepiece>=0.2",
        "safetensors>=0.4",
        "transformers>=4.51",
        "tensorboard>=2.14",
        "tqdm>=4.60",
        "psutil>=5.9",
        "pyarrow>=14",
    ],
    extras_require={"kernels": ["triton>=3.4"], "test": ["pytest>=8"]},
    entry_points={
        "console_scripts": [
            "omni-pretrain=omni_launch.pretrain_omni:main",
        ]
    },
)
