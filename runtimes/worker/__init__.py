"""The stand-alone onnxruntime worker and what it needs: the wire format between edgetx and a worker
process, onnxruntime session options, and an ONNX node reader on the protobuf wire format. These files run
with no edgetx installed (an aarch64 Python under QEMU, a vendor's onnxruntime in its own environment) and
import only each other; edgetx imports them as this package."""
