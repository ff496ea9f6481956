# The image deploy/rayjob.yaml and deploy/rayservice.yaml run: this package on the Ray image
# of the Ray version the manifests name (rayVersion) and the Python the package is tested
# with. Build from the checkout, push to a registry the cluster pulls from, and name it in
# the manifests' `image:` fields:
#   docker build -t registry.example.com/labeler:0.1.0 .
#   docker push registry.example.com/labeler:0.1.0
FROM rayproject/ray:2.60.0-py311-gpu

# torch and torchvision first, pinned as scripts/setup.sh pins them (the CUDA build PyPI
# serves for Linux); then the package with its pinned dependencies (Ray is the image's).
RUN pip install --no-cache-dir "torch==2.14.1" "torchvision==0.29.1"
COPY --chown=ray:users pyproject.toml README.md /home/ray/labeler/
COPY --chown=ray:users labeler /home/ray/labeler/labeler
RUN pip install --no-cache-dir /home/ray/labeler

# Weights fetched from the hub or s3:// are cached here (LABELER_CACHE); mount a volume to
# keep them across pod restarts.
ENV LABELER_CACHE=/home/ray/.cache/labeler
