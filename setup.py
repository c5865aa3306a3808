from setuptools import find_packages, setup

setup(
    name="effkeras",
    version="0.1.0",
    description=(
        "Efficient image classifiers in Keras 3, deployed to edge hardware "
        "(LCE, TFLite Micro, Ethos-U)."
    ),
    python_requires=">=3.10,<3.13",
    # Only the library is installed: apps/ and tools/ run from a checkout (`python -m apps.train`),
    # so that no top-level package named plainly `apps` or `tools` lands in site-packages.
    packages=find_packages(include=["effkeras", "effkeras.*"]),
    install_requires=[
        # One TensorFlow distribution: tf-keras (the larq extra) depends on `tensorflow`, so
        # depending on `tensorflow-cpu` here would install both side by side.
        "tensorflow==2.21.*",
        "tensorboard>=2.20",
        "keras>=3.15,<3.16",
        "larq-compute-engine==0.16.0",
        "absl-py>=2.1",
        "numpy<2",
        "tflite-micro",
        # LiteRT: runs float/int8 .tflite (tf.lite.Interpreter is deprecated).
        "ai-edge-litert>=2.3,<3",
        "ethos-u-vela==5.2.0",
        # MediaPipe: TFLite Metadata's schema and writers (deploy/app_file.py), and its
        # ImageClassifier, the client that checks app files. Its opencv needs libGL.
        "mediapipe==1.2.3",
        "matplotlib>=3.8",
        "tqdm>=4.66",
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "pytest-xdist>=3.6", "ruff==0.17.6"],
        # Only ever imported in a separate process with TF_USE_LEGACY_KERAS=1 (tests, importer
        # oracle).
        "larq": ["larq==0.14.0", "tf-keras==2.21.*"],
    },
)
