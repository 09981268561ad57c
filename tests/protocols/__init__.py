"""The protocols over the HTTP layer: the native API, the Open Inference Protocol v2, the API's description."""
