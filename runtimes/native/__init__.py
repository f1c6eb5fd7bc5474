"""The native verifier and bench: C on onnxruntime's C API, for devices without Python (runtimes/native/*.c).

Nothing here is imported by the Python runtime; `provision.py` installs the toolchain the C build needs
(`edgetx provision native`), and runtimes/native/Makefile builds `edgetx-native` for x86-64 and ARM64.
"""

ENVIRONMENT = "native"
INSTALLER = "edgetx.runtimes.native.provision"
