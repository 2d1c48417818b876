"""The accepted values of the encoding-speed options, in a module that imports nothing.

``skretrieval --help`` lists them without importing torch (``_inference`` needs it).
"""

COMPILE_MODES = ("auto", "off", "onnx", "freeze", "inductor")
ENCODE_PRECISIONS = ("fp32", "bf16")
