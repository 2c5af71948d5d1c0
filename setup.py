"""lbt_tf: Learning-by-Teaching architecture search over the FasterSeg space (Keras 3 / TF)."""
from setuptools import find_packages, setup

setup(
    name="lbt_tf",
    version="0.1.0",
    description=("Learning by Teaching (LBT) architecture search over the FasterSeg "
                 "search space, in Keras 3 / TensorFlow"),
    python_requires=">=3.11,<3.13",
    packages=find_packages(include=["lbt_tf", "lbt_tf.*", "components", "components.*",
                                    "pipelines", "pipelines.*"]),
    include_package_data=True,
    package_data={"lbt_tf": ["data/*.json", "configs/*.flags", "models/fasterseg/*.json"]},
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.12,<4",
        "tensorflow-datasets>=4.9.7,<5",
        "keras-tuner>=1.4.7,<2",
        "absl-py>=2.1,<3",
        "kfp>=2.17,<3",
        "pillow>=10,<13",
        "matplotlib>=3.8,<4",
        "tqdm>=4.66,<5",
        "tensorboard>=2.21,<2.22",
        "numpy>=1.26,<3",
        "scipy>=1.11,<2",
        # The TFLite interpreter (tf.lite.Interpreter is deprecated in favour of LiteRT).
        "ai-edge-litert>=2.3,<3; platform_machine=='x86_64' or platform_machine=='aarch64'",
        "jsonschema>=4.18,<5",              # the architecture JSON schema
    ],
    extras_require={"test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4", "pytest-timeout>=2.3,<3",
                             # the official Cityscapes scorer, checked against our mIoU
                             "cityscapesscripts>=2.2,<3"]},
    entry_points={"console_scripts": ["lbt-tf=lbt_tf.main:run"]},
)
