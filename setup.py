from setuptools import setup

PACKAGES = ["rlir", "rlir.kernels", "rlir.profiling", "rlir.commands", "rlir.envs", "rlir.data", "rlir.models", "rlir.pretrain", "rlir.eval", "rlir.metrics", "rlir.policies", "rlir.grpo", "rlir.integrations"]
# The shipped run configs and Crafter checkpoints travel as package data (rlir.assets finds them).
DATA_PACKAGES = {"rlir.configs": "configs", "rlir.checkpoints": "checkpoints"}

setup(
    name="rlir",
    version="0.1.0",
    description="RLIR: GRPO post-training of video world models with inverse-dynamics rewards, "
    "with Triton-fused GRPO kernels.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=PACKAGES + list(DATA_PACKAGES),
    # kernels/ and profiling/ live at the repository root but install as rlir.kernels / rlir.profiling,
    # so no top-level `kernels` or `profiling` package ever lands in site-packages.
    package_dir={"rlir": "rlir", "rlir.kernels": "kernels", "rlir.profiling": "profiling", **DATA_PACKAGES},
    package_data={"rlir.configs": ["*.yaml", "pretrain/*.yaml"],
                  "rlir.checkpoints": ["crafter/make.sh", "crafter/*/config.json", "crafter/*/metrics.json",
                                       "crafter/*/*.safetensors"]},
    install_requires=[
        "torch>=2.4",
        "triton>=3.0; platform_system == 'Linux'",
        "numpy",
        "diffusers>=0.30",
        "safetensors",
        "nvtx",
        "pyyaml",
        "pydantic>=2.6",
        "tqdm",
        "crafter",
        "imageio",
        "imageio-ffmpeg",
        "matplotlib",
        "tensorboard",
    ],
    extras_require={
        # trl/transformers: tests/integrations/test_trl.py compares rlir.integrations.trl with TRL's own GRPO
        # loss. Capped at the last TRL series it was verified on, so a TRL release cannot break CI unannounced.
        # wandb: tests/grpo/test_wandb_logging.py reads back an offline run of log.wandb.
        "test": ["pytest>=8", "hypothesis", "trl>=1.10,<1.17", "transformers", "wandb>=0.20"],
        "trl": ["trl>=1.10", "transformers"],
        # tests/integrations/test_verl.py against verl 0.9.1: what its policy losses, torch_functional and FSDP engine
        # import. verl itself goes in with --no-deps (.ci/run), together with its pins tensordict 0.10.0 and
        # pyvers 0.1.0: verl's full requirements would replace transformers and packaging.
        # A verl training run installs verl as verl says (pip install verl==0.9.1).
        # Not peft, which verl's FSDP engine imports (its test skips without it): diffusers imports peft whenever it
        # is installed, peft imports transformers' model code, and that imports Hugging Face's `kernels` package,
        # which the repository's own kernels/ shadows wherever the checkout is on sys.path (tests, torchrun workers).
        "verl": ["ray>=2.41", "omegaconf", "codetiming", "cloudpickle", "orjson", "transformers"],
        "wandb": ["wandb>=0.20"],  # log.wandb: true
        "bench": ["liger-kernel", "trl>=1.10"],
        "gpu": ["flash-attn", "xformers"],
        # scripts/mutation.sh (mutation testing, outside CI; docs/mutation.md)
        "dev": ["mutmut==3.8.1"],
    },
    entry_points={"console_scripts": ["rlir=rlir.cli:main"]},
)
