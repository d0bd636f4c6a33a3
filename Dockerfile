# anogan-serve for a GPU node (deploy/). Its steps mirror `make install`: the pinned torch
# first (TORCH_SPEC in the Makefile; on Linux x86_64 PyPI's torch==2.13.0 is a CUDA build,
# which is what a GPU node wants), then the project with one role's extra (serve-gpu:
# ONNX Runtime with its CUDA provider), which then installs nothing more for torch.
# The NVIDIA driver comes from the node (NVIDIA container toolkit); torch's wheels carry
# the CUDA libraries. Not built in this repository's CI: its machines have no Docker
# engine (docs/operations.md, "Kubernetes").
FROM python:3.11-slim
WORKDIR /opt/anogan
RUN pip install --no-cache-dir torch==2.13.0
COPY pyproject.toml README.md ./
COPY anogan/ anogan/
COPY anogan_inspect/ anogan_inspect/
COPY server/ server/
COPY trainer/ trainer/
COPY clients/ clients/
RUN pip install --no-cache-dir ".[serve-gpu]"
COPY bundles/default/ bundles/default/
USER 10001
EXPOSE 50051 9100
ENTRYPOINT ["anogan-serve"]
CMD ["--bundle", "/opt/anogan/bundles/default", "--metrics-port", "9100"]
