"""Model files: safetensors + spec, quantized .ncq, the course's .bin and .pkl, ONNX; `load` reads any of them."""
