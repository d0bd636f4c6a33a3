"""anogan-inspect: AnoGAN visual inspection, one import namespace.

The core shared by every role lives here: networks, preprocessing, the latent search (one
implementation, batched and continuously refillable), the bundle format, dataset readers
and detection metrics. The roles are subpackages, each from its own top-level folder of
the repository (pyproject.toml maps them):

- ``anogan_inspect.trainer`` (``trainer/``): ``anogan-train``;
- ``anogan_inspect.server`` (``server/``): ``anogan-serve``;
- ``anogan_inspect.clients`` (``clients/``): ``anogan-client``, the demo, the launcher.

The generated gRPC stubs are ``anogan.v1`` (the contract's own package).
"""
