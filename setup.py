"""raman-edge: on-board Raman mineral identification for field robots."""
from setuptools import find_packages, setup

setup(
    name="raman-edge",
    version="0.1.0",
    description="Identify minerals from Raman spectra on board a field robot, in real time",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["calibration*", "firmware_bridge*", "edge*", "trainer*"]),
    package_data={
        "edge": ["models/default/*.json", "models/default/*.onnx", "models/default/*.npz", "deploy/*"],
        "firmware_bridge": ["data/*.json", "data/*.npz", "data/*.md"],
    },
    # The device install: what the daemon needs, nothing more (no torch).
    install_requires=[
        "numpy>=1.24",
        "scipy>=1.10",
        "pyserial>=3.5",
        "click>=8.2",
        "onnxruntime>=1.17",
        "cryptography>=41",  # Ed25519 verification of signed model bundles
        "onnx>=1.15",  # graph checks on load, and writing new softmax heads on the device (edge/head.py)
    ],
    extras_require={
        # torch first: 2.13.0 satisfies this range, so a machine that has it installs no CUDA wheels.
        "train": ["torch>=2.2,<2.14", "onnx>=1.15", "rich>=13", "scikit-learn>=1.3", "pybaselines>=1.0"],
        "usb": ["pyusb>=1.2", "seabreeze>=2.0"],
        "tensorrt": ["tensorrt>=8.6"],
        "plot": ["matplotlib>=3.7"],
        "baselines": ["pybaselines>=1.0"],
        "dev": ["pytest>=7", "hypothesis>=6", "pybaselines>=1.0", "scikit-learn>=1.3", "matplotlib>=3.7"],
    },
    entry_points={
        "console_scripts": ["raman-edge=edge.cli:main"],
        # Host-side commands plug into the device CLI so that edge never imports trainer.
        "raman_edge.commands": ["train=trainer.cli:train"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Physics",
    ],
)
