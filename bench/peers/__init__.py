"""The peer model servers `make bench-peers` measures inferd against, one app per framework.

Each app serves the same ONNX file with onnxruntime through classifier.py (the manifest's
preprocessing, softmax, top-5), configured as its framework's documentation recommends for CPU
throughput (cited at the top of each app). Each runs in its own venv, .venv-peers/<name>, made by
`make bench-peers-venvs` from requirements/<name>.txt; nothing here is imported by inferd.
"""
